//! The server's answers to the questions the protocol cannot answer itself: who is local, who may relay, and
//! what VRFY, EXPN, ETRN and ATRN say.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::auth::AuthUsers;
use crate::config::{Config, LocalUsers};
use crate::delivery::aliases::{Aliases, Target};
use crate::delivery::odmr::{Lease, Odmr, Refusal};
use crate::delivery::scheduler::SchedulerHandle;
use crate::delivery::{local, terminal};
use crate::smtp::{
    CANNOT_EXPN_REMOTE, CANNOT_VRFY_REMOTE, Detail, ETRN_NOT_PERMITTED, ETRN_TOO_OFTEN,
    EXPN_DISABLED, Echo, ForwardPath, HostNameRules, Policy, RcptVerdict, Reply, ReversePath,
    check_host_name,
};
use crate::{spool, step};
use log::warn;

/// The recipient policy for one client.
pub struct ServerPolicy {
    /// The session's id, which names its events.
    session: String,
    config: Arc<Config>,
    aliases: Arc<Aliases>,
    auth_users: Arc<AuthUsers>,
    /// The client is in trusted_networks, or a local program: it may relay and use ETRN.
    trusted: bool,
    /// The client's address (None for a local program), for the ETRN limit.
    ip: Option<IpAddr>,
    /// What the daemon's sessions share; None in inetd mode.
    daemon: Option<Daemon>,
}

/// What a session of the daemon may ask of it.
pub struct Daemon {
    pub scheduler: SchedulerHandle,
    /// The ETRN limit all its sessions share.
    pub etrn_limit: Arc<EtrnLimit>,
    /// On an ODMR port: the ODMR service, and where an accepted ATRN leaves its lease for the connection to
    /// carry out.
    pub odmr: Option<(Arc<Odmr>, TurnSlot)>,
}

/// Where the policy leaves the mail an accepted ATRN set aside, for the connection to send.
pub type TurnSlot = Arc<Mutex<Option<Lease>>>;

/// How often one client address may have the queue run with ETRN: each run costs the server a look through
/// the queue and delivery attempts, so a client must not be able to keep it doing that.
pub const ETRN_INTERVAL: Duration = Duration::from_secs(10);

/// When each client address last ran ETRN; shared by all sessions of the daemon.
#[derive(Default)]
pub struct EtrnLimit(Mutex<HashMap<Option<IpAddr>, Instant>>);

impl EtrnLimit {
    /// Whether `client` may run ETRN at `now`; if so, the run is counted.
    pub fn allow(&self, client: Option<IpAddr>, now: Instant) -> bool {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        last.retain(|_, at| now.saturating_duration_since(*at) < ETRN_INTERVAL);
        match last.entry(client) {
            Entry::Occupied(_) => false,
            Entry::Vacant(entry) => {
                entry.insert(now);
                true
            }
        }
    }
}

/// What a VRFY or EXPN argument names.
enum Lookup {
    /// An alias here (lower-cased name).
    Alias(String),
    /// A user with a mailbox here.
    User(String),
    /// A local name that is neither.
    Unknown(String),
    Remote,
}

impl ServerPolicy {
    pub fn new(
        session: &str,
        config: Arc<Config>,
        aliases: Arc<Aliases>,
        auth_users: Arc<AuthUsers>,
        trusted: bool,
        ip: Option<IpAddr>,
        daemon: Option<Daemon>,
    ) -> ServerPolicy {
        ServerPolicy {
            session: session.to_string(),
            config,
            aliases,
            auth_users,
            trusted,
            ip,
            daemon,
        }
    }

    /// Whether a local part names someone here: a user, an alias, or one of the names that always resolve.
    fn knows(&self, local_part: &str) -> bool {
        let name = local_part.to_lowercase();
        local::ALWAYS_LOCAL.contains(&name.as_str())
            || self.aliases.contains(&name)
            || local::user_exists(&self.config, &name)
    }

