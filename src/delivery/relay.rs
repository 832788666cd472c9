//! Relaying one message's recipients at one domain: find the destination (smarthost, MX, or the domain itself),
//! send one copy per destination host for all of them, reuse connections across messages, and turn what the
//! other server said into a delivery result per recipient. Mail for an ODMR domain (`odmr_domains`) goes only
//! over a connection its customer turned with ATRN (RFC 2645), and waits while there is none.

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rustls::ClientConfig;

use crate::auth::Credentials;
use crate::config::{Config, RemoteTls, SmarthostTls};
use crate::copy::{self, Format};
use crate::delivery::body;
use crate::delivery::trace;
use crate::delivery::transport::{Delivery, Problem};
use crate::remote::client::{
    ClientError, Connection, RemoteReply, Security, Sent as Transaction, Timeouts, TlsMode,
};
use crate::remote::dns::{self, DnsError, Resolver, Route as MxRoute};
use crate::smtp::{BodyType, Class, Detail, Status};
use crate::spool::{Queued, Spool};
use crate::tls::{self, Stream};

/// An idle connection is kept this long for the next message to the same server.
const IDLE_LIMIT: Duration = Duration::from_secs(10);

/// Sends mail to other hosts; shared by the delivery workers.
pub struct Relay {
    hostname: String,
    port: u16,
    smarthost: Option<(String, u16)>,
    timeouts: Timeouts,
    /// None when no nameserver is known (no /etc/resolv.conf, none configured): lookups fail for now.
    resolver: Option<Resolver>,
    idle: Mutex<HashMap<SocketAddr, Vec<(Connection, Instant)>>>,
    protection: Protection,
    /// `odmr_domains`: (domain, user).
    held: Vec<(String, String)>,
    /// Connections turned with ATRN, by the domains whose mail goes there; None once taken back.
    turned: Mutex<HashMap<String, Turned>>,
}

/// A connection turned with ATRN, shared by the domains it serves.
type Turned = Arc<Mutex<Option<Connection>>>;

/// How relayed mail is protected.
struct Protection {
    mx: RemoteTls,
    /// For MX hosts: encrypts, verifies nothing.
    unverified: Arc<ClientConfig>,
    /// For the smarthost: the TLS mode, a verifying configuration and the credentials, or why they cannot be
    /// had (then mail for the smarthost waits).
    smarthost: Result<(TlsMode, Arc<ClientConfig>, Option<Credentials>), String>,
    /// MX addresses whose last TLS handshake failed: the next attempt there goes in plaintext.
    plaintext_next: Mutex<HashSet<SocketAddr>>,
}

impl Protection {
    fn new(config: &Config) -> Protection {
        let unverified = tls::client::unverified();
        let credentials = config
            .smarthost_credentials
            .as_deref()
            .map(Credentials::load)
            .transpose();
        let smarthost = credentials.and_then(|credentials| {
            let mode = match config.smarthost_tls {
                SmarthostTls::None => {
                    return Ok((TlsMode::Off, Arc::clone(&unverified), credentials));
                }
                SmarthostTls::Starttls => TlsMode::Required,
                SmarthostTls::Implicit => TlsMode::Implicit,
            };
            let verified = tls::client::verified(config.tls_ca_file.as_deref()).map_err(|e| e.0)?;
            Ok((mode, verified, credentials))
        });
        if config.smarthost.is_some()
            && let Err(why) = &smarthost
        {
            warn!("relay: mail for the smarthost waits: {why}");
        }
        Protection {
            mx: config.remote_tls,
            unverified,
            smarthost,
            plaintext_next: Mutex::new(HashSet::new()),
        }
    }
}

/// A server to try, by name or address, and its port.
struct Host {
    name: String,
    port: u16,
}

impl Relay {
    pub fn new(config: &Config) -> Relay {
        let servers = if config.nameservers.is_empty() {
            Resolver::from_resolv_conf(std::path::Path::new("/etc/resolv.conf")).unwrap_or_default()
        } else {
            config.nameservers.clone()
        };
        let smarthost = config.smarthost.as_deref().map(|text| split_port(text, 25));
        Relay {
            hostname: config.hostname.clone(),
            port: config.remote_port,
            smarthost,
            timeouts: timeouts(config),
            resolver: (!servers.is_empty()).then(|| Resolver::new(servers, dns::DEFAULT_TIMEOUT)),
            idle: Mutex::new(HashMap::new()),
            protection: Protection::new(config),
            held: config.odmr_domains.clone(),
            turned: Mutex::new(HashMap::new()),
        }
    }

