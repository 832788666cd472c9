//! The unit of delivery work: a job is one destination and one or more messages for it. The scheduler keeps a
//! queue of waiting deliveries per destination, each with its own limit of jobs at once, and hands a job to a
//! delivery worker only when the destination has room, so a worker never waits for a turn while holding its
//! thread. doc/architecture.md ("Delivery jobs") describes the scheduling.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::delivery::local::{Destination, Route};
use crate::delivery::trace::HeaderSection;
use crate::delivery::transport::Delivery;
use crate::spool::{QueueId, Queued};

/// The most messages one job for a command or another host carries: enough to share a connection, few enough
/// that the first of them need not wait long for its result while the others go one after another.
pub const MESSAGES_PER_JOB: usize = 32;

/// The most messages one mailbox job carries, and one batch of plans or conclusions: appending a message costs
/// microseconds, so the first waits little for the rest, while the job's locks and its three syncs (and a batch's
/// one journal write) are shared by all of them. Under a stream of mail into one mailbox, jobs of 128 cost the
/// delivery workers a quarter less CPU a message than jobs of 32 (bench/, "end to end into one mailbox").
pub const MESSAGES_PER_BATCH: usize = 128;

/// How soon after one of a mailbox's jobs starts the next one may, unless a whole job's worth of messages
/// ([`MESSAGES_PER_BATCH`]) is waiting. While mail for one mailbox streams in, its messages then gather into a
/// job every 20 ms that shares the locks and the three syncs of a job (announcement, mailbox, results) among
/// up to 128 of them, instead of a job of a few every couple of milliseconds, each with its own three. A message
/// for a mailbox that had no job in the last 20 ms goes at once.
pub const MAILBOX_PACE: Duration = Duration::from_millis(20);

/// Where deliveries go, as the scheduler counts them: each target has its own queue and limit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// An mbox file: a user's mailbox or a `/file` alias target. One job at a time: it appends all its messages
    /// under one taking of the locks with one fdatasync, while the messages that arrive meanwhile gather for the
    /// next one (jobs side by side would only wait for each other's locks).
    Mailbox(PathBuf),
    /// A `|command` alias target. One job at a time.
    Command(String),
    /// Another host: the recipient's domain, or the smarthost when all mail goes there. `remote_concurrency`
    /// jobs at a time.
    Remote(String),
    /// Recipients refused by routing: answered without any I/O, no limit.
    Refused,
}

impl Target {
    /// The target of a route.
    pub fn of(route: &Route, config: &Config) -> Target {
        match &route.destination {
            Destination::Mailbox { path, .. } | Destination::File(path) => {
                Target::Mailbox(path.clone())
            }
            Destination::Command(command) => Target::Command(command.clone()),
            Destination::Remote(address) => {
                let domain = address.rsplit_once('@').map_or("", |(_, domain)| domain);
                // Mail held for ATRN waits for its own customer, never for the smarthost.
                Target::Remote(match &config.smarthost {
                    Some(smarthost) if config.odmr_user(domain).is_none() => {
                        smarthost.to_ascii_lowercase()
                    }
                    _ => domain.to_ascii_lowercase(),
                })
            }
            Destination::Refused { .. } => Target::Refused,
        }
    }

    /// How many jobs for this target may run at once.
    pub fn limit(&self, config: &Config) -> usize {
        match self {
            Target::Mailbox(_) | Target::Command(_) => 1,
            Target::Remote(_) => config.remote_concurrency.max(1),
            Target::Refused => usize::MAX,
        }
    }

    /// How soon after one of its jobs starts the next may, unless a whole job is waiting: see
    /// [`MAILBOX_PACE`].
    pub fn pace(&self) -> Option<Duration> {
        matches!(self, Target::Mailbox(_)).then_some(MAILBOX_PACE)
    }

    /// The most messages one of its jobs carries.
    pub fn most_per_job(&self) -> usize {
        match self {
            Target::Mailbox(_) => MESSAGES_PER_BATCH,
            Target::Command(_) | Target::Remote(_) | Target::Refused => MESSAGES_PER_JOB,
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Target::Remote(_))
    }
}

/// One message's part of a job: the routes of the message that go to the job's target.
pub struct Part {
    pub message: Arc<Queued>,
    /// The message's header section, for loop checks.
    pub headers: HeaderSection,
    pub routes: Vec<Route>,
}

/// A job: one target, one or more messages for it. A worker runs its parts one after another and returns
/// what each delivery gave, message by message.
pub struct Job {
    pub target: Target,
    pub parts: Vec<Part>,
}

/// What a job did: for each message in it, each route with its transport's result.
pub type JobResults = Vec<(QueueId, Vec<(Route, Delivery)>)>;

/// Splits a message's routes by target, targets in the order of their first route.
pub fn by_target(routes: Vec<Route>, config: &Config) -> Vec<(Target, Vec<Route>)> {
    let mut groups: Vec<(Target, Vec<Route>)> = Vec::new();
    for route in routes {
        let target = Target::of(&route, config);
        match groups.iter_mut().find(|(t, _)| *t == target) {
            Some((_, routes)) => routes.push(route),
            None => groups.push((target, vec![route])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(key: &str, destination: Destination) -> Route {
        Route {
            recipient: key.to_string(),
            key: key.to_string(),
            destination,
        }
    }

    #[test]
    fn routes_group_by_mailbox_domain_or_smarthost() {
        let mut config = Config::builtin();
        let routes = || {
            vec![
                route("a@Example.org", Destination::Remote("a@Example.org".into())),
                route("bob", Destination::File("/m/bob".into())),
                route("b@example.org", Destination::Remote("b@example.org".into())),
                route("c@other.test", Destination::Remote("c@other.test".into())),
                route("|x", Destination::Command("x".into())),
            ]
        };
        let groups: Vec<_> = by_target(routes(), &config)
            .into_iter()
            .map(|(target, routes)| (target, routes.len()))
            .collect();
        assert_eq!(
            groups,
            [
                (Target::Remote("example.org".into()), 2),
                (Target::Mailbox("/m/bob".into()), 1),
                (Target::Remote("other.test".into()), 1),
                (Target::Command("x".into()), 1),
            ]
        );
        config.smarthost = Some("Relay.test:2525".into());
        let remote: Vec<_> = by_target(routes(), &config)
            .into_iter()
            .filter(|(target, _)| target.is_remote())
            .map(|(target, routes)| (target, routes.len()))
            .collect();
        assert_eq!(remote, [(Target::Remote("relay.test:2525".into()), 3)]);
        config.odmr_domains = vec![("other.test".into(), "carol".into())];
        let remote: Vec<_> = by_target(routes(), &config)
            .into_iter()
            .filter(|(target, _)| target.is_remote())
            .map(|(target, routes)| (target, routes.len()))
            .collect();
        assert_eq!(
            remote,
            [
                (Target::Remote("relay.test:2525".into()), 2),
                (Target::Remote("other.test".into()), 1)
            ]
        );
        assert_eq!(Target::Remote("x".into()).limit(&config), 2);
        assert_eq!(Target::Mailbox("/m/bob".into()).limit(&config), 1);
    }
}
