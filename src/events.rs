//! The server's one stream of events: each command and reply of a session, and every step the server takes
//! (why a recipient was accepted, the spool commit, locks, appends, relaying, retries, bounces). The code that
//! decides something emits one event; the debug log, explain mode (`postel demo`, `serve --explain`) and VERB
//! read the stream, so each piece of narration is written once, where it happens.
//!
//! Emitting is cheap when nobody reads: [`enabled`] is one relaxed atomic load and the log's level check, and
//! the [`step!`](crate::step) macro builds nothing unless it says yes.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// One event. `scope` names what it belongs to: a session ("s42") or a queued message (its queue id).
pub struct Event<'a> {
    /// The module that emits it (`module_path!()`): the debug log's target, so that
    /// `RUST_LOG=postel::smtp=debug` picks the dialogue and `postel::delivery=debug` the deliveries.
    pub target: &'static str,
    pub scope: &'a str,
    pub kind: Kind<'a>,
    /// The event in words, for people; for a command, the line without its line end.
    pub text: fmt::Arguments<'a>,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    /// A client connected; the text says who.
    Connect,
    /// A command line from the client, as received, with its line end.
    Command(&'a [u8]),
    /// A reply to the client, with its code; the text is the reply as one line.
    Reply(u16),
    /// A step the server took.
    Step,
    /// A session begins a message: its later events (spool, delivery) are scoped by this queue id.
    Message { id: &'a str },
    /// A step that tells who is behind an alias: left out where EXPN is disabled.
    Disclosure,
    /// The first delivery attempt to one recipient ended; the text says how.
    Attempted { recipient: &'a str },
    /// The session ended; the text says how.
    Disconnect,
}

/// A reader of the stream. It is called on the thread that emits, so it must be quick.
pub trait Listener: Send + Sync {
    fn event(&self, event: &Event);
}

/// How many listeners are registered: the fast check of [`enabled`].
static LISTENING: AtomicUsize = AtomicUsize::new(0);
static LISTENERS: RwLock<Vec<Arc<dyn Listener>>> = RwLock::new(Vec::new());

/// Whether anybody may read the stream: a listener, or the log at debug level for some target ([`emit`]
/// asks for the event's own).
#[inline]
pub fn enabled() -> bool {
    LISTENING.load(Ordering::Relaxed) != 0 || log::max_level() >= log::LevelFilter::Debug
}

/// Hands an event to the debug log and to every listener. Call it behind [`enabled`] (the macros do).
pub fn emit(event: &Event) {
    if log::log_enabled!(target: event.target, log::Level::Debug) {
        log::debug!(target: event.target, "{}", Logged(event));
    }
    if LISTENING.load(Ordering::Relaxed) != 0 {
        let listeners = LISTENERS.read().unwrap_or_else(PoisonError::into_inner);
        for listener in listeners.iter() {
            listener.event(event);
        }
    }
}

/// A registered listener; dropping it unregisters it.
pub struct Registration {
    listener: Arc<dyn Listener>,
}

/// Registers `listener` until the returned registration is dropped.
pub fn listen(listener: Arc<dyn Listener>) -> Registration {
    let mut listeners = LISTENERS.write().unwrap_or_else(PoisonError::into_inner);
    listeners.push(Arc::clone(&listener));
    LISTENING.fetch_add(1, Ordering::Relaxed);
    Registration { listener }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut listeners = LISTENERS.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = listeners
            .iter()
            .position(|l| Arc::ptr_eq(l, &self.listener))
        {
            listeners.swap_remove(at);
            LISTENING.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The steps of one session and of the messages it sends, kept as lines for its client to read: what VERB
/// shows. Commands and replies are left out (the client has them), and so are disclosures unless `disclose`.
pub struct Capture {
    disclose: bool,
    captured: Mutex<Captured>,
    attempted: Condvar,
}

#[derive(Default)]
struct Captured {
    /// The session's id, then the queue ids of its messages.
    scopes: Vec<String>,
    lines: Vec<String>,
    /// The recipients whose first delivery attempt has ended.
    attempted: Vec<String>,
}

impl Capture {
    /// A capture of `session`'s steps, registered until the registration is dropped.
    pub fn start(session: &str, disclose: bool) -> (Arc<Capture>, Registration) {
        let capture = Arc::new(Capture {
            disclose,
            captured: Mutex::new(Captured {
                scopes: vec![session.to_string()],
                ..Captured::default()
            }),
            attempted: Condvar::new(),
        });
        let registration = listen(capture.clone());
        (capture, registration)
    }

    /// The lines captured since the last call.
    pub fn take_lines(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().lines)
    }

    /// Waits until the first delivery attempt of each of `recipients` has ended, or `timeout` is over.
    pub fn wait_attempts(&self, recipients: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut captured = self.lock();
        while !recipients.iter().all(|r| captured.attempted.contains(r)) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            captured = self
                .attempted
                .wait_timeout(captured, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.captured.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Listener for Capture {
    fn event(&self, event: &Event) {
        let mut captured = self.lock();
        if !captured.scopes.iter().any(|s| s == event.scope) {
            return;
        }
        match event.kind {
            Kind::Step => captured.lines.push(event.text.to_string()),
            Kind::Disclosure if self.disclose => captured.lines.push(event.text.to_string()),
            Kind::Message { id } => {
                captured.scopes.truncate(1);
                captured.scopes.push(id.to_string());
                captured.lines.push(event.text.to_string());
            }
            Kind::Attempted { recipient } => {
                captured.lines.push(format!("{recipient}: {}", event.text));
                captured.attempted.push(recipient.to_string());
                self.attempted.notify_all();
            }
            Kind::Disclosure
            | Kind::Connect
            | Kind::Command(_)
            | Kind::Reply(_)
            | Kind::Disconnect => {}
        }
    }
}

/// An event as the debug log writes it: `s42: C: MAIL FROM:<a@b>`, `s42: S: 250 2.1.0 Ok`, `6618..: step`.
struct Logged<'a, 'b>(&'a Event<'b>);

impl fmt::Display for Logged<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Event {
            scope, kind, text, ..
        } = self.0;
        match kind {
            Kind::Command(_) => write!(f, "{scope}: C: {text}"),
            Kind::Reply(_) => write!(f, "{scope}: S: {text}"),
            Kind::Attempted { recipient } => write!(f, "{scope}: {recipient}: {text}"),
            Kind::Connect
            | Kind::Step
            | Kind::Message { .. }
            | Kind::Disclosure
            | Kind::Disconnect => {
                write!(f, "{scope}: {text}")
            }
        }
    }
}

/// Emits a step of the server's, if anybody listens: `step!(scope, "fsync took {} ms", ms)`. The
/// arguments are evaluated only then. `step!(scope, Kind::Disclosure, "...")` gives the kind.
#[macro_export]
macro_rules! step {
    ($scope:expr, Kind::$kind:ident $({ $($field:tt)* })?, $($arg:tt)+) => {
        if $crate::events::enabled() {
            $crate::events::emit(&$crate::events::Event {
                target: module_path!(),
                scope: $scope,
                kind: $crate::events::Kind::$kind $({ $($field)* })?,
                text: format_args!($($arg)+),
            });
        }
    };
    ($scope:expr, $($arg:tt)+) => {
        $crate::step!($scope, Kind::Step, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<String>>);

    impl Listener for Collect {
        fn event(&self, event: &Event) {
            if event.scope == "t-events" {
                self.0.lock().unwrap().push(Logged(event).to_string());
            }
        }
    }

    #[test]
    fn a_capture_keeps_its_session_and_message_steps_and_hides_disclosures() {
        let (capture, _registration) = Capture::start("t-capture", false);
        step!("t-capture", "local user");
        step!("t-capture", Kind::Disclosure, "alias expands to bob");
        step!("t-other", "someone else's");
        step!("t-capture", Kind::Message { id: "Q1" }, "queue id Q1");
        step!("Q1", "spooled");
        assert_eq!(
            capture.take_lines(),
            ["local user", "queue id Q1", "spooled"]
        );
        let waiting = {
            let capture = capture.clone();
            std::thread::spawn(move || {
                capture.wait_attempts(&["alice@x".to_string()], Duration::from_secs(10))
            })
        };
        step!(
            "Q1",
            Kind::Attempted {
                recipient: "alice@x"
            },
            "delivered"
        );
        waiting.join().unwrap();
        assert_eq!(capture.take_lines(), ["alice@x: delivered"]);
    }

    #[test]
    fn listeners_get_the_events_emitted_while_they_are_registered() {
        let collect = Arc::new(Collect::default());
        step!("t-events", "before anyone listens");
        let registration = listen(collect.clone());
        step!("t-events", "fsync took {} ms", 2);
        step!(
            "t-events",
            Kind::Attempted { recipient: "alice" },
            "delivered"
        );
        drop(registration);
        step!("t-events", "after");
        assert_eq!(
            *collect.0.lock().unwrap(),
            ["t-events: fsync took 2 ms", "t-events: alice: delivered"]
        );
    }
}
