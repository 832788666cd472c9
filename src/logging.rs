//! Where log lines go: stderr (filtered as env_logger filters, by `RUST_LOG`) or syslog, facility mail — and never into an SMTP session.
//!
//! Classic inetd and xinetd hand `postel inetd` the client's socket as stdin, stdout *and* stderr, so in inetd
//! mode a stderr that is a network socket, or the same file as stdin or stdout, is treated as the client's: lines go to
//! syslog whatever the `log` key says, and when the syslog socket cannot be reached they are dropped and counted
//! rather than written there; the count rides on the next line that gets out.
//!
//! Syslog lines are RFC 3164 datagrams as syslog(3) writes them (`<22>Dec  1 10:33:49 postel[812]: ...`). A
//! line waits a little for a daemon that falls behind, but a stuck one costs lost lines, never a stalled session.
//! The few lines of that protocol are written here rather than taken from a crate (`syslog` blocks on a full
//! socket and cannot say what was lost), because the fallback and drop rules above sit inside the sending.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write as _};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{Datelike, Timelike};
use log::{Level, Log, Metadata, Record};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockaddrLike, SockaddrStorage, UnixAddr, getsockname, sendto,
};
use nix::sys::stat::{FileStat, fstat};

use crate::config::{Config, DEFAULT_SYSLOG_SOCKET, LogTarget};

/// How long a line may wait for a syslog daemon that does not keep up; once one waited in vain, lines are
/// tried without waiting until one gets through, so a stuck daemon costs lost lines, not stalled sessions.
const SYSLOG_WAIT: Duration = Duration::from_millis(200);

/// Longest syslog datagram sent; rsyslog's default message limit is 8 KiB. Longer lines are cut.
const MAX_DATAGRAM: usize = 8000;

/// The syslog facility every MTA logs under.
const FACILITY_MAIL: u8 = 2;

/// Which program is logging: inetd mode may share stderr with the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `postel inetd`: stdin and stdout are the client; stderr may be too.
    Inetd,
    /// Every other command: stderr is the admin's.
    Other,
}

/// Installs the logger: `RUST_LOG` (else `default_filter`) picks the level. Until [`route`] is told the
/// configuration, lines go to stderr — or, when stderr may be the client's socket, to the default syslog socket.
pub fn init(default_filter: &str, mode: Mode) {
    let filter =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
            .build();
    log::set_max_level(filter.filter());
    let stderr_is_client = mode == Mode::Inetd && stderr_may_be_the_client();
    let logger = LOGGER.get_or_init(|| Logger {
        filter,
        stderr_is_client,
        early: Route::new(
            stderr_is_client,
            LogTarget::Stderr,
            Path::new(DEFAULT_SYSLOG_SOCKET),
        ),
        configured: OnceLock::new(),
    });
    let _ = log::set_logger(logger);
}

/// Sends the lines where the configuration says, or to syslog when stderr may be the client's socket.
pub fn route(config: &Config) {
    if let Some(logger) = LOGGER.get() {
        let route = Route::new(logger.stderr_is_client, config.log, &config.syslog_socket);
        let _ = logger.configured.set(route);
    }
}

