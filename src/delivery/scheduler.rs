//! The daemon's scheduler: one thread that knows every queued message and when it is due, and hands work to a
//! fixed pool of delivery workers. New messages come from the sessions as soon as they are queued, from the
//! start-up scan, from files other programs leave in the spool, and from the retry schedule. An attempt at a
//! message is planned by a worker (routing, header section), split into deliveries per target, which wait in
//! that target's queue (see [`Queues`]) and go out as jobs when the target has room, and concluded by a worker
//! once all of them are back. Work goes to a worker only when one is free, so nothing waits in a worker's
//! hands: a slow destination holds its own jobs, never a worker that local mail needs. A message is in at
//! most one attempt at a time.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{error, info, warn};

use crate::delivery::attempt::{Attempted, Conclusion, Deliverer, Plan};
use crate::delivery::control::{self, Request};
use crate::delivery::job::{self, MESSAGES_PER_BATCH, Part, Target};
use crate::delivery::local::Route;
use crate::delivery::queues::Queues;
use crate::delivery::retry;
use crate::delivery::trace::HeaderSection;
use crate::delivery::transport::Delivery;
use crate::delivery::worker::{self, Finished, Work, panic_text};
use crate::spool::{DeliveryState, Outcome, QueueId, Queued, SpoolError};

/// How often the manager looks for messages other programs left in the spool and for control requests, when
/// nobody rings.
const PICKUP_INTERVAL: Duration = Duration::from_secs(5);

/// How long the scheduler waits for more new messages after one arrives before it hands out work, unless a
/// worker comes back sooner (that worker waits for work). While sessions queue mail one message after another,
/// plans and jobs then go out in batches and each message costs fewer hand-offs between threads. It waits only
/// when the message before came less than half of this earlier, so that more are likely to come within it:
/// a wait that catches nothing costs the scheduler's spinning receive and delays the message (with one client
/// sending one message after another, waiting only then takes about 7 % more messages a second).
const GATHER: Duration = Duration::from_millis(1);

/// The most new messages the scheduler holds in memory at once, waiting to be planned or in an attempt. Beyond
/// that a new message waits as its place in the spool (16 bytes, [`Unread`]) and is read back when there
/// is room, so a backlog of accepted mail costs memory by its count, not by its envelopes, header sections and
/// routes. Enough to fill every job of a busy mailbox many times over. (Small in the unit tests, which queue a
/// few dozen.)
const HELD: usize = if cfg!(test) { 8 } else { 1024 };

/// A new message the scheduler does not hold: where to read it back from (see [`HELD`]). It is not in the
/// in-flight set until it is read back, so a backlog costs these 16 bytes a message and nothing more.
struct Unread {
    /// Shared with the entries before it in the same queue file.
    file: Arc<Path>,
    offset: u64,
}

enum Event {
    /// A message to deliver now.
    New(Queued),
    /// A worker is done with a piece of work.
    Finished(Finished),
    /// Look at the control requests and for new files now.
    Doorbell,
    /// ETRN: try the messages for a node now, and say how many.
    RunNode(String, Sender<usize>),
    /// ATRN: hand over the waiting messages with a recipient at one of these domains.
    Lend(Vec<String>, Sender<Vec<Queued>>),
    /// A lent message is back, with what its attempt did.
    GiveBack(Queued, Result<Attempted, SpoolError>),
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

impl SchedulerHandle {
    /// ATRN: takes the waiting messages with a recipient at one of `domains` out of the schedule, for the
    /// caller to attempt and give back with [`SchedulerHandle::give_back`]. Messages in an attempt now are not
    /// among them. (The scheduler answers at once; it drops the reply channel if it fails.)
    pub fn lend(&self, domains: &[String]) -> Vec<Queued> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        if self.0.send(Event::Lend(domains.to_vec(), reply)).is_err() {
            error!("ATRN: the scheduler has stopped");
            return Vec::new();
        }
        answer.recv().unwrap_or_default()
    }

