//! One delivery attempt of one queued message: route every recipient, deliver to each target not yet done,
//! notify the sender of failures, record the results, and finish the message when nothing is left to do.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufReader, Read};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use log::{error, info, warn};

use crate::config::Config;
use crate::delivery::aliases::{AliasError, Aliases};
use crate::delivery::bounce::{self, Failure};
use crate::delivery::local::{Destination, Route, Router};
use crate::delivery::mbox::{self, MboxSettings};
use crate::delivery::pipe;
use crate::delivery::relay::Relay;
use crate::delivery::trace::{self, Loop};
use crate::delivery::transport::{Delivery, Problem};
use crate::reloadable::Reloadable;
use crate::smtp::Protocol;
use crate::spool::{self, Outcome, QueueId, Queued, RecipientResult, Spool, SpoolError};

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

    /// Tries every target of `message` that is neither delivered nor failed. The results are on disk before this
    /// returns; an Err means they could not be recorded, and the message stays as it was for a later attempt.
    pub fn attempt(
        &self,
        message: &mut Queued,
        now: DateTime<Utc>,
    ) -> Result<Attempted, SpoolError> {
        let envelope = &message.envelope;
        let router = Router {
            config: &self.config,
            aliases: &self.aliases.get(),
        };
        let headers = self.header_section(message)?;
        let expired = now
            .signed_duration_since(envelope.arrival)
            .to_std()
            .unwrap_or_default()
            >= self.config.queue_lifetime;
        let attempts = message.state.attempts + 1;
        let mut results = Vec::new();
        let mut failures = Vec::new();
        let mut next_try = None;
        let mut finished = true;
        let pending: Vec<Route> = router
            .routes(&envelope.recipients)
            .into_iter()
            .filter(|route| {
                !matches!(
                    message.state.outcome(&route.key),
                    Some(Outcome::Delivered | Outcome::Failed { .. })
                )
            })
            .collect();
        let mut relayed = self.relay_all(message, &pending);
        let retry_at = now + backoff(&self.config, attempts);
        for route in pending {
            let delivery = match relayed.remove(&route.key) {
                Some(delivery) => delivery,
                None => self.deliver(message, &route, &headers),
            };
            let remote_reply = matches!(&delivery,
                Delivery::Temporary(p) | Delivery::Permanent(p) if p.remote_reply);
            let outcome = self.outcome(delivery, expired, retry_at);
            if let Outcome::Deferred { next_try: at, .. } = &outcome {
                next_try = Some(next_try.map_or(*at, |t: DateTime<Utc>| t.min(*at)));
                finished = false;
            }
            log_outcome(&envelope.id, &route, &outcome, envelope.arrival);
            // Relayed deliveries were recorded as soon as the other server took them.
            let remote = matches!(route.destination, Destination::Remote(_));
            if outcome == Outcome::Delivered && !remote {
                self.spool.record_delivered(&envelope.id, &route.key)?;
            }
            if let Outcome::Failed { status, diagnostic } = &outcome {
                failures.push(Failure {
                    recipient: route.recipient.clone(),
                    status: status.clone(),
                    diagnostic: diagnostic.clone(),
                    remote: remote_reply,
                });
            }
            results.push(RecipientResult {
                recipient: route.key,
                outcome,
            });
        }
        // Deliveries are recorded as they happen. The notification is queued before the failures are recorded:
        // a crash in between sends it twice rather than never.
        let bounces = self
            .notify(message, &failures, &headers, now)?
            .into_iter()
            .collect();
        let unfinished: Vec<RecipientResult> = results
            .iter()
            .filter(|r| r.outcome != Outcome::Delivered)
            .cloned()
            .collect();
        if !unfinished.is_empty() {
            self.spool.record(&envelope.id, &unfinished)?;
        }
        if finished {
            self.spool.finish(&envelope.id)?;
            info!("{}: removed", envelope.id);
        }
        message.state.apply(results);
        Ok(Attempted { next_try, bounces })
    }

    /// The journal's record of a delivery: a temporary failure is tried again at `retry_at`, or given up once
    /// the message has been queued longer than queue_lifetime (`expired`).
    fn outcome(&self, delivery: Delivery, expired: bool, retry_at: DateTime<Utc>) -> Outcome {
        match delivery {
            Delivery::Done => Outcome::Delivered,
            Delivery::Permanent(Problem {
                status, diagnostic, ..
            }) => Outcome::Failed { status, diagnostic },
            Delivery::Temporary(Problem { diagnostic, .. }) if expired => {
                let lifetime = crate::config::format_duration(self.config.queue_lifetime);
                // RFC 3463 4.4.7: delivery time expired; the last error says why.
                Outcome::Failed {
                    status: "4.4.7".to_string(),
                    diagnostic: format!("{diagnostic} (gave up: queued longer than {lifetime})"),
                }
            }
            Delivery::Temporary(Problem {
                status, diagnostic, ..
            }) => Outcome::Deferred {
                status,
                diagnostic,
                next_try: retry_at,
            },
        }
    }

    /// Sends the message on to the remote recipients among `routes`: one transaction per domain, for all its
    /// recipients. Returns the result for each remote route's key.
    fn relay_all(&self, message: &Queued, routes: &[Route]) -> HashMap<String, Delivery> {
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
        let mut outcomes = HashMap::new();
        for (domain, addresses) in by_domain {
            let record = |taken: &[&String]| {
                for address in taken {
                    if let Err(e) = self.spool.record_delivered(&message.envelope.id, address) {
                        error!(
                            "{}: cannot record the delivery to {address}: {e}",
                            message.envelope.id
                        );
                    }
                }
            };
            let results = self
                .relay
                .deliver(&self.spool, message, &domain, &addresses, &record);
            outcomes.extend(addresses.into_iter().zip(results));
        }
        outcomes
    }

    fn deliver(&self, message: &Queued, route: &Route, headers: &[u8]) -> Delivery {
        match &route.destination {
            Destination::Refused { status, reason } => {
                return Delivery::permanent(*status, reason.clone());
            }
            Destination::Remote(_) => unreachable!("remote routes are relayed"),
            Destination::Mailbox { .. } | Destination::File(_) | Destination::Command(_) => {}
        }
        match trace::find_loop(headers, &route.recipient) {
            Some(Loop::AlreadyDelivered) => {
                return Delivery::permanent(
                    "5.4.6",
                    format!(
                        "mail forwarding loop: already delivered to {}",
                        route.recipient
                    ),
                );
            }
            Some(Loop::TooManyHops(n)) => {
                return Delivery::permanent(
                    "5.4.6",
                    format!("mail forwarding loop: {n} Received headers"),
                );
            }
            None => {}
        }
        let envelope = &message.envelope;
        let trace_headers = trace::trace_headers(envelope, &self.config.hostname, &route.recipient);
        match &route.destination {
            Destination::Command(command) => match self.body(message) {
                Ok(mut body) => pipe::deliver(command, trace_headers.as_bytes(), &mut body),
                Err(outcome) => outcome,
            },
            Destination::Mailbox { path, owner } => {
                self.append(path, *owner, message, &route.key, &trace_headers)
            }
            Destination::File(path) => self.append(path, None, message, &route.key, &trace_headers),
            Destination::Remote(_) | Destination::Refused { .. } => unreachable!("handled above"),
        }
    }

    fn body(&self, message: &Queued) -> Result<BufReader<impl Read + use<>>, Delivery> {
        match self.spool.read_body(message) {
            Ok(body) => Ok(BufReader::with_capacity(64 * 1024, body)),
            Err(e) => Err(Delivery::temporary(
                "4.3.0",
                format!("cannot read the queued message: {e}"),
            )),
        }
    }

    fn append(
        &self,
        path: &std::path::Path,
        owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
        message: &Queued,
        key: &str,
        trace_headers: &str,
    ) -> Delivery {
        let settings = MboxSettings {
            lock_timeout: self.config.mailbox_lock_timeout,
            stale_lock_age: self.config.stale_lock_age,
            flock: self.config.mailbox_flock,
            max_mailbox_size: self.config.mailbox_size_limit,
        };
        let envelope = &message.envelope;
        let from = envelope.sender.as_str();
        let id = &envelope.id;
        // An append announced before a crash may have happened: then it must not happen twice.
        if let Some(&Outcome::Appending { offset, len }) = message.state.outcome(key) {
            match mbox::appended_whole(path, &settings, offset, len, id.as_str()) {
                Ok(true) => {
                    info!(
                        "{id}: {key}: found whole in {} after a restart",
                        path.display()
                    );
                    return Delivery::Done;
                }
                Ok(false) => {}
                Err(e) => return e.into(),
            }
        }
        let trace = trace_headers.as_bytes();
        let len = match self
            .body(message)
            .map(|mut body| mbox::len_in_mbox(path, from, envelope.arrival, trace, &mut body))
        {
            Ok(Ok(len)) => len,
            Ok(Err(e)) => return e.into(),
            Err(delivery) => return delivery,
        };
        let mut body = match self.body(message) {
            Ok(body) => body,
            Err(delivery) => return delivery,
        };
        let mut announce = |offset| {
            self.spool
                .record_appending(id, key, offset, len)
                .map_err(|e| {
                    mbox::MboxError::temporary("4.3.0", format!("cannot record the delivery: {e}"))
                })
        };
        let message = mbox::Message {
            sender: from,
            arrival: envelope.arrival,
            trace_headers: trace,
            body: &mut body,
            len,
        };
        match mbox::append(path, owner, &settings, message, &mut announce) {
            Ok(()) => Delivery::Done,
            Err(e) => e.into(),
        }
    }

    /// The message's header section, read from the spool (at most [`HEADER_LIMIT`] bytes).
    fn header_section(&self, message: &Queued) -> Result<Vec<u8>, SpoolError> {
        let mut start = Vec::with_capacity(4096);
        self.spool
            .read_body(message)?
            .take(HEADER_LIMIT)
            .read_to_end(&mut start)
            .map_err(|source| SpoolError::Io {
                path: message.file.clone(),
                source,
            })?;
        let headers = bounce::header_section(&start).len();
        start.truncate(headers);
        Ok(start)
    }

    /// Queues a notification of `failures` for the sender (or postmaster, for a message with the null sender).
    /// A notification about a notification is never sent: it is dropped with a log line.
    fn notify(
        &self,
        message: &Queued,
        failures: &[Failure],
        headers: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<Queued>, SpoolError> {
        if failures.is_empty() {
            return Ok(None);
        }
        let envelope = &message.envelope;
        let hostname = &self.config.hostname;
        let double_bounce = bounce::double_bounce_sender(hostname);
        if envelope.sender == double_bounce {
            warn!(
                "{}: undeliverable notification to postmaster dropped",
                envelope.id
            );
            return Ok(None);
        }
        let (to, sender) = if envelope.sender.is_empty() {
            ("postmaster".to_string(), double_bounce)
        } else {
            (envelope.sender.clone(), String::new())
        };
        let text = bounce::build(&bounce::Report {
            hostname,
            queue_id: envelope.id.as_str(),
            arrival: envelope.arrival,
            now,
            to: &to,
            failures,
            original_headers: headers,
        });
        let mut writer = self.spool.new_message(spool::Envelope {
            id: QueueId::default(),
            arrival: now,
            client: None,
            helo: hostname.clone(),
            protocol: Protocol::Local,
            sender,
            recipients: vec![to.clone()],
            body: None,
            smtputf8: false,
            declared_size: None,
        });
        writer.write(&text);
        let queued = self.spool.commit(writer)?;
        info!(
            "{}: sender non-delivery notification: {} to <{to}>",
            envelope.id, queued.envelope.id
        );
        Ok(Some(queued))
    }
}

/// The wait before attempt number `attempts + 1`: retry_first, doubling, at most retry_max.
pub fn backoff(config: &Config, attempts: u32) -> chrono::Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(30));
    let wait = config
        .retry_first
        .saturating_mul(factor)
        .min(config.retry_max);
    chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}

/// One line per delivery attempt of one target, as Postfix writes them; the delay counts from the arrival.
fn log_outcome(id: &QueueId, route: &Route, outcome: &Outcome, arrival: DateTime<Utc>) {
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
