//! Who decides a retry time: what a transport said about a delivery becomes the journal's outcome here, with
//! the wait before the next attempt (retry_first, doubling up to retry_max) or, once a message has been queued
//! longer than queue_lifetime, the end of trying.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Config, format_duration};
use crate::delivery::transport::{Delivery, Problem};
use crate::smtp::{Class, Detail, Status};
use crate::spool::Outcome;

/// The wait before attempt number `attempts + 1`: retry_first, doubling, at most retry_max.
pub fn backoff(config: &Config, attempts: u32) -> chrono::Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(30));
    let wait = config
        .retry_first
        .saturating_mul(factor)
        .min(config.retry_max);
    chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}

/// What one attempt of one message does with temporary failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// When a target that failed for now is tried again.
    pub retry_at: DateTime<Utc>,
    /// The message has been queued for `queue_lifetime` or longer: a temporary failure is the last one.
    pub expired: bool,
    lifetime: Duration,
}

impl Schedule {
    /// The schedule of attempt number `attempt` (1 for the first), made at `now`, of a message that arrived at
    /// `arrival`.
    pub fn new(
        config: &Config,
        arrival: DateTime<Utc>,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Schedule {
        let queued = now
            .signed_duration_since(arrival)
            .to_std()
            .unwrap_or_default();
        Schedule {
            retry_at: now + backoff(config, attempt),
            expired: queued >= config.queue_lifetime,
            lifetime: config.queue_lifetime,
        }
    }

    /// The journal's record of `delivery`.
    pub fn outcome(&self, delivery: Delivery) -> Outcome {
        match delivery {
            Delivery::Done => Outcome::Delivered,
            Delivery::Permanent(Problem {
                status, diagnostic, ..
            }) => Outcome::Failed { status, diagnostic },
            Delivery::Temporary(Problem { diagnostic, .. }) if self.expired => {
                let lifetime = format_duration(self.lifetime);
                // RFC 3463 4.4.7: delivery time expired; the last error says why.
                Outcome::Failed {
                    status: Status::new(Class::TransientFailure, Detail::DeliveryTimeExpired)
                        .to_string(),
                    diagnostic: format!("{diagnostic} (gave up: queued longer than {lifetime})"),
                }
            }
            Delivery::Temporary(Problem {
                status, diagnostic, ..
            }) => Outcome::Deferred {
                status,
                diagnostic,
                next_try: self.retry_at,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn config() -> Config {
        let mut config = Config::builtin();
        config.retry_first = Duration::from_secs(300);
        config.retry_max = Duration::from_secs(3600);
        config.queue_lifetime = Duration::from_secs(5 * 24 * 3600);
        config
    }

    #[test]
    fn the_wait_doubles_from_retry_first_up_to_retry_max() {
        let minutes: Vec<i64> = (1..=8)
            .map(|attempts| backoff(&config(), attempts).num_minutes())
            .collect();
        assert_eq!(minutes, [5, 10, 20, 40, 60, 60, 60, 60]);
        assert_eq!(backoff(&config(), 0).num_minutes(), 5);
        assert_eq!(backoff(&config(), u32::MAX).num_minutes(), 60);
    }

    #[test]
    fn temporary_failures_wait_until_the_queue_lifetime_is_over() {
        let arrival = Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap();
        let later = |secs| arrival + chrono::Duration::seconds(secs);
        let lifetime = 5 * 24 * 3600;
        let first = Schedule::new(&config(), arrival, 1, arrival);
        assert_eq!((first.retry_at, first.expired), (later(300), false));
        let third = Schedule::new(&config(), arrival, 3, later(600));
        assert_eq!(third.retry_at, later(600 + 1200));
        assert!(!Schedule::new(&config(), arrival, 9, later(lifetime - 1)).expired);
        assert!(Schedule::new(&config(), arrival, 9, later(lifetime)).expired);

        let busy = || Delivery::temporary(Detail::OtherMailbox, "mailbox is locked");
        assert_eq!(
            first.outcome(busy()),
            Outcome::Deferred {
                status: "4.2.0".into(),
                diagnostic: "mailbox is locked".into(),
                next_try: later(300),
            }
        );
        let last = Schedule::new(&config(), arrival, 9, later(lifetime));
        assert_eq!(
            last.outcome(busy()),
            Outcome::Failed {
                status: "4.4.7".into(),
                diagnostic: "mailbox is locked (gave up: queued longer than 5d)".into(),
            }
        );
    }

    #[test]
    fn done_and_permanent_failures_do_not_depend_on_the_schedule() {
        let arrival = Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap();
        for schedule in [
            Schedule::new(&config(), arrival, 1, arrival),
            Schedule::new(&config(), arrival, 1, arrival + chrono::Duration::days(6)),
        ] {
            assert_eq!(schedule.outcome(Delivery::Done), Outcome::Delivered);
            assert_eq!(
                schedule.outcome(Delivery::permanent(
                    Detail::BadDestinationMailbox,
                    "no such user here: x"
                )),
                Outcome::Failed {
                    status: "5.1.1".into(),
                    diagnostic: "no such user here: x".into(),
                }
            );
        }
    }
}