    /// A message [`SchedulerHandle::lend`] gave out is back, with what its attempt did.
    pub fn give_back(&self, message: Queued, attempted: Result<Attempted, SpoolError>) {
        let id = message.envelope.id.clone();
        if self.0.send(Event::GiveBack(message, attempted)).is_err() {
            error!(
                "{id}: the scheduler has stopped; the message waits in the spool for the next start"
            );
        }
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
        deliverer.expect_after_crash(&queued);
        let (events, inbox) = crossbeam_channel::unbounded();
        let (work, jobs) = crossbeam_channel::unbounded::<Work>();
        let workers = deliverer.config.delivery_workers;
        let mut threads = Vec::new();
        for n in 0..workers {
            let (jobs, events, deliverer) = (jobs.clone(), events.clone(), Arc::clone(&deliverer));
            threads.push(thread::Builder::new().name(format!("delivery-{n}")).spawn(
                move || {
                    worker::run(&deliverer, &jobs, |finished| {
                        events.send(Event::Finished(finished)).is_ok()
                    })
                },
            )?);
        }
        let manager = Manager {
            work,
            idle_workers: workers,
            queues: Queues::new(workers),
            to_plan: VecDeque::new(),
            planning: 0,
            unread: VecDeque::new(),
            to_conclude: VecDeque::new(),
            attempts: HashMap::new(),
            deliverer,
            waiting: BTreeMap::new(),
            in_flight: HashSet::new(),
            remove_when_done: HashSet::new(),
            known_files: HashSet::new(),
            last_new: None,
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

    /// Stops taking new work, lets each worker finish the work it holds, and waits for them. An attempt cut
    /// short this way has its deliveries so far recorded; the rest is tried at the next start.
    pub fn stop(self) {
        let _ = self.handle.0.send(Event::Stop);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// An attempt whose deliveries are out in jobs.
struct Attempt {
    message: Arc<Queued>,
    headers: HeaderSection,
    /// Its parts (one per target) whose job is not back yet.
    parts_left: usize,
    deliveries: Vec<(Route, Delivery)>,
}

struct Manager {
    deliverer: Arc<Deliverer>,
    work: Sender<Work>,
    /// Workers without work: the scheduler gives out work only to them.
    idle_workers: usize,
    /// The deliveries waiting for their target.
    queues: Queues,
    /// Messages whose attempt is to be planned, and attempts to be concluded.
    to_plan: VecDeque<Queued>,
    /// Messages handed to workers to plan, not back yet.
    planning: usize,
    /// New messages to plan after those, not held in memory (see [`HELD`]), in the order they came.
    unread: VecDeque<Unread>,
    to_conclude: VecDeque<Conclusion>,
    /// Attempts with deliveries out, by message.
    attempts: HashMap<QueueId, Attempt>,
    /// Deferred messages by their next try.
    waiting: BTreeMap<(DateTime<Utc>, QueueId), Queued>,
    /// Messages in an attempt (planned, delivered or concluded now).
    in_flight: HashSet<QueueId>,
    /// Removed by the admin during an attempt.
    remove_when_done: HashSet<QueueId>,
    /// Files whose messages this daemon knows of; others found in the queue are picked up.
    known_files: HashSet<PathBuf>,
    /// When the last new message came (see [`GATHER`]).
    last_new: Option<Instant>,
}

impl Manager {
    /// Handles events until Stop, each with those that come with it (see [`Manager::handle_gathered`]), before it
    /// hands out work. Due retries and the periodic look around happen whatever else arrives, so a
    /// steady stream of new messages cannot hold them back. A panic while handling one event is logged at error
    /// level and the manager goes on with the rest of what it knows (the message that event was about may wait
    /// for the next start; its spool records are untouched): a bug must never leave the daemon taking mail that
    /// nobody delivers.
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
            // A mailbox whose pace is over can start a job only on an idle worker; without one, the worker that
            // comes back next takes it.
            let paced = self.queues.next_due().filter(|_| self.idle_workers > 0);
            let timeout = paced.map_or(timeout, |due| {
                timeout.min(due.saturating_duration_since(Instant::now()))
            });
            let event = match inbox.recv_timeout(timeout) {
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
            };
            let mut stop = false;
            let handled = panic::catch_unwind(AssertUnwindSafe(|| {
                if let Some(event) = event {
                    stop = !self.handle_gathered(event, &inbox);
                    if stop {
                        return;
                    }
                }
                self.dispatch_due(Utc::now());
                if Instant::now() >= next_look {
                    self.look_around();
                    next_look = Instant::now() + PICKUP_INTERVAL;
                }
                self.hand_out();
            }));
            if let Err(panic) = handled {
                error!(
                    "scheduler: internal error ({}); the scheduler goes on",
                    panic_text(panic.as_ref())
                );
                next_look = Instant::now() + PICKUP_INTERVAL;
            }
            if stop {
                return;
            }
        }
    }

    /// Handles `first` and the events that come with it: after a new message that came soon after the one before,
    /// those of the next [`GATHER`] (until a worker is back), then every one already waiting. Returns false at
    /// Stop.
    fn handle_gathered(&mut self, first: Event, inbox: &Receiver<Event>) -> bool {
        let now = Instant::now();
        let mut gather_until =
            (matches!(first, Event::New(_)) && gathers(self.last_new, now)).then_some(now + GATHER);
        let mut next = Some(first);
        while let Some(event) = next {
            match event {
                Event::Stop => return false,
                Event::Finished(_) => gather_until = None,
                Event::New(_) => self.last_new = Some(Instant::now()),
                _ => {}
            }
            self.handle(event);
            next = match gather_until.map(|deadline| inbox.recv_deadline(deadline)) {
                Some(Ok(event)) => Some(event),
                _ => {
                    gather_until = None;
                    inbox.try_recv().ok()
                }
            };
        }
        true
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::New(message) => self.dispatch(message),
            Event::Finished(finished) => {
                self.idle_workers += 1;
                match finished {
                    Finished::Planned(planned) => {
                        for (message, plan) in planned {
                            self.planned(message, plan);
                        }
                    }
                    Finished::Delivered(target, results) => self.delivered(&target, results),
                    Finished::Concluded(concluded) => {
                        for (message, attempted) in concluded {
                            self.done(message, attempted);
                        }
                    }
                }
            }
            Event::Doorbell => self.look_around(),
            Event::RunNode(node, reply) => {
                let _ = reply.send(self.run_node(&node));
            }
            Event::Lend(domains, reply) => {
                // Only messages with a recipient there still to deliver.
                let lent = self.take_waiting(|message| {
                    message.envelope.recipients.iter().any(|r| {
                        domains.iter().any(|d| at_node(r, d))
                            && !matches!(
                                message.state.outcome(r),
                                Some(Outcome::Delivered | Outcome::Failed { .. })
                            )
                    })
                });
                for message in &lent {
                    self.in_flight.insert(message.envelope.id.clone());
                }
                let _ = reply.send(lent);
            }
            Event::GiveBack(message, attempted) => self.done(message, attempted),
            Event::Stop => {}
        }
    }

    /// Starts an attempt at a message, unless one is under way. (A new message comes only once, from the session
    /// that queued it, the start-up scan or the pick-up of a file this daemon did not know.)
    fn dispatch(&mut self, message: Queued) {
        if self.in_flight.contains(&message.envelope.id) {
            return;
        }
        self.known_files.insert(message.file.clone());
        let new = message.state == DeliveryState::default();
        if new && (!self.unread.is_empty() || self.held() >= HELD) {
            let file = match self.unread.back() {
                Some(last) if *last.file == *message.file => Arc::clone(&last.file),
                _ => Arc::from(message.file.as_path()),
            };
            self.unread.push_back(Unread {
                file,
                offset: message.record_offset,
            });
            return;
        }
        self.in_flight.insert(message.envelope.id.clone());
        self.to_plan.push_back(message);
    }

    /// The messages held in memory for an attempt that is not concluded yet.
    fn held(&self) -> usize {
        self.to_plan.len() + self.planning + self.attempts.len()
    }

    /// The next message to plan: one held in memory, else, while fewer than [`HELD`] are, one read back from the
    /// spool (or removed, if the admin asked for that meanwhile); it counts as being planned from now. One that
    /// cannot be read back (an I/O error) waits in the spool for the next start.
    fn next_to_plan(&mut self) -> Option<Queued> {
        if let Some(message) = self.to_plan.pop_front() {
            self.planning += 1;
            return Some(message);
        }
        while self.held() < HELD {
            let unread = self.unread.pop_front()?;
            match self
                .deliverer
                .spool
                .read_queued(&unread.file, unread.offset)
            {
                Ok(message) if self.remove_when_done.remove(&message.envelope.id) => {
                    self.remove(message);
                }
                Ok(message) => {
                    self.in_flight.insert(message.envelope.id.clone());
                    self.planning += 1;
                    return Some(message);
                }
                Err(e) => warn!(
                    "{}: cannot read back the message at byte {} ({e}); it waits there for the next start",
                    unread.file.display(),
                    unread.offset
                ),
            }
        }
        None
    }

    /// Gives work to every idle worker while there is any: conclusions first (they free the messages), then
    /// plans, then jobs from the targets with room. Conclusions and plans go out in batches.
    fn hand_out(&mut self) {
        while self.idle_workers > 0 {
            let work = if !self.to_conclude.is_empty() {
                let take = batch_size(self.to_conclude.len());
                Work::Conclude(self.to_conclude.drain(..take).collect())
            } else if let Some(first) = self.next_to_plan() {
                let waiting = 1 + self.to_plan.len() + self.unread.len();
                let take = batch_size(waiting);
                let mut messages = vec![first];
                while messages.len() < take
                    && let Some(message) = self.next_to_plan()
                {
                    messages.push(message);
                }
                Work::Plan(messages)
            } else if let Some(job) = self.queues.next_job(&self.deliverer.config, Instant::now()) {
                Work::Deliver(job)
            } else {
                return;
            };
            if self.work.send(work).is_err() {
                error!(
                    "no delivery worker is running; queued mail waits in the spool for the next start"
                );
                return;
            }
            self.idle_workers -= 1;
        }
    }

    /// An attempt is planned: its deliveries join their targets' queues.
    fn planned(&mut self, message: Queued, plan: Result<Plan, SpoolError>) {
        self.planning -= 1;
        let id = message.envelope.id.clone();
        let Plan { headers, routes } = match plan {
            Ok(plan) => plan,
            Err(e) => return self.done(message, Err(e)),
        };
        let config = &self.deliverer.config;
        let now = Instant::now();
        let groups = job::by_target(routes, config);
        if groups.is_empty() {
            self.to_conclude.push_back(Conclusion {
                message,
                headers,
                deliveries: Vec::new(),
            });
            return;
        }
        let message = Arc::new(message);
        let parts_left = groups.len();
        for (target, routes) in groups {
            let part = Part {
                message: Arc::clone(&message),
                headers: headers.clone(),
                routes,
            };
            self.queues.push(target, part, config, now);
        }
        self.attempts.insert(
            id,
            Attempt {
                message,
                headers,
                parts_left,
                deliveries: Vec::new(),
            },
        );
    }

    /// A job is back: its deliveries go to their attempts, and an attempt with all of its back is concluded.
    fn delivered(&mut self, target: &Target, results: job::JobResults) {
        self.queues
            .job_done(target, &self.deliverer.config, Instant::now());
        for (id, deliveries) in results {
            let Some(attempt) = self.attempts.get_mut(&id) else {
                continue;
            };
            attempt.deliveries.extend(deliveries);
            attempt.parts_left -= 1;
            if attempt.parts_left == 0 {
                let attempt = self
                    .attempts
                    .remove(&id)
                    .expect("the attempt was just found");
                self.to_conclude.push_back(Conclusion {
                    message: Arc::unwrap_or_clone(attempt.message),
                    headers: attempt.headers,
                    deliveries: attempt.deliveries,
                });
            }
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
                    } else if !self.unread.is_empty() {
                        // Not held in memory yet: removed when read back.
                        self.remove_when_done.insert(id);
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
        let due = self
            .take_waiting(|message| message.envelope.recipients.iter().any(|r| at_node(r, node)));
        let count = due.len();
        for message in due {
            self.dispatch(message);
        }
        count
    }

    /// Takes the waiting messages that are `wanted` out of the schedule.
    fn take_waiting(&mut self, wanted: impl Fn(&Queued) -> bool) -> Vec<Queued> {
        let keys: Vec<_> = self
            .waiting
            .iter()
            .filter(|(_, message)| wanted(message))
            .map(|(key, _)| key.clone())
            .collect();
        keys.iter()
            .map(|key| self.waiting.remove(key).expect("the key was just found"))
            .collect()
    }

    fn remove(&mut self, message: Queued) {
        let id = &message.envelope.id;
        match self.deliverer.spool.remove(&message) {
            Ok(()) => info!("{id}: removed by the administrator"),
            Err(e) => error!("{id}: cannot remove: {e}"),
        }
    }
}

/// How many of `waiting` plans or conclusions one worker takes: all of them, up to [`MESSAGES_PER_BATCH`]. One
/// worker planning or concluding them one after another costs a wake-up and a journal write for the batch;
/// sharing them among the idle workers would cost one of each per worker, to run in parallel work of
/// microseconds a message.
fn batch_size(waiting: usize) -> usize {
    waiting.min(MESSAGES_PER_BATCH)
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

/// Whether a new message that comes at `now` starts a gather: the one before it came at `last_new`, less than
/// half a [`GATHER`] earlier, so that the gather is likely to catch more.
fn gathers(last_new: Option<Instant>, now: Instant) -> bool {
    last_new.is_some_and(|last| now.saturating_duration_since(last) < GATHER / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::delivery::aliases::Aliases;
    use crate::reloadable::Reloadable;
    use crate::spool::Spool;
    use crate::testing::TempDir;

    #[test]
    fn only_a_message_close_behind_the_one_before_starts_a_gather() {
        let now = Instant::now();
        assert!(!gathers(None, now), "the first message");
        assert!(gathers(Some(now - GATHER / 5), now));
        assert!(!gathers(Some(now - GATHER / 2), now));
        assert!(
            !gathers(Some(now - GATHER * 3), now),
            "one client, one message after another"
        );
        assert!(
            gathers(Some(now + GATHER), now),
            "a clock read later on another path"
        );
    }

    #[test]
    fn the_scheduler_goes_on_after_a_panic() {
        let dir = TempDir::new("scheduler-panic");
        let mut config = Config::builtin();
        config.spool_dir = dir.0.join("spool");
        config.delivery_workers = 1;
        let spool = Spool::open(&config.spool_dir).unwrap();
        let aliases = Aliases::parse("", "aliases").unwrap();
        let deliverer = Deliverer::new(
            Arc::new(config),
            Arc::new(spool),
            Arc::new(Reloadable::new(aliases)),
        );
        let scheduler = Scheduler::start(Arc::new(deliverer), Vec::new()).unwrap();
        let handle = scheduler.handle();
        // A job that was never handed out comes back: its target's count goes below zero, a bug that panics.
        let bogus = Finished::Delivered(Target::Remote("x.test".into()), Vec::new());
        handle.0.send(Event::Finished(bogus)).unwrap();
        assert_eq!(
            handle.run_node("example.org"),
            Some(0),
            "the scheduler died"
        );
        scheduler.stop();
    }

    /// A spool with `count` messages for alice (subjects 0, 1, ...) and a deliverer with `workers` workers.
    fn backlog(dir: &TempDir, count: usize, workers: usize) -> (Arc<Deliverer>, Vec<Queued>) {
        let mut config = Config::builtin();
        config.spool_dir = dir.0.join("spool");
        config.mailbox_dir = dir.0.join("mailboxes");
        config.local_users = crate::config::LocalUsers::List(vec!["alice".into()]);
        config.delivery_workers = workers;
        std::fs::create_dir_all(&config.mailbox_dir).unwrap();
        let spool = Spool::open(&config.spool_dir).unwrap();
        let queued: Vec<Queued> = (0..count)
            .map(|n| {
                let recipients = vec!["alice@localhost".to_string()];
                let mut writer = spool.new_message(crate::spool::Envelope::new(
                    "carol@example.org".into(),
                    recipients,
                    Utc::now(),
                ));
                writer.write(format!("Subject: {n}\r\n\r\nbody\r\n").as_bytes());
                spool.commit(writer).unwrap()
            })
            .collect();
        let aliases = Aliases::parse("", "aliases").unwrap();
        let deliverer = Deliverer::new(
            Arc::new(config),
            Arc::new(spool),
            Arc::new(Reloadable::new(aliases)),
        );
        (Arc::new(deliverer), queued)
    }

    /// The subjects in alice's mailbox once it holds `count` messages (or after 20 s), sorted: messages are
    /// planned by several workers at once, so two neighbours may reach the mailbox the other way round.
    fn delivered(deliverer: &Deliverer, count: usize) -> Vec<usize> {
        let mailbox = deliverer.config.mailbox_dir.join("alice");
        let subjects = || -> Vec<usize> {
            let text = std::fs::read_to_string(&mailbox).unwrap_or_default();
            let subjects = text
                .lines()
                .filter_map(|line| line.strip_prefix("Subject: "));
            subjects.map(|s| s.parse().unwrap()).collect()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while subjects().len() < count && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let mut got = subjects();
        got.sort_unstable();
        got
    }

    #[test]
    fn a_backlog_beyond_what_is_held_is_read_back_and_delivered_once() {
        let dir = TempDir::new("scheduler-backlog");
        let count = 4 * HELD;
        let (deliverer, queued) = backlog(&dir, count, 4);
        let scheduler = Scheduler::start(Arc::clone(&deliverer), queued).unwrap();
        let got = delivered(&deliverer, count);
        scheduler.stop();
        assert_eq!(got, (0..count).collect::<Vec<_>>(), "each message once");
    }

    #[test]
    fn a_message_removed_while_it_waits_unread_is_removed_when_read_back() {
        let dir = TempDir::new("scheduler-remove");
        let count = 4 * HELD;
        let (deliverer, queued) = backlog(&dir, count, 1);
        // alice's mailbox is locked: the one worker waits for it with the first job, and the last messages wait
        // unread in the spool.
        let lock = deliverer.config.mailbox_dir.join("alice.lock");
        std::fs::write(&lock, "").unwrap();
        let last = queued.last().unwrap().envelope.id.clone();
        let scheduler = Scheduler::start(Arc::clone(&deliverer), queued).unwrap();
        let spool_dir = &deliverer.config.spool_dir;
        control::send(spool_dir, &Request::Remove(last.clone())).unwrap();
        scheduler.handle().ring();
        thread::sleep(Duration::from_millis(300));
        std::fs::remove_file(&lock).unwrap();
        let got = delivered(&deliverer, count - 1);
        scheduler.stop();
        assert_eq!(got, (0..count - 1).collect::<Vec<_>>(), "all but the last");
        let left = deliverer.spool.scan(false).unwrap().messages;
        assert!(left.iter().all(|m| m.envelope.id != last), "it is removed");
    }

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
