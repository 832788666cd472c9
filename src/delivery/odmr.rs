//! On-Demand Mail Relay (RFC 2645), the provider's side: who may take the mail held for which domain, one
//! customer at a time per domain, and the held mail sent over the connection the customer turned with ATRN.
//! The mail waits in the queue like any other (the relay answers "held" for it while no connection is turned);
//! each message is attempted once more with the turned connection lent to the relay, so its deliveries are
//! recorded in the journal as every relayed delivery is.

use std::collections::HashSet;
use std::mem;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use log::{info, warn};

use crate::delivery::attempt::{Attempted, Deliverer};
use crate::delivery::scheduler::SchedulerHandle;
use crate::spool::Queued;
use crate::tls::Stream;

/// The daemon's ODMR service; shared by the sessions of the `odmr_listen` ports.
pub struct Odmr {
    deliverer: Arc<Deliverer>,
    scheduler: SchedulerHandle,
    /// Domains whose mail is being sent to a customer now.
    busy: Mutex<HashSet<String>>,
}

/// Why ATRN is refused.
pub enum Refusal {
    /// The user may not take the mail of this domain (it is not theirs in `odmr_domains`).
    NotAuthorized(String),
    /// ATRN without domains from a user who has none in `odmr_domains`.
    NoDomains,
    /// Another connection is taking the mail of this domain now.
    Busy(String),
    /// No mail waits for these domains.
    NoMail,
}

/// The mail of some domains, taken out of the schedule for one customer, and the right to send it: no other
/// connection gets these domains while it lives. Dropped unused, it gives the messages back.
pub struct Lease {
    odmr: Arc<Odmr>,
    domains: Vec<String>,
    messages: Vec<Queued>,
}

impl Odmr {
    pub fn new(deliverer: Arc<Deliverer>, scheduler: SchedulerHandle) -> Arc<Odmr> {
        Arc::new(Odmr {
            deliverer,
            scheduler,
            busy: Mutex::new(HashSet::new()),
        })
    }

    /// ATRN from the authenticated `user` for `requested` domains (none: every domain that is theirs): takes
    /// the domains and their waiting mail for this connection.
    pub fn lease(self: &Arc<Self>, user: &str, requested: &[String]) -> Result<Lease, Refusal> {
        let config = &self.deliverer.config;
        let domains: Vec<String> = if requested.is_empty() {
            let theirs: Vec<String> = config
                .odmr_domains
                .iter()
                .filter(|(_, owner)| owner == user)
                .map(|(domain, _)| domain.clone())
                .collect();
            if theirs.is_empty() {
                return Err(Refusal::NoDomains);
            }
            theirs
        } else {
            requested.iter().map(|d| d.to_ascii_lowercase()).collect()
        };
        if let Some(foreign) = domains.iter().find(|d| config.odmr_user(d) != Some(user)) {
            return Err(Refusal::NotAuthorized(foreign.clone()));
        }
        {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(taken) = domains.iter().find(|d| busy.contains(*d)) {
                return Err(Refusal::Busy(taken.clone()));
            }
            busy.extend(domains.iter().cloned());
        }
        let lease = Lease {
            odmr: Arc::clone(self),
            messages: self.scheduler.lend(&domains),
            domains,
        };
        if lease.messages.is_empty() {
            return Err(Refusal::NoMail);
        }
        Ok(lease)
    }
}

