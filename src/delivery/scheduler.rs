//! The daemon's scheduler: one thread that knows every queued message and when it is due, and a fixed pool
//! of delivery workers fed with messages over a crossbeam channel. New messages come from the sessions as soon
//! as they are queued, from the start-up scan, from files other programs leave in the spool, and from the retry
//! schedule. A message is with at most one worker at a time.

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{error, info, warn};

use crate::delivery::attempt::{Attempted, Deliverer};
use crate::delivery::control::{self, Request};
use crate::delivery::retry;
use crate::spool::{QueueId, Queued, SpoolError};

/// How often the manager looks for messages other programs left in the spool and for control requests, when
/// nobody rings.
const PICKUP_INTERVAL: Duration = Duration::from_secs(5);

enum Event {
    /// A message to deliver now.
    New(Queued),
    /// A worker is done with a message.
    Done(Queued, Result<Attempted, SpoolError>),
    /// Look at the control requests and for new files now.
    Doorbell,
    /// ETRN: try the messages for a node now, and say how many.
    RunNode(String, Sender<usize>),
    Stop,
}

/// Hands messages to the scheduler; cheap to clone.
#[derive(Clone)]
pub struct SchedulerHandle(Sender<Event>);

impl SchedulerHandle {
    /// Delivers a message just queued.
    pub fn enqueue(&self, message: Queued) {
        let id = message.envelope.id.clone();
        if self.0.send(Event::New(message)).is_err() {
            error!(
                "{id}: the scheduler has stopped; the message waits in the spool for the next start"
            );
        }
    }

    /// Something was asked of the daemon (SIGUSR1).
    pub fn ring(&self) {
        if self.0.send(Event::Doorbell).is_err() {
            error!("the scheduler has stopped; requests wait for the next start");
        }
    }

    /// ETRN: tries the waiting messages with recipients at `node` now ("example.org", or "@example.org" for it
    /// and its subdomains); returns how many, or None if the scheduler did not answer in time.
    pub fn run_node(&self, node: &str) -> Option<usize> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        if self
            .0
            .send(Event::RunNode(node.to_string(), reply))
            .is_err()
        {
            error!("ETRN {node}: the scheduler has stopped");
            return None;
        }
        answer.recv_timeout(Duration::from_secs(2)).ok()
    }
}