    /// Reads a VRFY/EXPN argument: `user`, `user@domain` or `<user@domain>`.
    fn lookup(&self, query: &str) -> Lookup {
        let query = query.trim().trim_start_matches('<').trim_end_matches('>');
        let user = match query.rsplit_once('@') {
            Some((_, domain)) if !self.config.is_local_domain(domain) => return Lookup::Remote,
            Some((user, _)) => user,
            None => query,
        };
        let name = user.to_lowercase();
        if self.aliases.contains(&name) {
            Lookup::Alias(name)
        } else if self.knows(&name) {
            Lookup::User(name)
        } else {
            Lookup::Unknown(user.to_string())
        }
    }

    fn address(&self, name: &str) -> String {
        format!("<{name}@{}>", self.config.hostname)
    }

    /// The verdict on a recipient in a local domain, and why.
    fn local_recipient(&self, local_part: &str, domain: &str) -> RcptVerdict {
        let scope = self.session.as_str();
        let name = local_part.to_lowercase();
        if self.aliases.contains(&name) {
            step!(
                scope,
                "{domain} is a local domain and {name} is an alias here"
            );
            step!(
                scope,
                Kind::Disclosure,
                "alias {name} expands to {}",
                self.members(&name).join(", ")
            );
        } else if local::ALWAYS_LOCAL.contains(&name.as_str()) {
            step!(
                scope,
                "{name} always reaches the administrator (root), as RFC 2142 asks"
            );
        } else if local::user_exists(&self.config, &name) {
            step!(
                scope,
                "{domain} is a local domain and {name} is a local user ({})",
                self.users_source()
            );
        } else {
            step!(
                scope,
                "{domain} is a local domain, but {name} is no user here ({})",
                self.users_source()
            );
            return RcptVerdict::UnknownUser;
        }
        RcptVerdict::Accept
    }

    /// Where local users come from, in words.
    fn users_source(&self) -> &'static str {
        match self.config.local_users {
            LocalUsers::System => "local_users = \"system\": the Unix accounts",
            LocalUsers::Any => "local_users = \"any\": every name is a user",
            LocalUsers::List(_) => "local_users lists the users",
        }
    }

    /// An alias's members, as EXPN shows them.
    fn members(&self, name: &str) -> Vec<String> {
        self.aliases
            .expand(name)
            .targets
            .into_iter()
            .map(|target| match target {
                Target::Local(user) => self.address(&user),
                Target::Address(address) => format!("<{address}>"),
                Target::Command(_) | Target::File(_) => format!("{name} (delivered by a program)"),
            })
            .collect()
    }
}

impl Policy for ServerPolicy {
    fn authenticate(&self, user: &str, password: &[u8]) -> bool {
        self.auth_users.check(user, password)
    }

    /// With `submission_sender_check`, the sender's local part must be the user's name (any case) at a local
    /// domain.
    fn may_send_as(&self, user: &str, sender: &ReversePath) -> bool {
        if !self.config.submission_sender_check {
            return true;
        }
        match sender {
            ReversePath::Mailbox(mailbox) => {
                mailbox.local.eq_ignore_ascii_case(user)
                    && local::is_local(&self.config, &mailbox.domain)
            }
            ReversePath::Null => false,
        }
    }

    /// Below `spool_min_free` the journal, delivery records and bounces still have room, so that what is queued
    /// can leave and free the disk.
    fn spool_has_room(&self, size: u64) -> bool {
        let reserve = self.config.spool_min_free;
        if reserve == 0 {
            return true;
        }
        match spool::has_room(&self.config.spool_dir, reserve.saturating_add(size)) {
            Err(free) => {
                warn!(
                    "{}: MAIL refused: {} KiB free for the spool, which keeps {} KiB (spool_min_free) besides the \
                     {size} bytes declared",
                    self.session,
                    free / 1024,
                    reserve / 1024
                );
                false
            }
            Ok(()) => true,
        }
    }

    fn terminal_delivery(&self) -> bool {
        self.config.terminal_delivery
    }

