//! One delivery attempt of one queued message: route every recipient, deliver to each target not yet done,
//! notify the sender of failures, record the results, and finish the message when nothing is left to do.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Read};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use log::{error, info};

use crate::config::Config;
use crate::delivery::aliases::{AliasError, Aliases};
use crate::delivery::appending::{self, ToMailbox};
use crate::delivery::body;
use crate::delivery::bounce::{self, Failure};
use crate::delivery::job::{JobResults, Part};
use crate::delivery::local::{Destination, Route, Router};
use crate::delivery::mbox::MboxFile;
use crate::delivery::pipe;
use crate::delivery::relay::Relay;
use crate::delivery::retry::Schedule;
use crate::delivery::trace::{self, HeaderSection, Loop};
use crate::delivery::transport::Delivery;
use crate::reloadable::Reloadable;
use crate::smtp::Detail;
use crate::spool::{
    AttemptRecord, Outcome, QueueId, Queued, RecipientResult, Spool, SpoolError, headers,
};
use crate::step;

/// How much of a message is read to find its header section (for loop checks and bounces).
const HEADER_LIMIT: u64 = 64 * 1024;

/// Delivers queued messages; shared by the delivery workers.
pub struct Deliverer {
    pub config: Arc<Config>,
    pub spool: Arc<Spool>,
    /// Replaced when the daemon reads the aliases file again (SIGHUP).
    pub aliases: Arc<Reloadable<Aliases>>,
    relay: Relay,
}

/// What an attempt starts from: what it needs of the message's header section (for loop checks and bounces) and
/// the targets not yet delivered or failed.
pub struct Plan {
    pub headers: HeaderSection,
    pub routes: Vec<Route>,
}

/// An attempt whose deliveries are all done, to be concluded.
pub struct Conclusion {
    pub message: Queued,
    pub headers: HeaderSection,
    pub deliveries: Vec<(Route, Delivery)>,
}

/// An attempt's outcomes, logged and notified, to be recorded.
struct Settled {
    /// When to try again; None when the message is finished.
    next_try: Option<DateTime<Utc>>,
    bounces: Vec<Queued>,
    /// The results not in the journal yet.
    unrecorded: Vec<RecipientResult>,
}

impl Settled {
    /// What came of the attempt, once recorded.
    fn attempted(self, id: &QueueId) -> Attempted {
        if self.next_try.is_none() {
            info!("{id}: removed");
        }
        Attempted {
            next_try: self.next_try,
            bounces: self.bounces,
        }
    }
}

/// What became of an attempt.
pub struct Attempted {
    /// When to try again; None when the message is finished.
    pub next_try: Option<DateTime<Utc>>,
    /// Notifications queued by this attempt, to be delivered in turn.
    pub bounces: Vec<Queued>,
}

