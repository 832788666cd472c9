//! The server's answers to the questions the protocol cannot answer itself: who is local, who may relay.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::delivery::local;
use crate::smtp::{Domain, ForwardPath, Mailbox, Policy, RcptVerdict, Reply};

/// The recipient policy for one client.
pub struct ServerPolicy {
    config: Arc<Config>,
    /// The client is in trusted_networks: it may relay.
    trusted: bool,
}

impl ServerPolicy {
    pub fn new(config: Arc<Config>, client: Option<IpAddr>) -> ServerPolicy {
        let trusted = client.is_some_and(|ip| config.is_trusted(ip));
        ServerPolicy { config, trusted }
    }

    fn is_local(&self, domain: &Domain) -> bool {
        match domain {
            Domain::Name(name) => self.config.is_local_domain(name),
            Domain::Ipv4(ip) => self.is_own_address(IpAddr::V4(*ip)),
            Domain::Ipv6(ip) => self.is_own_address(IpAddr::V6(*ip)),
        }
    }

    /// An address literal names this host when it is one we listen on, or loopback.
    fn is_own_address(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.config.listen.iter().any(|a| a.ip() == ip)
    }

    /// Parses a VRFY/EXPN argument: `user`, `user@domain` or `<user@domain>`.
    fn local_user_named<'a>(&self, query: &'a str) -> Lookup<'a> {
        let query = query.trim().trim_start_matches('<').trim_end_matches('>');
        match query.rsplit_once('@') {
            Some((_, domain)) if !self.config.is_local_domain(domain) => Lookup::Remote,
            Some((user, _)) => Lookup::Local(user),
            None => Lookup::Local(query),
        }
    }
}

enum Lookup<'a> {
    Local(&'a str),
    Remote,
}

impl Policy for ServerPolicy {
    fn recipient(&self, to: &ForwardPath) -> RcptVerdict {
        let mailbox: &Mailbox = match to {
            ForwardPath::Postmaster => return RcptVerdict::Accept,
            ForwardPath::Mailbox(m) => m,
        };
        if self.is_local(&mailbox.domain) {
            if mailbox.is_postmaster() || local::user_exists(&self.config, &mailbox.local) {
                RcptVerdict::Accept
            } else {
                RcptVerdict::UnknownUser
            }
        } else if self.trusted {
            RcptVerdict::Accept
        } else {
            RcptVerdict::RelayDenied
        }
    }

    fn vrfy(&self, query: &str) -> Reply {
        match self.local_user_named(query) {
            Lookup::Local(user) if local::user_exists(&self.config, user) => {
                let name = local::mailbox_name(user).unwrap_or_default();
                Reply::new(250, "2.1.5", format!("<{name}@{}>", self.config.hostname))
            }
            Lookup::Local(user) => Reply::new(550, "5.1.1", format!("<{user}>: user unknown")),
            Lookup::Remote => Reply::new(
                252,
                "2.1.5",
                "Cannot VRFY a remote user, but will accept the message and attempt delivery",
            ),
        }
    }

    fn expn(&self, list: &str) -> Reply {
        self.vrfy(list)
    }

    fn etrn(&self, domain: &str) -> Reply {
        Reply::new(
            458,
            "4.3.0",
            format!(
                "Unable to queue messages for node {domain}: remote delivery is not available yet"
            ),
        )
    }
}