    fn terminal_recipient(&self, to: &ForwardPath, terminal_only: bool) -> Result<(), Reply> {
        let user = match to {
            ForwardPath::Postmaster => "root".to_string(),
            ForwardPath::Mailbox(m) if local::is_local(&self.config, &m.domain) => {
                m.local.to_lowercase()
            }
            ForwardPath::Mailbox(_) => {
                return Err(Reply::new(
                    550,
                    Detail::BadDestinationSystem,
                    format!("<{to}>: SEND, SOML and SAML deliver to users of this host only"),
                ));
            }
        };
        if !terminal_only {
            return Ok(());
        }
        let terminals = terminal::writable_sessions(&self.config.utmp_file, &user);
        if terminals.is_empty() {
            step!(
                self.session.as_str(),
                "{user} has no login session in {} on a terminal that accepts messages (mesg y)",
                self.config.utmp_file.display()
            );
            return Err(Reply::new(
                450,
                Detail::MailboxDisabled,
                format!("<{to}>: not logged in, or not accepting messages (mesg n)"),
            ));
        }
        step!(
            self.session.as_str(),
            "{user} is logged in on {} terminal(s) that accept messages",
            terminals.len()
        );
        Ok(())
    }

    /// Narration is for clients that may relay; it discloses aliases only where EXPN would.
    fn narration(&self, authenticated: bool) -> Option<bool> {
        (self.trusted || authenticated).then_some(self.config.expn)
    }

    fn recipient(&self, to: &ForwardPath) -> RcptVerdict {
        let scope = self.session.as_str();
        let mailbox = match to {
            ForwardPath::Postmaster => {
                step!(
                    scope,
                    "mail to postmaster is always accepted (RFC 5321 §4.5.1)"
                );
                return RcptVerdict::Accept;
            }
            ForwardPath::Mailbox(m) => m,
        };
        let domain = &mailbox.domain;
        if local::is_local(&self.config, domain) {
            self.local_recipient(&mailbox.local, &domain.to_string())
        } else if self.trusted {
            step!(
                scope,
                "{domain} is not a local domain; the client may relay (trusted_networks, or a local program)"
            );
            RcptVerdict::Accept
        } else if self.config.is_relay_domain(&domain.to_string()) {
            step!(
                scope,
                "{domain} is not local, but in relay_domains: accepted, to be passed on"
            );
            RcptVerdict::Accept
        } else if let Some(user) = self.config.odmr_user(&domain.to_string()) {
            step!(
                scope,
                "{domain} is in odmr_domains: accepted, and held until {user} asks for it with ATRN"
            );
            RcptVerdict::Accept
        } else {
            step!(
                scope,
                "{domain} is not a local domain, and the client is not in trusted_networks: relaying denied"
            );
            RcptVerdict::RelayDenied
        }
    }

    fn vrfy(&self, query: &str) -> Reply {
        match self.lookup(query) {
            Lookup::User(name) | Lookup::Alias(name) => {
                Reply::new(250, Detail::DestinationValid, self.address(&name))
            }
            Lookup::Unknown(user) => Reply::new(
                550,
                Detail::BadDestinationMailbox,
                format!("<{}>: no such user here", Echo(&user)),
            ),
            Lookup::Remote => CANNOT_VRFY_REMOTE,
        }
    }

    fn expn(&self, list: &str) -> Reply {
        if !self.config.expn {
            return EXPN_DISABLED;
        }
        match self.lookup(list) {
            Lookup::Alias(name) => {
                let members: Vec<_> = self.members(&name).into_iter().map(Into::into).collect();
                if members.is_empty() {
                    return Reply::new(
                        550,
                        Detail::BadDestinationMailbox,
                        format!("<{name}>: the list is empty"),
                    );
                }
                Reply::lines(250, Some(Detail::DestinationValid), members)
            }
            Lookup::User(name) => Reply::new(250, Detail::DestinationValid, self.address(&name)),
            Lookup::Unknown(user) => Reply::new(
                550,
                Detail::BadDestinationMailbox,
                format!("<{}>: no such list here", Echo(&user)),
            ),
            Lookup::Remote => CANNOT_EXPN_REMOTE,
        }
    }