impl Lease {
    /// The domains, lower case.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// After the 250 to ATRN: becomes the client on `stream` (connected to `peer`), sends the held mail, and
    /// says QUIT. The messages go back to the scheduler with what their attempt did.
    pub fn provide(mut self, stream: Stream, peer: SocketAddr, session_id: &str) {
        let deliverer = &self.odmr.deliverer;
        let relay = deliverer.relay();
        let domains = self.domains.join(",");
        let connection = match relay.turn(stream, peer) {
            Ok(connection) => connection,
            Err(e) => {
                warn!("{session_id}: ATRN {domains}: the turned connection to {peer} failed: {e}");
                return;
            }
        };
        relay.lend(&self.domains, connection);
        let messages = mem::take(&mut self.messages);
        let count = messages.len();
        for mut message in messages {
            let attempted = deliverer.attempt(&mut message, Utc::now());
            self.odmr.scheduler.give_back(message, attempted);
        }
        if let Some(connection) = relay.take_back(&self.domains) {
            connection.quit();
        }
        info!(
            "{session_id}: ATRN {domains}: {count} messages tried over the turned connection to {peer}"
        );
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        for message in mem::take(&mut self.messages) {
            let untried = Attempted {
                next_try: Some(Utc::now()),
                bounces: Vec::new(),
            };
            self.odmr.scheduler.give_back(message, Ok(untried));
        }
        let mut busy = self.odmr.busy.lock().unwrap_or_else(|p| p.into_inner());
        for domain in &self.domains {
            busy.remove(domain);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::Config;
    use crate::delivery::aliases::Aliases;
    use crate::delivery::scheduler::Scheduler;
    use crate::reloadable::Reloadable;
    use crate::spool::{Envelope, Spool};
    use crate::testing::TempDir;

    /// A scheduler holding one message for example.org (alice's), and the ODMR service on it.
    fn provider(dir: &TempDir) -> (Scheduler, Arc<Odmr>) {
        let mut config = Config::builtin();
        config.spool_dir = dir.0.join("spool");
        config.odmr_domains = vec![
            ("example.org".into(), "alice".into()),
            ("example.net".into(), "alice".into()),
            ("bob.test".into(), "bob".into()),
        ];
        config.delivery_workers = 1;
        let spool = Arc::new(Spool::open(&config.spool_dir).unwrap());
        let recipients = vec!["carol@example.org".to_string()];
        let mut writer = spool.new_message(Envelope::new(
            "dave@example.com".into(),
            recipients,
            Utc::now(),
        ));
        writer.write(b"Subject: held\r\n\r\nHello.\r\n");
        let queued = spool.commit(writer).unwrap();
        let aliases = Arc::new(Reloadable::new(Aliases::parse("", "aliases").unwrap()));
        let deliverer = Arc::new(Deliverer::new(Arc::new(config), spool, aliases));
        let scheduler = Scheduler::start(Arc::clone(&deliverer), vec![queued]).unwrap();
        let odmr = Odmr::new(deliverer, scheduler.handle());
        (scheduler, odmr)
    }

    /// Asks until the message is back in the schedule (its first attempt, held, takes a moment).
    fn lease_within(odmr: &Arc<Odmr>, user: &str, domains: &[String]) -> Result<Lease, Refusal> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match odmr.lease(user, domains) {
                Err(Refusal::NoMail) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other,
            }
        }
    }

    #[test]
    fn a_lease_is_for_the_domains_owner_one_connection_at_a_time() {
        let dir = TempDir::new("odmr-lease");
        let (scheduler, odmr) = provider(&dir);
        let example = vec!["Example.ORG".to_string()];
        let theirs = |result: Result<Lease, Refusal>| match result {
            Err(Refusal::NotAuthorized(domain)) => domain,
            _ => panic!("not refused as another user's domain"),
        };
        assert_eq!(theirs(odmr.lease("bob", &example)), "example.org");
        let mixed = vec!["bob.test".to_string(), "example.net".to_string()];
        assert_eq!(theirs(odmr.lease("bob", &mixed)), "example.net");
        assert!(matches!(odmr.lease("carol", &[]), Err(Refusal::NoDomains)));
        assert!(matches!(odmr.lease("bob", &[]), Err(Refusal::NoMail)));

        let first = lease_within(&odmr, "alice", &example).ok().unwrap();
        assert_eq!(first.domains(), ["example.org"]);
        assert_eq!(first.messages.len(), 1);
        // Asking for all of alice's domains takes example.org too: busy while the first lease lives.
        assert!(matches!(odmr.lease("alice", &[]), Err(Refusal::Busy(d)) if d == "example.org"));
        drop(first);
        // The untried message went back to the schedule: the next ATRN gets it.
        let again = lease_within(&odmr, "alice", &[]).ok().unwrap();
        assert_eq!(again.domains(), ["example.org", "example.net"]);
        assert_eq!(again.messages.len(), 1);
        drop(again);
        scheduler.stop();
    }
}