    /// The client side of a connection a customer turned with ATRN: its greeting, then our EHLO.
    pub fn turn(&self, stream: Stream, peer: SocketAddr) -> Result<Connection, ClientError> {
        Connection::turned(stream, peer, &self.hostname, &self.timeouts)
    }

    /// From now on, the mail for `domains` goes over `connection`, until [`Relay::take_back`].
    pub fn lend(&self, domains: &[String], connection: Connection) {
        let shared: Turned = Arc::new(Mutex::new(Some(connection)));
        let mut turned = self.turned.lock().unwrap_or_else(|p| p.into_inner());
        for domain in domains {
            turned.insert(domain.to_ascii_lowercase(), Arc::clone(&shared));
        }
    }

    /// Ends what [`Relay::lend`] began, once a transaction under way on the connection is over; the
    /// connection, unless it broke meanwhile.
    pub fn take_back(&self, domains: &[String]) -> Option<Connection> {
        let shared: Vec<Turned> = {
            let mut turned = self.turned.lock().unwrap_or_else(|p| p.into_inner());
            domains
                .iter()
                .filter_map(|domain| turned.remove(&domain.to_ascii_lowercase()))
                .collect()
        };
        shared
            .iter()
            .find_map(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).take())
    }

    /// Sends `message` to `recipients`, all at `domain`; returns a result per recipient, in order.
    /// `accepted` is called with the recipients the other server took, as soon as it has answered the content, so
    /// that their delivery is recorded before anything else can go wrong.
    pub fn deliver(
        &self,
        spool: &Spool,
        message: &Queued,
        domain: &str,
        recipients: &[String],
        accepted: &dyn Fn(&[&String]),
    ) -> Vec<Delivery> {
        let all = |outcome: Delivery| vec![outcome; recipients.len()];
        if let Some((_, user)) = self
            .held
            .iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(domain))
        {
            let turned = self.turned.lock().unwrap_or_else(|p| p.into_inner());
            let Some(turned) = turned.get(&domain.to_ascii_lowercase()).cloned() else {
                return all(held_for(user));
            };
            return self.send_turned(spool, message, &turned, recipients, accepted, user);
        }
        let hosts = match self.hosts(domain) {
            Ok(hosts) => hosts,
            Err(outcome) => return all(outcome),
        };
        crate::step!(
            message.envelope.id.as_str(),
            "{domain}: servers to try, best first: {} ({})",
            hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if self.smarthost.is_some() {
                "the smarthost"
            } else {
                "MX, or the domain itself"
            }
        );
        let mut last_error = format!("no server for {domain} could be reached");
        for host in &hosts {
            let addresses = match self.addresses(&host.name) {
                Ok(addresses) => addresses,
                Err(e) => {
                    last_error = format!("{}: {e}", host.name);
                    continue;
                }
            };
            for ip in addresses {
                let addr = SocketAddr::new(ip, host.port);
                let security = match self.security(host, addr) {
                    Ok(security) => security,
                    Err(why) => return all(Delivery::temporary(Detail::CryptographicFailure, why)),
                };
                match self.send(spool, message, addr, &security, recipients, accepted) {
                    Sent::Done(outcomes) => return outcomes,
                    Sent::TryNext(why) => last_error = format!("{} [{addr}]: {why}", host.name),
                }
            }
        }
        all(Delivery::temporary(Detail::NoAnswer, last_error))
    }

    /// The servers for `domain`, best first, or the result for every recipient when there is none.
    fn hosts(&self, domain: &str) -> Result<Vec<Host>, Delivery> {
        if let Some((name, port)) = &self.smarthost {
            return Ok(vec![Host {
                name: name.clone(),
                port: *port,
            }]);
        }
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip = literal
                .strip_prefix("IPv6:")
                .or(literal.strip_prefix("ipv6:"))
                .unwrap_or(literal);
            return Ok(vec![Host {
                name: ip.to_string(),
                port: self.port,
            }]);
        }
        let resolver = self.resolver.as_ref().ok_or_else(|| {
            Delivery::temporary(
                Detail::DirectoryFailure,
                "no DNS server is configured (nameservers, /etc/resolv.conf)",
            )
        })?;
        let exchangers = match resolver.mx(domain) {
            Ok(MxRoute::Mx(exchangers)) => exchangers,
            Ok(MxRoute::Implicit) => vec![(0, domain.to_string())],
            Ok(MxRoute::NullMx) => {
                return Err(Delivery::permanent(
                    Detail::NullMx,
                    format!("{domain} accepts no mail (null MX, RFC 7505)"),
                ));
            }
            Err(DnsError::NotFound(why)) => {
                return Err(Delivery::permanent(
                    Detail::BadDestinationSystem,
                    format!("domain {domain} not found: {why}"),
                ));
            }
            Err(DnsError::Temporary(why)) => {
                return Err(Delivery::temporary(
                    Detail::DirectoryFailure,
                    format!("DNS lookup for {domain}: {why}"),
                ));
            }
        };
        // RFC 5321 5.1: when this host is one of the exchangers, only better ones may be used.
        let own = exchangers
            .iter()
            .find(|(_, host)| self.is_me(host))
            .map(|(preference, _)| *preference);
        let hosts: Vec<Host> = exchangers
            .into_iter()
            .filter(|(preference, _)| own.is_none_or(|own| *preference < own))
            .map(|(_, name)| Host {
                name,
                port: self.port,
            })
            .collect();
        if hosts.is_empty() {
            return Err(Delivery::permanent(
                Detail::RoutingLoop,
                format!("mail for {domain} loops back to myself (MX points to this host)"),
            ));
        }
        Ok(hosts)
    }

    /// How to protect a connection to `host` at `addr`.
    fn security(&self, host: &Host, addr: SocketAddr) -> Result<Security, String> {
        let protection = &self.protection;
        let name = tls::client::server_name(host.name.trim_end_matches('.'))
            .unwrap_or_else(|_| addr.ip().into());
        if self.smarthost.is_some() {
            let (mode, config, credentials) = protection.smarthost.clone()?;
            return Ok(Security {
                mode,
                config,
                name,
                credentials,
            });
        }
        let mode = match protection.mx {
            RemoteTls::None => TlsMode::Off,
            RemoteTls::Required => TlsMode::Required,
            RemoteTls::Opportunistic => {
                let mut plaintext = protection
                    .plaintext_next
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if plaintext.remove(&addr) {
                    TlsMode::Off
                } else {
                    TlsMode::Opportunistic
                }
            }
        };
        Ok(Security {
            mode,
            config: Arc::clone(&protection.unverified),
            name,
            credentials: None,
        })
    }

    fn is_me(&self, host: &str) -> bool {
        host.trim_end_matches('.')
            .eq_ignore_ascii_case(&self.hostname)
    }

    fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = host.parse() {
            return Ok(vec![ip]);
        }
        match &self.resolver {
            Some(resolver) => resolver.addresses(host).map_err(|e| e.to_string()),
            None => Err("no DNS server is configured".into()),
        }
    }

    /// One transaction with one server, on a cached connection if there is one.
    fn send(
        &self,
        spool: &Spool,
        message: &Queued,
        addr: SocketAddr,
        security: &Security,
        recipients: &[String],
        accepted: &dyn Fn(&[&String]),
    ) -> Sent {
        let (mut connection, reused) = match self.connect(addr, security) {
            Ok(connection) => connection,
            Err(why) => return Sent::TryNext(why),
        };
        let envelope = &message.envelope;
        crate::step!(
            envelope.id.as_str(),
            "{addr}: {} connection; one transaction for {} recipients",
            if reused { "reusing an open" } else { "a new" },
            recipients.len()
        );
        let sent = match self.transact(spool, message, &mut connection, recipients) {
            Ok(sent) => sent,
            Err(unreadable) => return Sent::Done(vec![unreadable; recipients.len()]),
        };
        match sent {
            Ok(transaction) => {
                let results = self.taken(message, &connection, recipients, transaction, accepted);
                self.keep(addr, connection);
                Sent::Done(results)
            }
            // A cached connection the server has closed meanwhile: try once more on a new one.
            Err(ClientError::Connection(why)) if reused => {
                debug!(
                    "{}: cached connection to {addr} failed ({why}); opening a new one",
                    envelope.id
                );
                self.send(spool, message, addr, security, recipients, accepted)
            }
            Err(e) => {
                let usable = match &e {
                    ClientError::Rejected { reply, .. } => !reply.is_permanent(),
                    ClientError::Unsendable(_) => true, // nothing was sent
                    ClientError::Connection(_) | ClientError::Security(_) => false,
                };
                if usable {
                    self.keep(addr, connection);
                }
                not_taken(e, recipients.len())
            }
        }
    }

    /// One transaction on a connection turned with ATRN; the mail waits again if it has broken or been
    /// taken back.
    fn send_turned(
        &self,
        spool: &Spool,
        message: &Queued,
        turned: &Mutex<Option<Connection>>,
        recipients: &[String],
        accepted: &dyn Fn(&[&String]),
        user: &str,
    ) -> Vec<Delivery> {
        let all = |outcome: Delivery| vec![outcome; recipients.len()];
        let mut slot = turned.lock().unwrap_or_else(|p| p.into_inner());
        let Some(connection) = slot.as_mut() else {
            return all(held_for(user));
        };
        crate::step!(
            message.envelope.id.as_str(),
            "{}: the connection {user} turned with ATRN; one transaction for {} recipients",
            connection.peer(),
            recipients.len()
        );
        let sent = match self.transact(spool, message, connection, recipients) {
            Ok(sent) => sent,
            Err(unreadable) => return all(unreadable),
        };
        let error = match sent {
            Ok(transaction) => {
                return self.taken(message, connection, recipients, transaction, accepted);
            }
            Err(error) => error,
        };
        // After a refusal the next transaction starts with RSET (Connection::send); a server that is gone then
        // fails it, and the slot is emptied.
        match not_taken(error, recipients.len()) {
            Sent::Done(results) => results,
            Sent::TryNext(why) => {
                *slot = None;
                all(Delivery::temporary(
                    Detail::BadConnection,
                    format!("the connection {user} turned with ATRN failed: {why}"),
                ))
            }
        }
    }

    /// One transaction on `connection`: our Received header, then the message as queued. Err: the queued
    /// message cannot be read, the result for every recipient.
    fn transact(
        &self,
        spool: &Spool,
        message: &Queued,
        connection: &mut Connection,
        recipients: &[String],
    ) -> Result<Result<Transaction, ClientError>, Delivery> {
        let envelope = &message.envelope;
        let received = self.received(message, recipients);
        let size = message.len + received.get_ref().len() as u64;
        let sent = body::read(spool, message, |body| {
            connection.send(
                &envelope.sender,
                recipients,
                &mut received.chain(body),
                size,
                envelope.body == Some(BodyType::EightBitMime),
                envelope.smtputf8,
            )
        });
        sent.map_err(|e| {
            Delivery::temporary(
                Detail::OtherMailSystem,
                format!("cannot read the queued message: {e}"),
            )
        })
    }

    /// A connection to `addr`: a cached one (true), else a new one; Err says why this server cannot be used.
    fn connect(&self, addr: SocketAddr, security: &Security) -> Result<(Connection, bool), String> {
        if let Some(connection) = self.cached(addr) {
            return Ok((connection, true));
        }
        match Connection::open(addr, &self.hostname, &self.timeouts, security) {
            Ok(connection) => Ok((connection, false)),
            Err(ClientError::Rejected { reply, .. }) => Err(reply.to_string()),
            Err(ClientError::Security(why)) => {
                if security.mode == TlsMode::Opportunistic {
                    self.protection
                        .plaintext_next
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(addr);
                }
                Err(why)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The server answered the message: the recipients it took are recorded at once; a result per recipient.
    fn taken(
        &self,
        message: &Queued,
        connection: &Connection,
        recipients: &[String],
        transaction: Transaction,
        accepted: &dyn Fn(&[&String]),
    ) -> Vec<Delivery> {
        let addr = connection.peer();
        let taken: Vec<&String> = recipients
            .iter()
            .zip(&transaction.recipients)
            .filter(|(_, result)| result.is_ok())
            .map(|(recipient, _)| recipient)
            .collect();
        accepted(&taken);
        let results = transaction
            .recipients
            .into_iter()
            .map(|result| match result {
                Ok(()) => Delivery::Done,
                Err(reply) => from_reply(&reply),
            })
            .collect();
        let tls = connection
            .tls()
            .map_or(String::new(), |tls| format!(" over {tls}"));
        info!(
            "{}: sent to {addr} ({}){tls}: {}",
            message.envelope.id,
            connection.server_name(),
            transaction.final_reply
        );
        crate::step!(
            message.envelope.id.as_str(),
            "{addr} ({}){tls} answered: {}",
            connection.server_name(),
            transaction.final_reply
        );
        results
    }

    /// The Received header this host adds to a message it relays (RFC 5321 4.4), CRLF line ends.
    fn received(&self, message: &Queued, recipients: &[String]) -> Cursor<Vec<u8>> {
        let only = (recipients.len() == 1).then(|| recipients[0].as_str());
        let header = trace::received(&message.envelope, &self.hostname, only);
        Cursor::new(copy::convert(Format::CRLF, header.as_bytes()))
    }

    /// The connection to `addr` kept last, if one is still fresh; those idle too long are closed.
    fn cached(&self, addr: SocketAddr) -> Option<Connection> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut expired = Vec::new();
        for connections in idle.values_mut() {
            // Kept in the order they were kept in: the stale ones come first.
            let stale = connections
                .partition_point(|(_, since)| now.saturating_duration_since(*since) > IDLE_LIMIT);
            expired.extend(connections.drain(..stale).map(|(c, _)| c));
        }
        let connection = idle.get_mut(&addr).and_then(|c| c.pop()).map(|(c, _)| c);
        drop(idle);
        for old in expired {
            old.quit();
        }
        connection
    }

    /// Keeps `connection` for the next message to `addr`: at once after a clean transaction, after an RSET
    /// after a failed one (dropped if that fails).
    fn keep(&self, addr: SocketAddr, mut connection: Connection) {
        if connection.ready().is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.entry(addr)
                .or_default()
                .push((connection, Instant::now()));
        }
    }
}

