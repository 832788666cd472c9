//! How slow a client may be: the clocks behind `command_timeout`, `data_timeout` and `min_data_rate`.
//!
//! A timer that restarts on every byte lets a client that sends one byte every few minutes hold a session worker
//! for ever. So a command line must arrive whole within `command_timeout` of its first byte (and a client may be
//! silent between commands for as long); message content (DATA, and BDAT from the first chunk to the last) may
//! pause at most `data_timeout`, and after the first `data_timeout` it must have come at `min_data_rate` bytes a
//! second on average, as Postfix's smtpd_min_data_rate asks. Time is passed in, so every rule is a unit test.

use std::time::{Duration, Instant};

/// The limits, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// Bytes a second; 0: no minimum.
    pub min_data_rate: u64,
}

/// Which limit a client went past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overdue {
    /// Silent between commands for `command_timeout`, or within message content for `data_timeout`.
    Idle,
    /// A command line still incomplete `command_timeout` after its first byte.
    SlowCommand,
    /// Message content below `min_data_rate` on average, after the first `data_timeout`.
    SlowContent,
}

impl Overdue {
    /// The reason given in the 421 reply and the log.
    pub fn reason(self) -> &'static str {
        match self {
            Overdue::Idle => "timeout exceeded",
            Overdue::SlowCommand => "command line not received in time",
            Overdue::SlowContent => "message content arriving too slowly",
        }
    }
}

/// One session's clocks.
#[derive(Debug)]
pub struct Pace {
    limits: Limits,
    /// When the client last sent a byte (or the session or the phase began).
    last_input: Instant,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// Reading commands; `line_began` is the arrival of the first byte of an incomplete line.
    Commands { line_began: Option<Instant> },
    /// Receiving a message's content since `began`, `bytes` of it so far.
    Content { began: Instant, bytes: u64 },
}

impl Pace {
    pub fn new(limits: Limits, now: Instant) -> Pace {
        Pace {
            limits,
            last_input: now,
            phase: Phase::Commands { line_began: None },
        }
    }

    /// Bytes arrived.
    pub fn received(&mut self, bytes: &[u8], now: Instant) {
        self.last_input = now;
        match &mut self.phase {
            Phase::Commands { line_began } => {
                // Whatever follows the last LF is the start of the next line, and it arrived now.
                *line_began = match memchr::memrchr(b'\n', bytes) {
                    Some(lf) if lf + 1 == bytes.len() => None,
                    Some(_) => Some(now),
                    None => Some(line_began.unwrap_or(now)),
                };
            }
            Phase::Content { bytes: count, .. } => *count += bytes.len() as u64,
        }
    }

    /// Message content begins (DATA's 354, or the first BDAT chunk).
    pub fn content_begins(&mut self, now: Instant) {
        self.last_input = now;
        self.phase = Phase::Content {
            began: now,
            bytes: 0,
        };
    }

    /// The message is over; `partial_line` when input already read holds the start of the next command.
    pub fn content_ends(&mut self, partial_line: bool, now: Instant) {
        self.last_input = now;
        self.phase = Phase::Commands {
            line_began: partial_line.then_some(now),
        };
    }

    /// Whether the client has gone past a limit by `now`.
    pub fn check(&self, now: Instant) -> Result<(), Overdue> {
        match self.phase {
            Phase::Commands {
                line_began: Some(began),
            } => {
                if now.duration_since(began) >= self.limits.command_timeout {
                    return Err(Overdue::SlowCommand);
                }
            }
            Phase::Commands { line_began: None } => {
                if now.duration_since(self.last_input) >= self.limits.command_timeout {
                    return Err(Overdue::Idle);
                }
            }
            Phase::Content { began, bytes } => {
                if now.duration_since(self.last_input) >= self.limits.data_timeout {
                    return Err(Overdue::Idle);
                }
                let elapsed = now.duration_since(began);
                let owed = self.limits.min_data_rate as f64 * elapsed.as_secs_f64();
                if elapsed > self.limits.data_timeout && (bytes as f64) < owed {
                    return Err(Overdue::SlowContent);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
        min_data_rate: 500,
    };

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_command_line_trickled_a_byte_at_a_time_is_cut_off_after_command_timeout() {
        let start = Instant::now();
        let mut pace = Pace::new(LIMITS, start);
        for (n, byte) in b"NOOP".iter().enumerate() {
            let now = at(start, 100 * n as u64);
            pace.received(std::slice::from_ref(byte), now);
            assert_eq!(
                pace.check(now),
                if n < 3 {
                    Ok(())
                } else {
                    Err(Overdue::SlowCommand)
                }
            );
        }
    }

    #[test]
    fn whole_lines_leave_the_client_idle_and_a_pipelined_tail_starts_a_line() {
        let start = Instant::now();
        let mut pace = Pace::new(LIMITS, start);
        pace.received(b"NOOP\r\n", at(start, 200));
        assert_eq!(pace.check(at(start, 499)), Ok(()));
        assert_eq!(pace.check(at(start, 500)), Err(Overdue::Idle));
        pace.received(b"NOOP\r\nRS", at(start, 400));
        pace.received(b"E", at(start, 600));
        assert_eq!(pace.check(at(start, 699)), Ok(()));
        assert_eq!(pace.check(at(start, 700)), Err(Overdue::SlowCommand));
    }

    #[test]
    fn content_may_pause_for_data_timeout() {
        let start = Instant::now();
        let mut pace = Pace::new(LIMITS, start);
        pace.content_begins(start);
        pace.received(&[b'x'; 1_000_000], at(start, 1));
        assert_eq!(pace.check(at(start, 600)), Ok(()));
        assert_eq!(pace.check(at(start, 601)), Err(Overdue::Idle));
    }

    #[test]
    fn content_trickled_below_min_data_rate_is_cut_off_after_the_first_data_timeout() {
        let start = Instant::now();
        let mut pace = Pace::new(LIMITS, start);
        pace.content_begins(start);
        for second in 1..=700 {
            let now = at(start, second);
            pace.received(&[b'x'; 400], now);
            let expected = if second <= 600 {
                Ok(())
            } else {
                Err(Overdue::SlowContent)
            };
            assert_eq!(pace.check(now), expected, "after {second}s");
        }
    }

    #[test]
    fn content_at_min_data_rate_goes_on() {
        let start = Instant::now();
        let mut pace = Pace::new(LIMITS, start);
        pace.content_begins(start);
        for second in 1..=2000 {
            pace.received(&[b'x'; 500], at(start, second));
            assert_eq!(pace.check(at(start, second)), Ok(()));
        }
        pace.content_ends(true, at(start, 2000));
        assert_eq!(pace.check(at(start, 2299)), Ok(()));
        assert_eq!(pace.check(at(start, 2300)), Err(Overdue::SlowCommand));
    }

    #[test]
    fn no_minimum_rate_when_it_is_zero() {
        let start = Instant::now();
        let mut pace = Pace::new(
            Limits {
                min_data_rate: 0,
                ..LIMITS
            },
            start,
        );
        pace.content_begins(start);
        for second in (1..=5000).step_by(500) {
            pace.received(b"x", at(start, second));
            assert_eq!(pace.check(at(start, second)), Ok(()));
        }
    }
}