    /// ATRN (RFC 2645): the mail waiting for the user's domains is set aside for this connection.
    fn atrn(&self, user: &str, domains: &[String]) -> Result<(), Reply> {
        let Some((odmr, slot)) = self.daemon.as_ref().and_then(|d| d.odmr.as_ref()) else {
            return Err(Reply::fixed(
                451,
                Detail::OtherMailSystem,
                "Unable to process ATRN request now: no queue runner in this mode",
            ));
        };
        let lease = odmr.lease(user, domains).map_err(|refusal| match refusal {
            Refusal::NotAuthorized(domain) => Reply::new(
                530,
                Detail::NotAuthorized,
                format!("Error: {user} may not take the mail of {domain} (odmr_domains)"),
            ),
            Refusal::NoDomains => Reply::new(
                530,
                Detail::NotAuthorized,
                format!("Error: no domain's mail is held for {user} (odmr_domains)"),
            ),
            Refusal::Busy(domain) => Reply::new(
                450,
                Detail::OtherMailSystem,
                format!(
                    "ATRN request refused: the mail of {domain} is being sent on another connection"
                ),
            ),
            Refusal::NoMail => Reply::fixed(453, Detail::Undefined, "You have no mail"),
        })?;
        step!(
            &self.session,
            "ATRN from {user}: the mail of {} is set aside; the roles turn",
            lease.domains().join(",")
        );
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(lease);
        Ok(())
    }