enum Sent {
    /// The server took part: a result per recipient.
    Done(Vec<Delivery>),
    /// This server could not be used: try the next one.
    TryNext(String),
}

/// A reply from another server as a delivery result: 5xx fails, anything else waits for a retry.
fn from_reply(reply: &RemoteReply) -> Delivery {
    let permanent = reply.is_permanent();
    let problem = Problem {
        status: reply.enhanced_status().unwrap_or_else(|| {
            let class = if permanent {
                Class::PermanentFailure
            } else {
                Class::TransientFailure
            };
            Status::new(class, Detail::Undefined).to_string()
        }),
        diagnostic: format!("{} {}", reply.code, reply.text),
        remote_reply: true,
    };
    if permanent {
        Delivery::Permanent(problem)
    } else {
        Delivery::Temporary(problem)
    }
}

/// A transaction that failed as a whole: a result for every recipient alike, or why this server cannot be used.
fn not_taken(error: ClientError, recipients: usize) -> Sent {
    match error {
        ClientError::Connection(why) | ClientError::Security(why) => Sent::TryNext(why),
        ClientError::Rejected { step, reply } => {
            let outcome = match from_reply(&reply) {
                Delivery::Permanent(mut problem) => {
                    problem.diagnostic += &format!(" (in reply to {step})");
                    Delivery::Permanent(problem)
                }
                other => other,
            };
            Sent::Done(vec![outcome; recipients])
        }
        ClientError::Unsendable(why) => {
            Sent::Done(vec![
                Delivery::permanent(Detail::MessageTooBig, why);
                recipients
            ])
        }
    }
}