/// Why a deliverer could not be set up.
#[derive(Debug)]
pub enum SetupError {
    Aliases(AliasError),
    Spool(SpoolError),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Aliases(e) => write!(f, "{e}"),
            SetupError::Spool(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SetupError {}

impl Deliverer {
    /// The deliverer for a program that is not the daemon (inetd mode, sendmail, the queue commands): the
    /// configured aliases, and the spool opened without its lock (delivering takes it, or hands over to the
    /// daemon that holds it).
    pub fn open(config: Config) -> Result<Deliverer, SetupError> {
        let config = Arc::new(config);
        let aliases = Aliases::configured(&config).map_err(SetupError::Aliases)?;
        let aliases = Arc::new(Reloadable::new(aliases));
        let spool = Arc::new(Spool::open(&config.spool_dir).map_err(SetupError::Spool)?);
        Ok(Deliverer::new(config, spool, aliases))
    }

    /// The deliverer of `config` working on `spool` with `aliases`; the daemon passes its locked spool.
    pub fn new(
        config: Arc<Config>,
        spool: Arc<Spool>,
        aliases: Arc<Reloadable<Aliases>>,
    ) -> Deliverer {
        let relay = Relay::new(&config);
        Deliverer {
            config,
            spool,
            aliases,
            relay,
        }
    }

    /// The relay the remote deliveries go through.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Tries every target of `message` that is neither delivered nor failed, one after another. The results are
    /// on disk before this returns; an Err means they could not be recorded, and the message stays as it was for
    /// a later attempt. (The daemon's scheduler runs the same steps, its deliveries in jobs per destination.)
    pub fn attempt(
        &self,
        message: &mut Queued,
        now: DateTime<Utc>,
    ) -> Result<Attempted, SpoolError> {
        let attempted = self.plan(message).and_then(|plan| {
            let deliveries = self.deliver_routes(message, plan.routes, &plan.headers);
            self.conclude(message, deliveries, &plan.headers, now)
        });
        body::close_file();
        attempted
    }

    /// The first step of an attempt: what it needs of the message's header section, and the targets still to
    /// deliver. The section is read from the spool only when the envelope's summary of it is not enough for the
    /// loop checks.
    pub fn plan(&self, message: &Queued) -> Result<Plan, SpoolError> {
        let headers = match message.envelope.headers.and_then(HeaderSection::summarized) {
            Some(summarized) => summarized,
            None => HeaderSection::Read(self.header_section(message, HEADER_LIMIT)?.into()),
        };
        Ok(Plan {
            headers,
            routes: self.pending_routes(message),
        })
    }

    /// The last step of an attempt, once every delivery of it is done: logs each outcome, queues the
    /// notification of failures, records the rest, and finishes the message when no target waits for a retry.
    pub fn conclude(
        &self,
        message: &mut Queued,
        deliveries: Vec<(Route, Delivery)>,
        headers: &HeaderSection,
        now: DateTime<Utc>,
    ) -> Result<Attempted, SpoolError> {
        let settled = self.settle(message, deliveries, headers, now)?;
        self.record(&[(&message.envelope.id, &settled)])?;
        Ok(settled.attempted(&message.envelope.id))
    }

    /// Concludes several attempts (see [`Deliverer::conclude`]) with one journal write for all of them, so that
    /// a worker concluding a job's messages waits for the disk once. Returns what came of each, in order; takes
    /// the deliveries out of `conclusions`.
    pub fn conclude_all(
        &self,
        conclusions: &mut [Conclusion],
        now: DateTime<Utc>,
    ) -> Vec<Result<Attempted, SpoolError>> {
        let settled: Vec<_> = conclusions
            .iter_mut()
            .map(|c| {
                let deliveries = std::mem::take(&mut c.deliveries);
                self.settle(&mut c.message, deliveries, &c.headers, now)
            })
            .collect();
        let shares: Vec<_> = conclusions
            .iter()
            .zip(&settled)
            .filter_map(|(c, settled)| Some((&c.message.envelope.id, settled.as_ref().ok()?)))
            .collect();
        let recorded = self.record(&shares);
        conclusions
            .iter()
            .zip(settled)
            .map(|(c, settled)| {
                let settled = settled?;
                recorded.clone()?;
                Ok(settled.attempted(&c.message.envelope.id))
            })
            .collect()
    }

    /// Logs each outcome of an attempt and queues the notification of its failures. The outcomes go into the
    /// message's state; what is not in the journal yet is returned for [`Deliverer::record`]. When the
    /// notification cannot be queued, only the deliveries go into the state.
    fn settle(
        &self,
        message: &mut Queued,
        deliveries: Vec<(Route, Delivery)>,
        headers: &HeaderSection,
        now: DateTime<Utc>,
    ) -> Result<Settled, SpoolError> {
        let schedule = Schedule::new(
            &self.config,
            message.envelope.arrival,
            message.state.attempts + 1,
            now,
        );
        let mut results = Vec::with_capacity(deliveries.len());
        let mut failures = Vec::new();
        for (route, delivery) in deliveries {
            let remote_reply = matches!(&delivery,
                Delivery::Temporary(p) | Delivery::Permanent(p) if p.remote_reply);
            let outcome = schedule.outcome(delivery);
            let envelope = &message.envelope;
            log_outcome(&envelope.id, &route, &outcome, envelope.arrival);
            if let Outcome::Failed { status, diagnostic } = &outcome {
                failures.push(Failure {
                    recipient: route.recipient.clone(),
                    status: status.clone(),
                    diagnostic: diagnostic.clone(),
                    remote: remote_reply,
                });
            }
            let journaled = outcome == Outcome::Delivered && journaled_at_once(&route);
            let result = RecipientResult {
                recipient: route.key,
                outcome,
            };
            results.push((result, journaled));
        }
        // The notification is queued before the failures are recorded: a crash in between sends it twice rather
        // than never.
        let bounces = match self.notify(message, &failures, headers, now) {
            Ok(bounces) => bounces.into_iter().collect(),
            Err(e) => {
                // What was delivered stays delivered in the message's state, so the retry does not deliver it
                // again (a mailbox would get a second copy, a remote a second message); the failures stay
                // pending, so that the retry queues their notification.
                let delivered = results.into_iter().map(|(r, _)| r);
                message
                    .state
                    .apply(delivered.filter(|r| r.outcome == Outcome::Delivered));
                return Err(e);
            }
        };
        // The outcomes go into the state before they are recorded: when the journal cannot be written (a full
        // disk), the scheduler keeps the message with that state, so the next attempt records and finishes what
        // was done instead of doing it again (a relayed copy cannot be taken back; the remote would get it twice).
        let next_try = results
            .iter()
            .filter_map(|(r, _)| match r.outcome {
                Outcome::Deferred { next_try, .. } => Some(next_try),
                _ => None,
            })
            .min();
        let unrecorded = results
            .iter()
            .filter(|(_, journaled)| !journaled)
            .map(|(r, _)| r.clone())
            .collect();
        message.state.apply(results.into_iter().map(|(r, _)| r));
        Ok(Settled {
            next_try,
            bounces,
            unrecorded,
        })
    }

    /// Records settled attempts in one durable write: each one's results not in the journal yet, and finishes
    /// the messages that no target waits for.
    fn record(&self, attempts: &[(&QueueId, &Settled)]) -> Result<(), SpoolError> {
        let shares: Vec<_> = attempts
            .iter()
            .map(|(id, settled)| AttemptRecord {
                id,
                results: &settled.unrecorded,
                finished: settled.next_try.is_none(),
            })
            .collect();
        self.spool.record_attempts(&shares)
    }

    /// The targets of the message's recipients that are neither delivered nor failed yet.
    fn pending_routes(&self, message: &Queued) -> Vec<Route> {
        let aliases = self.aliases.get();
        let router = Router {
            config: &self.config,
            aliases: &aliases,
        };
        router
            .routes(&message.envelope.recipients)
            .into_iter()
            .filter(|route| {
                !matches!(
                    message.state.outcome(&route.key),
                    Some(Outcome::Delivered | Outcome::Failed { .. })
                )
            })
            .collect()
    }

    /// Delivers to `routes`: the remote ones relayed together, one transaction per domain, the others one by
    /// one. A delivery to another server or a command is recorded in the journal as it happens (see
    /// [`journaled_at_once`]). Returns each route with what its transport said, in the order of `routes`.
    pub fn deliver_routes(
        &self,
        message: &Queued,
        routes: Vec<Route>,
        headers: &HeaderSection,
    ) -> Vec<(Route, Delivery)> {
        let mut relayed = self.relay_all(message, &routes);
        routes
            .into_iter()
            .map(|route| {
                step_route(&message.envelope.id, &route);
                let delivery = match relayed.remove(&route.key) {
                    Some(delivery) => delivery,
                    None => {
                        self.record_local(message, &route, self.deliver(message, &route, headers))
                    }
                };
                (route, delivery)
            })
            .collect()
    }

    /// Before this process delivers anything from `messages` (all the spool holds): tells the appends where the
    /// journal says an append was under way when the process that made it ended (see
    /// [`mbox::expect_after_crash`](crate::delivery::mbox::expect_after_crash)), so that the first append to each such mailbox looks there first.
    pub fn expect_after_crash(&self, messages: &[Queued]) {
        let announced = |message: &Queued| {
            let results = &message.state.results;
            results
                .iter()
                .any(|r| matches!(r.outcome, Outcome::Appending { .. }))
        };
        for message in messages.iter().filter(|m| announced(m)) {
            for route in self.pending_routes(message) {
                appending::expect_after_crash(&self.config, message, &route);
            }
        }
    }

    /// Delivers the parts of a job whose target is one mbox file: the routes that would loop are refused, the
    /// others appended together. Returns each part's routes with what became of them.
    pub fn deliver_to_mailbox(&self, parts: &[Part]) -> JobResults {
        let mut results: Vec<Vec<Option<Delivery>>> = Vec::with_capacity(parts.len());
        let mut members = Vec::new();
        let mut slots = Vec::new();
        for (p, part) in parts.iter().enumerate() {
            let mut deliveries = Vec::with_capacity(part.routes.len());
            for (r, route) in part.routes.iter().enumerate() {
                step_route(&part.message.envelope.id, route);
                let refused = self.refusal(route, &part.headers);
                if refused.is_none() {
                    members.push(ToMailbox {
                        message: &part.message,
                        route,
                    });
                    slots.push((p, r));
                }
                deliveries.push(refused);
            }
            results.push(deliveries);
        }
        // A `/file` alias may name a user's mailbox: each kind of file is opened its own way.
        let (users, files): (Vec<usize>, Vec<usize>) = (0..members.len()).partition(|&n| {
            matches!(
                appending::mailbox_of(members[n].route).1,
                MboxFile::Mailbox { .. }
            )
        });
        for group in [users, files] {
            let batch: Vec<ToMailbox> = group.iter().map(|&n| members[n]).collect();
            let appended = appending::append_all(&self.config, &self.spool, &batch);
            for (&n, delivery) in group.iter().zip(appended) {
                let (p, r) = slots[n];
                results[p][r] = Some(delivery);
            }
        }
        parts
            .iter()
            .zip(results)
            .map(|(part, deliveries)| {
                let routes = part.routes.iter().cloned();
                let deliveries = deliveries
                    .into_iter()
                    .map(|d| d.expect("every route has a delivery"));
                (
                    part.message.envelope.id.clone(),
                    routes.zip(deliveries).collect(),
                )
            })
            .collect()
    }

    /// Records a delivery to a command in the journal at once (see [`journaled_at_once`]). When that fails, the
    /// delivery counts as deferred.
    fn record_local(&self, message: &Queued, route: &Route, delivery: Delivery) -> Delivery {
        if delivery != Delivery::Done || !journaled_at_once(route) {
            return delivery;
        }
        match self
            .spool
            .record_delivered(&message.envelope.id, &[&route.key])
        {
            Ok(()) => Delivery::Done,
            Err(e) => Delivery::temporary(
                Detail::OtherMailSystem,
                format!("cannot record the delivery: {e}"),
            ),
        }
    }

    /// Sends the message on to the remote recipients among `routes`: one transaction per domain, for all its
    /// recipients. Returns the result for each remote route's key.
    fn relay_all(&self, message: &Queued, routes: &[Route]) -> HashMap<String, Delivery> {
        let mut outcomes = HashMap::new();
        for (domain, addresses) in remote_by_domain(routes) {
            let record = |taken: &[&String]| {
                if let Err(e) = self.spool.record_delivered(&message.envelope.id, taken) {
                    let taken: Vec<&str> = taken.iter().map(|address| address.as_str()).collect();
                    error!(
                        "{}: cannot record the delivery to {}: {e}",
                        message.envelope.id,
                        taken.join(", ")
                    );
                }
            };
            let results = self
                .relay
                .deliver(&self.spool, message, &domain, &addresses, &record);
            outcomes.extend(addresses.into_iter().zip(results));
        }
        outcomes
    }

    /// Delivers to one local target: a mailbox, a file or a command.
    fn deliver(&self, message: &Queued, route: &Route, headers: &HeaderSection) -> Delivery {
        if let Some(refused) = self.refusal(route, headers) {
            return refused;
        }
        match &route.destination {
            Destination::Command(command) => {
                let trace_headers = trace::trace_headers(
                    &message.envelope,
                    &self.config.hostname,
                    &route.recipient,
                );
                self.read_body(message, |body| {
                    Ok(pipe::deliver(
                        command,
                        trace_headers.as_bytes(),
                        body,
                        self.config.pipe_timeout,
                    ))
                })
                .unwrap_or_else(|failed| failed)
            }
            Destination::Mailbox { .. } | Destination::File(_) => {
                let mut appended = appending::append_all(
                    &self.config,
                    &self.spool,
                    &[ToMailbox { message, route }],
                );
                appended.pop().expect("one delivery for one message")
            }
            Destination::Remote(_) | Destination::Refused { .. } => {
                unreachable!("remote routes are relayed, refused ones answered before")
            }
        }
    }

    /// The failure of a delivery to `route` that is refused by routing, or that would be a mail loop.
    fn refusal(&self, route: &Route, headers: &HeaderSection) -> Option<Delivery> {
        if let Destination::Refused { detail, reason } = &route.destination {
            return Some(Delivery::permanent(*detail, reason.clone()));
        }
        loop_refusal(headers, &route.recipient)
    }

    /// Calls `read` with the queued message (see [`body::read`]); Err is the delivery's failure, the
    /// message's or `read`'s.
    fn read_body<R>(
        &self,
        message: &Queued,
        read: impl FnOnce(&mut dyn BufRead) -> Result<R, Delivery>,
    ) -> Result<R, Delivery> {
        body::read(&self.spool, message, read).unwrap_or_else(|e| {
            Err(Delivery::temporary(
                Detail::OtherMailSystem,
                format!("cannot read the queued message: {e}"),
            ))
        })
    }

    /// The message's header section, read from the spool: at most `limit` bytes, and never more than
    /// [`HEADER_LIMIT`].
    fn header_section(&self, message: &Queued, limit: u64) -> Result<Vec<u8>, SpoolError> {
        let limit = limit.min(HEADER_LIMIT);
        let mut start = Vec::with_capacity(limit.min(4096) as usize);
        body::read(&self.spool, message, |body| {
            body.take(limit).read_to_end(&mut start)
        })?
        .map_err(|source| SpoolError::Io {
            path: message.file.clone(),
            source,
        })?;
        start.truncate(headers::section(&start).len());
        Ok(start)
    }

    /// Queues the notification of `failures` (see [`bounce::queue`]), with the message's header section, read
    /// now if the attempt has only its summary.
    fn notify(
        &self,
        message: &Queued,
        failures: &[Failure],
        headers: &HeaderSection,
        now: DateTime<Utc>,
    ) -> Result<Option<Queued>, SpoolError> {
        if failures.is_empty() {
            return Ok(None);
        }
        let read;
        let section = match headers {
            HeaderSection::Read(section) => &section[..],
            // The summary gives the section's length: only that much is read.
            HeaderSection::Summarized(summary) => {
                read = self.header_section(message, summary.len)?;
                &read
            }
        };
        let hostname = &self.config.hostname;
        bounce::queue(&self.spool, hostname, message, failures, section, now)
    }
}

/// Whether a delivery to `route` is in the journal as soon as it is made: a relayed one when the other server
/// takes it, one to a command when the command ends. An append to a mailbox is announced in the journal before it
/// begins (so that a crash before its record is found out, see [`Deliverer::appended_before_a_crash`]), and is
/// recorded with the rest of the attempt.
fn journaled_at_once(route: &Route) -> bool {
    matches!(
        route.destination,
        Destination::Remote(_) | Destination::Command(_)
    )
}

/// The remote addresses among `routes`, grouped by their domain (lower-cased), in the order first met.
fn remote_by_domain(routes: &[Route]) -> Vec<(String, Vec<String>)> {
    let mut by_domain: Vec<(String, Vec<String>)> = Vec::new();
    for route in routes {
        let Destination::Remote(address) = &route.destination else {
            continue;
        };
        let domain = address
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_ascii_lowercase();
        match by_domain.iter_mut().find(|(d, _)| *d == domain) {
            Some((_, addresses)) => addresses.push(address.clone()),
            None => by_domain.push((domain, vec![address.clone()])),
        }
    }
    by_domain
}

/// The failure of a delivery to `recipient` that would be a mail loop, judged by the message's header section.
fn loop_refusal(headers: &HeaderSection, recipient: &str) -> Option<Delivery> {
    let why = match headers.find_loop(recipient)? {
        Loop::AlreadyDelivered => format!("mail forwarding loop: already delivered to {recipient}"),
        Loop::TooManyHops(n) => format!("mail forwarding loop: {n} Received headers"),
    };
    Some(Delivery::permanent(Detail::RoutingLoop, why))
}

/// Tells the event stream where a recipient goes; where an alias leads, that is a disclosure.
fn step_route(id: &QueueId, route: &Route) {
    let to = match &route.destination {
        Destination::Mailbox { path, .. } | Destination::File(path) => {
            format!("the mbox file {}", path.display())
        }
        Destination::Command(command) => format!("the command |{command}"),
        Destination::Remote(address) => format!("<{address}>, relayed by SMTP"),
        Destination::Refused { detail, reason } => {
            format!("nowhere: {} ({reason})", detail.meaning())
        }
    };
    let direct = route.key == route.recipient
        || route
            .recipient
            .rsplit_once('@')
            .is_some_and(|(local, _)| local.eq_ignore_ascii_case(&route.key));
    if direct {
        step!(id.as_str(), "{}: route: {to}", route.recipient);
    } else {
        step!(
            id.as_str(),
            Kind::Disclosure,
            "{}: route through an alias: {to}",
            route.recipient
        );
    }
}

/// An attempt's outcome in words, for the event stream.
struct Attempt<'a>(&'a Outcome);

impl fmt::Display for Attempt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Outcome::Delivered => f.write_str("delivered"),
            Outcome::Appending { offset, .. } => write!(f, "being appended at byte {offset}"),
            Outcome::Deferred {
                status,
                diagnostic,
                next_try,
            } => write!(
                f,
                "deferred ({status} {diagnostic}); next try at {}",
                next_try.format("%H:%M:%S")
            ),
            Outcome::Failed { status, diagnostic } => {
                write!(
                    f,
                    "failed ({status} {diagnostic}); the sender gets a bounce"
                )
            }
        }
    }
}