/// Reports the error that ends the program: on stderr, or as an error line where stderr may be the client's.
pub fn fatal(message: &dyn std::fmt::Display) {
    match LOGGER.get() {
        Some(logger) if logger.stderr_is_client => log::error!("{message}"),
        _ => eprintln!("{message}"),
    }
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

struct Logger {
    /// Filters every line (`RUST_LOG`).
    filter: env_logger::Logger,
    /// Inetd mode with a stderr that may lead to the client: nothing is written there.
    stderr_is_client: bool,
    /// Where lines go until the configuration is known.
    early: Route,
    /// Where lines go once the configuration is known.
    configured: OnceLock<Route>,
}

struct Route {
    syslog: Option<Syslog>,
    /// False when stderr may be the client's socket.
    stderr_allowed: bool,
}

impl Route {
    fn new(stderr_is_client: bool, target: LogTarget, syslog_socket: &Path) -> Route {
        Route {
            syslog: (target == LogTarget::Syslog || stderr_is_client)
                .then(|| Syslog::new(syslog_socket)),
            stderr_allowed: !stderr_is_client,
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.filter.matches(record) {
            return;
        }
        let route = self.configured.get().unwrap_or(&self.early);
        if let Some(syslog) = &route.syslog {
            match syslog.send(record) {
                Ok(()) => return,
                Err(Unsent {
                    error,
                    outage_began: true,
                }) if route.stderr_allowed => eprintln!(
                    "cannot reach the syslog socket {}: {error}; logging to stderr",
                    syslog.path.display()
                ),
                Err(_) => {}
            }
        }
        if route.stderr_allowed {
            write_stderr(record);
        } else if let Some(syslog) = &route.syslog {
            syslog.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines go to stderr, which is unbuffered, with one write each: nothing waits to be flushed.
    fn flush(&self) {}
}

thread_local! {
    /// This thread's stderr lines not written yet: the one being formatted, or those held by [`together`].
    static LINES: RefCell<String> = const { RefCell::new(String::new()) };
    /// Set while [`together`] holds this thread's lines.
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

/// Held lines are written once they reach this length, without waiting for the end of [`together`].
const HELD_MAX: usize = 64 * 1024;

/// Writes `2026-12-01T09:05:07.250Z INFO  text` to stderr with one write, formatted in a buffer of this thread's;
/// inside [`together`], the line waits in that buffer.
fn write_stderr(record: &Record) {
    let write = |lines: &mut String, holding: bool| {
        stderr_line(lines, record.level(), record.args(), chrono::Utc::now());
        if !holding || lines.len() >= HELD_MAX {
            let _ = io::stderr().write_all(lines.as_bytes());
            lines.clear();
        }
    };
    // A line whose text logs while it is formatted gets a buffer of its own, written at once.
    LINES.with(|lines| match lines.try_borrow_mut() {
        Ok(mut lines) => write(&mut lines, HOLDING.get()),
        Err(_) => write(&mut String::new(), false),
    });
}

/// Runs `work`, holding the stderr lines this thread logs meanwhile and writing them together when it ends
/// (or panics): for work that logs a line or two for each of many messages within microseconds, such as a
/// delivery worker concluding a batch, one write instead of one a line. Each line keeps its own time. Not for
/// work that may take long: its lines would show late. Lines for syslog go as they come.
pub fn together<T>(work: impl FnOnce() -> T) -> T {
    struct Release {
        was_holding: bool,
    }
    impl Drop for Release {
        fn drop(&mut self) {
            HOLDING.set(self.was_holding);
            if !self.was_holding {
                LINES.with(|lines| {
                    if let Ok(mut lines) = lines.try_borrow_mut()
                        && !lines.is_empty()
                    {
                        let _ = io::stderr().write_all(lines.as_bytes());
                        lines.clear();
                    }
                });
            }
        }
    }
    let _release = Release {
        was_holding: HOLDING.replace(true),
    };
    work()
}

fn stderr_line(
    line: &mut String,
    level: Level,
    message: &std::fmt::Arguments,
    now: chrono::DateTime<chrono::Utc>,
) {
    let (date, time) = (now.date_naive(), now.time());
    // A leap second's milliseconds run past 999.
    let millis = now.timestamp_subsec_millis().min(999);
    let _ = writeln!(
        line,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{millis:03}Z {level:<5} {message}",
        date.year(),
        date.month(),
        date.day(),
        time.hour(),
        time.minute(),
        time.second(),
    );
}

/// A syslog daemon's datagram socket, addressed by name on every line so that a restarted daemon is found again.
struct Syslog {
    /// None when no socket could be made at all: every line then fails.
    socket: Option<(UnixDatagram, UnixAddr)>,
    path: PathBuf,
    /// Lines lost since the last one that reached syslog.
    dropped: AtomicU64,
    /// Set while sending fails: lines are then tried without waiting, and the outage is announced once.
    failing: AtomicBool,
}

/// A line that did not reach syslog.
struct Unsent {
    error: io::Error,
    /// The first failure after lines got through (or of all).
    outage_began: bool,
}

impl Syslog {
    fn new(path: &Path) -> Syslog {
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.set_write_timeout(Some(SYSLOG_WAIT)).map(|()| s))
            .ok()
            .zip(UnixAddr::new(path).ok());
        Syslog {
            socket,
            path: path.to_path_buf(),
            dropped: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    fn send(&self, record: &Record) -> Result<(), Unsent> {
        let failing = self.failing.load(Ordering::Relaxed);
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let line = syslog_line(record.level(), record.args(), dropped, chrono::Local::now());
        let flags = if failing {
            MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::empty()
        };
        let sent = match &self.socket {
            Some((socket, address)) => {
                sendto(socket.as_raw_fd(), line.as_bytes(), address, flags).map_err(io::Error::from)
            }
            None => Err(io::Error::other("cannot make a datagram socket")),
        };
        match sent {
            Ok(_) => {
                self.failing.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.dropped.fetch_add(dropped, Ordering::Relaxed);
                let outage_began = !self.failing.swap(true, Ordering::Relaxed);
                Err(Unsent {
                    error,
                    outage_began,
                })
            }
        }
    }
}

/// One RFC 3164 line as syslog(3) sends it to /dev/log, with the count of lines lost before it.
fn syslog_line(
    level: Level,
    message: &std::fmt::Arguments,
    dropped: u64,
    now: chrono::DateTime<chrono::Local>,
) -> String {
    let severity = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    let mut line = String::with_capacity(128);
    let _ = write!(
        line,
        "<{}>{} postel[{}]: {message}",
        FACILITY_MAIL * 8 + severity,
        now.format("%b %e %H:%M:%S"),
        std::process::id()
    );
    if dropped > 0 {
        let _ = write!(
            line,
            " [{dropped} earlier log lines lost: syslog socket unreachable]"
        );
    }
    if line.len() > MAX_DATAGRAM {
        let mut end = MAX_DATAGRAM;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// Whether stderr may lead to the client: a network socket (inetd and xinetd pass the connection as fd 2), or
/// the file stdin or stdout is (socat's `stderr` option, a pipe pair). Not a terminal, where a person runs it,
/// nor a local socket of its own (systemd's `StandardError=journal`).
fn stderr_may_be_the_client() -> bool {
    let stderr = io::stderr();
    let Ok(stat) = fstat(stderr.as_fd()) else {
        return false;
    };
    if stderr.is_terminal() {
        return false;
    }
    let same_file = |other: nix::Result<FileStat>| {
        other.is_ok_and(|o| (o.st_dev, o.st_ino) == (stat.st_dev, stat.st_ino))
    };
    let network_socket = || {
        getsockname::<SockaddrStorage>(stderr.as_raw_fd()).is_ok_and(|address| {
            matches!(
                address.family(),
                Some(AddressFamily::Inet | AddressFamily::Inet6)
            )
        })
    };
    same_file(fstat(io::stdin().as_fd()))
        || same_file(fstat(io::stdout().as_fd()))
        || network_socket()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn line(level: Level, dropped: u64) -> String {
        let now = chrono::Local
            .with_ymd_and_hms(2026, 12, 1, 9, 5, 7)
            .unwrap();
        syslog_line(level, &format_args!("ABC123: removed"), dropped, now)
    }

    #[test]
    fn syslog_lines_carry_facility_mail_and_the_level() {
        let pid = std::process::id();
        assert_eq!(
            line(Level::Info, 0),
            format!("<22>Dec  1 09:05:07 postel[{pid}]: ABC123: removed")
        );
        assert!(line(Level::Error, 0).starts_with("<19>Dec  1 "));
        assert!(line(Level::Warn, 0).starts_with("<20>"));
        assert!(line(Level::Trace, 0).starts_with("<23>"));
    }

    #[test]
    fn stderr_lines_carry_the_time_in_utc_to_the_millisecond_and_the_level() {
        let at = |ms| {
            chrono::Utc.with_ymd_and_hms(2026, 12, 1, 9, 5, 7).unwrap()
                + chrono::Duration::milliseconds(ms)
        };
        let mut line = String::new();
        stderr_line(
            &mut line,
            Level::Info,
            &format_args!("ABC123: removed"),
            at(250),
        );
        assert_eq!(line, "2026-12-01T09:05:07.250Z INFO  ABC123: removed\n");
        line.clear();
        stderr_line(&mut line, Level::Error, &format_args!("x"), at(3));
        assert_eq!(line, "2026-12-01T09:05:07.003Z ERROR x\n");
    }

    #[test]
    fn lost_lines_are_counted_in_the_next_one() {
        assert!(
            line(Level::Info, 3)
                .ends_with("removed [3 earlier log lines lost: syslog socket unreachable]")
        );
    }

    #[test]
    fn long_lines_are_cut_to_one_datagram() {
        let long = "é".repeat(MAX_DATAGRAM);
        let now = chrono::Local::now();
        let cut = syslog_line(Level::Debug, &format_args!("{long}"), 0, now);
        assert!(cut.len() <= MAX_DATAGRAM && cut.len() > MAX_DATAGRAM - 2);
    }
}