/// The running scheduler: its thread and the delivery workers.
pub struct Scheduler {
    handle: SchedulerHandle,
    threads: Vec<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the scheduler thread and `config.delivery_workers` workers with the messages already queued.
    pub fn start(deliverer: Arc<Deliverer>, queued: Vec<Queued>) -> std::io::Result<Scheduler> {
        let (events, inbox) = crossbeam_channel::unbounded();
        let (work, jobs) = crossbeam_channel::unbounded::<Queued>();
        let mut threads = Vec::new();
        for n in 0..deliverer.config.delivery_workers {
            let (jobs, events, deliverer) = (jobs.clone(), events.clone(), Arc::clone(&deliverer));
            threads.push(thread::Builder::new().name(format!("delivery-{n}")).spawn(
                move || {
                    for mut message in jobs.iter() {
                        let attempted =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                deliverer.attempt(&mut message, Utc::now())
                            }))
                            .unwrap_or_else(|_| {
                                error!(
                                    "{}: delivery failed on an internal error; the worker goes on",
                                    message.envelope.id
                                );
                                Err(SpoolError::Io {
                                    path: message.file.clone(),
                                    source: std::io::Error::other("internal error during delivery"),
                                })
                            });
                        if events.send(Event::Done(message, attempted)).is_err() {
                            return;
                        }
                    }
                },
            )?);
        }
        let manager = Manager {
            deliverer,
            work,
            waiting: BTreeMap::new(),
            in_flight: HashSet::new(),
            remove_when_done: HashSet::new(),
            known_files: HashSet::new(),
        };
        let handle = SchedulerHandle(events);
        for message in queued {
            handle.enqueue(message);
        }
        threads.push(
            thread::Builder::new()
                .name("scheduler".into())
                .spawn(move || manager.run(inbox))?,
        );
        Ok(Scheduler { handle, threads })
    }

    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Stops taking new work, lets each worker finish the message it holds, and waits for them.
    pub fn stop(self) {
        let _ = self.handle.0.send(Event::Stop);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

struct Manager {
    deliverer: Arc<Deliverer>,
    work: Sender<Queued>,
    /// Deferred messages by their next try.
    waiting: BTreeMap<(DateTime<Utc>, QueueId), Queued>,
    in_flight: HashSet<QueueId>,
    /// Removed by the admin while a worker held them.
    remove_when_done: HashSet<QueueId>,
    /// Files whose messages this daemon knows of; others found in the queue are picked up.
    known_files: HashSet<PathBuf>,
}

impl Manager {
    /// Handles events until Stop. Due retries and the periodic look around happen whatever else arrives, so a
    /// steady stream of new messages cannot hold them back. A panic while handling one event is logged at error
    /// level and the manager goes on with what it knows (each handler changes its state only after the work that
    /// can fail): a bug must never leave the daemon taking mail that nobody delivers.
    fn run(mut self, inbox: Receiver<Event>) {
        let mut next_look = Instant::now() + PICKUP_INTERVAL;
        loop {
            let until_look = next_look.saturating_duration_since(Instant::now());
            let timeout = self.waiting.keys().next().map_or(until_look, |(due, _)| {
                due.signed_duration_since(Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .min(until_look)
            });
            let event = match inbox.recv_timeout(timeout) {
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
            };
            let handled = panic::catch_unwind(AssertUnwindSafe(|| {
                if let Some(event) = event {
                    self.handle(event);
                }
                self.dispatch_due(Utc::now());
                if Instant::now() >= next_look {
                    self.look_around();
                    next_look = Instant::now() + PICKUP_INTERVAL;
                }
            }));
            if let Err(panic) = handled {
                error!(
                    "scheduler: internal error ({}); the scheduler goes on",
                    panic_text(panic.as_ref())
                );
                next_look = Instant::now() + PICKUP_INTERVAL;
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::New(message) => self.dispatch(message),
            Event::Done(message, attempted) => self.done(message, attempted),
            Event::Doorbell => self.look_around(),
            Event::RunNode(node, reply) => {
                let _ = reply.send(self.run_node(&node));
            }
            Event::Stop => {}
        }
    }

    fn dispatch(&mut self, message: Queued) {
        if !self.in_flight.insert(message.envelope.id.clone()) {
            return;
        }
        self.known_files.insert(message.file.clone());
        if let Err(unsent) = self.work.send(message) {
            error!(
                "{}: no delivery worker is running; the message waits in the spool for the next start",
                unsent.0.envelope.id
            );
        }
    }

    fn dispatch_due(&mut self, now: DateTime<Utc>) {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let message = entry.remove();
            self.dispatch(message);
        }
    }

    fn done(&mut self, message: Queued, attempted: Result<Attempted, SpoolError>) {
        let id = message.envelope.id.clone();
        self.in_flight.remove(&id);
        let removed = self.remove_when_done.remove(&id);
        match attempted {
            Ok(Attempted { next_try, bounces }) => {
                for bounce in bounces {
                    self.dispatch(bounce);
                }
                match next_try {
                    None => {}
                    Some(_) if removed => self.remove(message),
                    Some(next_try) => {
                        self.waiting.insert((next_try, id), message);
                    }
                }
            }
            Err(e) => {
                warn!("{id}: delivery results could not be recorded, trying again later: {e}");
                let retry = Utc::now() + retry::backoff(&self.deliverer.config, 1);
                self.waiting.insert((retry, id), message);
            }
        }
    }

    /// Carries out control requests and picks up messages other programs queued.
    fn look_around(&mut self) {
        let spool_dir = self.deliverer.config.spool_dir.clone();
        for request in control::take(&spool_dir) {
            match request {
                Request::RunQueue(None) => {
                    info!("queue run requested: trying every queued message now");
                    self.dispatch_due(DateTime::<Utc>::MAX_UTC);
                }
                Request::RunQueue(Some(node)) => {
                    let started = self.run_node(&node);
                    info!("queue run for {node} requested: {started} messages tried now");
                }
                Request::Remove(id) => {
                    if self.in_flight.contains(&id) {
                        self.remove_when_done.insert(id);
                    } else if let Some(key) = self
                        .waiting
                        .keys()
                        .find(|(_, queued)| *queued == id)
                        .cloned()
                    {
                        let message = self.waiting.remove(&key).expect("the key was just found");
                        self.remove(message);
                    } else {
                        warn!("remove {id}: no such message in the queue");
                    }
                }
            }
        }
        self.known_files.retain(|file| file.exists());
        match self.deliverer.spool.pick_up(&self.known_files) {
            Ok(scan) => {
                for problem in scan.problems {
                    warn!("spool: {problem}");
                }
                for message in scan.messages {
                    info!("{}: picked up from the spool", message.envelope.id);
                    self.dispatch(message);
                }
            }
            Err(e) => warn!("spool: cannot look for new messages: {e}"),
        }
    }

    /// Dispatches the waiting messages with a recipient at `node` at once; returns how many.
    fn run_node(&mut self, node: &str) -> usize {
        let keys: Vec<_> = self
            .waiting
            .iter()
            .filter(|(_, message)| message.envelope.recipients.iter().any(|r| at_node(r, node)))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &keys {
            let message = self.waiting.remove(key).expect("the key was just found");
            self.dispatch(message);
        }
        keys.len()
    }

    fn remove(&mut self, message: Queued) {
        let id = &message.envelope.id;
        match self.deliverer.spool.finish(id) {
            Ok(()) => info!("{id}: removed by the administrator"),
            Err(e) => error!("{id}: cannot remove: {e}"),
        }
    }
}

/// What a caught panic said.
fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Whether `recipient` is at an ETRN node: "example.org" is that domain, "@example.org" also its subdomains.
/// Compares bytes: a recipient domain may be UTF-8 (SMTPUTF8), where a byte offset need not be a char boundary.
pub fn at_node(recipient: &str, node: &str) -> bool {
    let Some((_, domain)) = recipient.rsplit_once('@') else {
        return false;
    };
    let domain = domain.as_bytes();
    match node.strip_prefix('@') {
        Some(parent) => {
            let parent = parent.as_bytes();
            domain.eq_ignore_ascii_case(parent)
                || domain.len() > parent.len()
                    && domain[domain.len() - parent.len()..].eq_ignore_ascii_case(parent)
                    && domain[domain.len() - parent.len() - 1] == b'.'
        }
        None => domain.eq_ignore_ascii_case(node.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etrn_nodes() {
        assert!(at_node("a@example.org", "example.org"));
        assert!(at_node("a@Example.ORG", "example.org"));
        assert!(!at_node("a@mx.example.org", "example.org"));
        assert!(at_node("a@mx.example.org", "@example.org"));
        assert!(at_node("a@example.org", "@example.org"));
        assert!(!at_node("a@badexample.org", "@example.org"));
        assert!(!at_node("postmaster", "example.org"));
    }

    #[test]
    fn etrn_nodes_next_to_a_non_ascii_domain() {
        assert!(!at_node("a@bücher.de", "e.org"));
        assert!(!at_node("a@bücher.de", "@e.de"));
        assert!(!at_node("a@ü.de", "@e.de"));
        assert!(at_node("a@mx.bücher.de", "@bücher.de"));
        assert!(!at_node("a@xbücher.de", "@bücher.de"));
    }
}