/// One line per delivery attempt of one target, as Postfix writes them; the delay counts from the arrival.
fn log_outcome(id: &QueueId, route: &Route, outcome: &Outcome, arrival: DateTime<Utc>) {
    step!(
        id.as_str(),
        Kind::Attempted {
            recipient: &route.recipient
        },
        "{}",
        Attempt(outcome)
    );
    let to = if route.key == route.recipient {
        format!("<{}>", route.key)
    } else {
        format!("<{}> (via <{}>)", route.key, route.recipient)
    };
    let delay = (Utc::now() - arrival)
        .num_microseconds()
        .unwrap_or(i64::MAX) as f64
        / 1e6;
    match outcome {
        Outcome::Delivered => info!("{id}: to={to}, delay={delay:.3}s, status=sent (delivered)"),
        Outcome::Appending { offset, .. } => {
            info!("{id}: to={to}, delay={delay:.3}s, status=appending (at byte {offset})")
        }
        Outcome::Deferred {
            status, diagnostic, ..
        } => {
            info!("{id}: to={to}, delay={delay:.3}s, status=deferred ({status} {diagnostic})")
        }
        Outcome::Failed { status, diagnostic } => {
            info!("{id}: to={to}, delay={delay:.3}s, status=bounced ({status} {diagnostic})")
        }
    }
}

#[cfg(test)]
#[path = "attempt_tests.rs"]
mod tests;