    /// ETRN (RFC 1985): the mail waiting for a node is tried now.
    fn etrn(&self, node: &str, authenticated: bool) -> Reply {
        if node.starts_with('#') {
            return Reply::new(
                458,
                Detail::OtherMailSystem,
                format!(
                    "Unable to queue messages for {}: queue names are not supported",
                    Echo(node)
                ),
            );
        }
        let name = node.strip_prefix('@').unwrap_or(node);
        if check_host_name(name, HostNameRules::HOST_NAME).is_err() {
            return Reply::new(
                501,
                Detail::InvalidArguments,
                format!("Syntax: ETRN <domain>; '{}' is not a domain", Echo(node)),
            );
        }
        if !(self.trusted || authenticated) {
            return ETRN_NOT_PERMITTED;
        }
        let Some(Daemon {
            scheduler,
            etrn_limit: limit,
            ..
        }) = &self.daemon
        else {
            return Reply::new(
                458,
                Detail::OtherMailSystem,
                format!("Unable to queue messages for node {node}: no queue runner in this mode"),
            );
        };
        if !limit.allow(self.ip, Instant::now()) {
            return ETRN_TOO_OFTEN;
        }
        match scheduler.run_node(node) {
            Some(0) => Reply::new(
                251,
                Detail::Undefined,
                format!("OK, no messages waiting for node {node}"),
            ),
            Some(n) => Reply::new(
                253,
                Detail::Undefined,
                format!("OK, {n} pending messages for node {node} started"),
            ),
            None => Reply::new(
                458,
                Detail::OtherMailSystem,
                format!("Unable to queue messages for node {node}: the queue runner is busy"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etrn_once_per_client_address_per_interval() {
        let limit = EtrnLimit::default();
        let (one, other): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "::1".parse().unwrap());
        let start = Instant::now();
        assert!(limit.allow(Some(one), start));
        assert!(!limit.allow(Some(one), start + ETRN_INTERVAL / 2));
        assert!(limit.allow(Some(other), start + ETRN_INTERVAL / 2));
        assert!(limit.allow(None, start));
        assert!(!limit.allow(None, start));
        assert!(limit.allow(Some(one), start + ETRN_INTERVAL));
    }

    /// The policy the built-in configuration gives (system accounts are the local users) with these aliases.
    fn policy(aliases: &str, trusted: bool) -> ServerPolicy {
        let aliases = Aliases::parse(aliases, "/etc/aliases").unwrap();
        ServerPolicy::new(
            "s1",
            Arc::new(Config::builtin()),
            Arc::new(aliases),
            Arc::new(AuthUsers::empty()),
            trusted,
            None,
            None,
        )
    }

    /// The reply code of `reply`.
    fn code(reply: Reply) -> u16 {
        reply.to_string()[..3].parse().unwrap()
    }

    fn rcpt(policy: &ServerPolicy, address: &str) -> RcptVerdict {
        policy.recipient(&ForwardPath::Mailbox(
            crate::smtp::parse_mailbox(address, false).unwrap(),
        ))
    }

    const ALIASES: &str =
        "staff: root, \"|/usr/bin/archive\", carol@example.org\nempty: :include:/dev/null\n";

    #[test]
    fn local_recipients_are_users_aliases_and_postmaster_and_only_trusted_clients_relay() {
        let outsider = policy(ALIASES, false);
        assert_eq!(rcpt(&outsider, "root@localhost"), RcptVerdict::Accept);
        assert_eq!(rcpt(&outsider, "STAFF@localhost"), RcptVerdict::Accept);
        assert_eq!(
            rcpt(&outsider, "mailer-daemon@localhost"),
            RcptVerdict::Accept
        );
        assert_eq!(
            outsider.recipient(&ForwardPath::Postmaster),
            RcptVerdict::Accept
        );
        assert_eq!(
            rcpt(&outsider, "no-such-user-here@localhost"),
            RcptVerdict::UnknownUser
        );
        assert_eq!(rcpt(&outsider, "root@[127.0.0.1]"), RcptVerdict::Accept);
        assert_eq!(rcpt(&outsider, "bob@example.org"), RcptVerdict::RelayDenied);
        assert_eq!(
            rcpt(&policy(ALIASES, true), "bob@example.org"),
            RcptVerdict::Accept
        );
    }

    #[test]
    fn vrfy_and_expn_answer_for_local_names_only() {
        let policy = policy(ALIASES, false);
        let host = &policy.config.hostname;
        assert_eq!(
            policy.vrfy("root").to_string(),
            format!("250 2.1.5 <root@{host}>")
        );
        assert_eq!(
            policy.vrfy("<nobody-here@localhost>").to_string(),
            "550 5.1.1 <nobody-here>: no such user here"
        );
        assert_eq!(code(policy.vrfy("bob@example.org")), 252);
        assert_eq!(
            policy.expn("staff").to_string(),
            format!(
                "250 2.1.5 <root@{host}> / staff (delivered by a program) / <carol@example.org>"
            )
        );
        assert_eq!(
            policy.expn("empty").to_string(),
            "550 5.1.1 <empty>: the list is empty"
        );
        assert_eq!(code(policy.expn("bob@example.org")), 252);
        let mut closed = Config::builtin();
        closed.expn = false;
        let closed = ServerPolicy::new(
            "s1",
            Arc::new(closed),
            policy.aliases.clone(),
            Arc::new(AuthUsers::empty()),
            false,
            None,
            None,
        );
        assert_eq!(code(closed.expn("staff")), 502);
    }

    #[test]
    fn etrn_is_for_trusted_clients_of_a_daemon_with_a_scheduler() {
        assert_eq!(code(policy("", false).etrn("#queue", false)), 458);
        assert_eq!(code(policy("", false).etrn("not a domain", false)), 501);
        assert_eq!(
            policy("", false).etrn("example.org", false).to_string(),
            ETRN_NOT_PERMITTED.to_string()
        );
        let authenticated = policy("", false).etrn("example.org", true).to_string();
        assert!(
            authenticated.contains("no queue runner"),
            "an authenticated client gets past the trust check: {authenticated}"
        );
        let inetd = policy("", true).etrn("@example.org", false).to_string();
        assert!(
            inetd.starts_with("458 4.3.0 ") && inetd.contains("no queue runner"),
            "{inetd}"
        );
    }

    #[test]
    fn the_etrn_refusal_names_the_interval() {
        let seconds = format!("every {} seconds", ETRN_INTERVAL.as_secs());
        assert!(ETRN_TOO_OFTEN.to_string().contains(&seconds));
    }
}