/// Mail for an ODMR domain while its customer has no connection turned with ATRN.
fn held_for(user: &str) -> Delivery {
    Delivery::temporary(
        Detail::NoAnswer,
        format!("held until {user} asks for it with ATRN (RFC 2645)"),
    )
}

/// How long an SMTP client waits at each step: the remote_*_timeout keys.
pub fn timeouts(config: &Config) -> Timeouts {
    Timeouts {
        connect: config.remote_connect_timeout,
        greeting: config.remote_command_timeout,
        command: config.remote_command_timeout,
        data_block: config.remote_data_timeout,
        end_of_data: config.remote_data_timeout,
    }
}

/// "host:port" or "host" (then `default`), also "[v6]:port".
pub fn split_port(text: &str, default: u16) -> (String, u16) {
    if let Some(rest) = text.strip_prefix('[')
        && let Some((host, port)) = rest.split_once(']')
    {
        let port = port
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default);
        return (host.to_string(), port);
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            (host.to_string(), port.parse().unwrap_or(default))
        }
        _ => (text.to_string(), default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smarthost_names_and_ports() {
        assert_eq!(
            split_port("mail.isp.example:587", 25),
            ("mail.isp.example".into(), 587)
        );
        assert_eq!(
            split_port("mail.isp.example", 25),
            ("mail.isp.example".into(), 25)
        );
        assert_eq!(split_port("[::1]:2526", 25), ("::1".into(), 2526));
        assert_eq!(split_port("127.0.0.1:2526", 25), ("127.0.0.1".into(), 2526));
    }

    #[test]
    fn replies_become_delivery_results() {
        let reply = RemoteReply {
            code: 550,
            text: "5.1.1 no such user".into(),
        };
        assert_eq!(
            from_reply(&reply),
            Delivery::Permanent(Problem {
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 no such user".into(),
                remote_reply: true,
            })
        );
        let reply = RemoteReply {
            code: 451,
            text: "try later".into(),
        };
        assert!(
            matches!(from_reply(&reply), Delivery::Temporary(problem) if problem.status == "4.0.0")
        );
    }
}
