//! A small synchronous DNS client for mail routing: MX and address lookups over UDP, TCP when truncated.
//!
//! Names are ASCII only: a name with other characters is refused as `NotFound` (IDNA is not
//! supported; the caller converts U-labels to A-labels if it wants them). Answers are cached for their TTL,
//! negative ones as RFC 2308 says (see [`cache`]); failures are not.

pub(crate) mod cache;
#[cfg(test)]
mod tests;
pub(crate) mod wire;

use std::cell::RefCell;
use std::error::Error;
use std::fmt;
use std::fs;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::smtp::{HostNameError, HostNameRules, check_host_name};

use cache::{Cache, Found};
use wire::{Data, Decoded, RCODE_NOERROR, RCODE_NXDOMAIN, Reply, TYPE_A, TYPE_AAAA, TYPE_MX};

/// How long to wait for one server's answer to one query, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many rounds over all servers before a query counts as failed.
const DEFAULT_ATTEMPTS: u32 = 2;
/// The largest UDP datagram, so an oversized reply is read whole rather than cut.
const MAX_DATAGRAM: usize = 65_535;

thread_local! {
    /// Where this thread's UDP replies are read: one buffer per thread, not 64 KiB per query.
    static DATAGRAM: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// Where to send mail for a domain, best first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Mail exchangers: host names with their preference, sorted by preference; equal preferences in random order.
    Mx(Vec<(u16, String)>),
    /// No MX record: the domain's own address records act as an implicit MX (RFC 5321 5.1).
    Implicit,
    /// A null MX (RFC 7505: one MX record with preference 0 and target "."): the domain accepts no mail.
    NullMx,
}

/// A failed lookup, split the way delivery needs it: bounce or retry.
#[derive(Debug)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN), has no address records, or is not a valid
    /// domain name: a permanent failure.
    NotFound(String),
    /// Timeouts, SERVFAIL, unreachable servers, malformed answers: a temporary failure.
    Temporary(String),
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NotFound(why) | DnsError::Temporary(why) => f.write_str(why),
        }
    }
}

impl Error for DnsError {}

/// A stub resolver: asks recursive nameservers, in turn, and trusts their answers. Clones share one cache.
#[derive(Clone, Debug)]
pub struct Resolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: u32,
    cache: Arc<Cache>,
}

impl Resolver {
    /// A resolver asking `servers` in order, waiting `timeout` for each answer, two rounds.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Resolver {
        Resolver {
            servers,
            timeout,
            attempts: DEFAULT_ATTEMPTS,
            cache: Arc::new(Cache::new(cache::DEFAULT_CAPACITY)),
        }
    }

    /// The nameservers of a resolv.conf file such as /etc/resolv.conf (port 53), or an error if it names none.
    ///
    /// Entries that are not plain IP addresses (such as `fe80::1%eth0`) are skipped with a warning.
    pub fn from_resolv_conf(path: &Path) -> io::Result<Vec<SocketAddr>> {
        let text = fs::read_to_string(path)?;
        let servers: Vec<SocketAddr> = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some("nameserver")).then(|| words.next())?
            })
            .filter_map(|address| match address.parse::<IpAddr>() {
                Ok(ip) => Some(SocketAddr::new(ip, 53)),
                Err(_) => {
                    warn!(
                        "{}: skipping nameserver {address}: not an IP address",
                        path.display()
                    );
                    None
                }
            })
            .collect();
        if servers.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no nameserver", path.display()),
            ));
        }
        Ok(servers)
    }

    /// Where mail for `domain` goes.
    ///
    /// MX records whose target is the root (".") are null MX records: if they are all there
    /// is, the domain accepts no mail; beside real exchangers (which RFC 7505 forbids) they
    /// are dropped.
    pub fn mx(&self, domain: &str) -> Result<Route, DnsError> {
        let name = check_name(domain)?;
        let mut hosts: Vec<(u16, String)> = self
            .lookup(&name, TYPE_MX)?
            .into_iter()
            .filter_map(|data| match data {
                Data::Mx(preference, host) => Some((preference, host)),
                _ => None,
            })
            .collect();
        if hosts.is_empty() {
            return Ok(Route::Implicit);
        }
        hosts.retain(|(_, host)| !host.is_empty());
        if hosts.is_empty() {
            return Ok(Route::NullMx);
        }
        shuffle(&mut hosts);
        hosts.sort_by_key(|&(preference, _)| preference);
        Ok(Route::Mx(hosts))
    }

    /// A and AAAA records of a host (both asked; IPv4 first in the result, then IPv6). Empty result with NoData → Err(NotFound).
    ///
    /// If one of the two queries fails temporarily, the other's addresses are enough (with
    /// a warning); the failure is returned only when there is no address at all.
    pub fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let name = check_name(host)?;
        let ipv4 = match self.lookup(&name, TYPE_A) {
            Err(gone @ DnsError::NotFound(_)) => return Err(gone),
            other => other,
        };
        let ipv6 = self.lookup(&name, TYPE_AAAA);
        let mut addresses = Vec::new();
        let mut failure = None;
        for result in [ipv4, ipv6] {
            match result {
                Ok(records) => {
                    addresses.extend(records.into_iter().filter_map(|data| match data {
                        Data::A(ip) => Some(IpAddr::V4(ip)),
                        Data::Aaaa(ip) => Some(IpAddr::V6(ip)),
                        _ => None,
                    }))
                }
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            Some(error) if addresses.is_empty() => Err(error),
            Some(error) => {
                warn!("dns: {error}; using the other address family");
                Ok(addresses)
            }
            None if addresses.is_empty() => {
                Err(DnsError::NotFound(format!("{name}: no address records")))
            }
            None => Ok(addresses),
        }
    }

    /// The records of type `qtype` for `name` (checked), after CNAMEs; empty when there are none. From the
    /// cache while the last answer holds.
    fn lookup(&self, name: &str, qtype: u16) -> Result<Vec<Data>, DnsError> {
        if let Some(found) = self.cache.get(name, qtype, Instant::now()) {
            debug!("dns: {name} {}: {found:?} (cached)", type_name(qtype));
            return records(name, found);
        }
        let mut last_failure = String::from("no nameserver configured");
        for _ in 0..self.attempts {
            for &server in &self.servers {
                let outcome = self
                    .ask(server, name, qtype)
                    .and_then(|reply| match reply.rcode {
                        RCODE_NOERROR => {
                            let answer = reply.data_for(name, qtype)?;
                            let ttl = answer.ttl.or(reply.negative_ttl);
                            let data = answer.data.into_iter().cloned().collect();
                            Ok((Found::Records(data), ttl))
                        }
                        RCODE_NXDOMAIN => Ok((Found::NoSuchName, reply.negative_ttl)),
                        rcode => Err(format!("answered {}", rcode_name(rcode))),
                    });
                match outcome {
                    Ok((found, ttl)) => {
                        debug!(
                            "dns: {name} {}: {found:?} from {server}, ttl {ttl:?}",
                            type_name(qtype)
                        );
                        if let Some(ttl) = ttl {
                            self.cache
                                .put(name, qtype, found.clone(), ttl, Instant::now());
                        }
                        return records(name, found);
                    }
                    Err(why) => {
                        debug!("dns: {name} {}: {server} {why}", type_name(qtype));
                        last_failure = format!("{server} {why}");
                    }
                }
            }
        }
        Err(DnsError::Temporary(format!(
            "{name} {}: {last_failure}",
            type_name(qtype)
        )))
    }

    /// One query to one server: over UDP, again over TCP if the answer was truncated.
    fn ask(&self, server: SocketAddr, name: &str, qtype: u16) -> Result<Reply, String> {
        let id = random() as u16;
        match self.ask_udp(server, id, name, qtype)? {
            Some(reply) => Ok(reply),
            None => self.ask_tcp(server, id, name, qtype),
        }
    }

    /// The reply over UDP, or `None` if it was truncated. Foreign packets are ignored until the timeout.
    fn ask_udp(
        &self,
        server: SocketAddr,
        id: u16,
        name: &str,
        qtype: u16,
    ) -> Result<Option<Reply>, String> {
        let local = match server {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let socket = UdpSocket::bind(local).map_err(describe)?;
        socket.connect(server).map_err(describe)?;
        socket
            .send(&wire::encode_query(id, name, qtype))
            .map_err(describe)?;
        let deadline = Instant::now() + self.timeout;
        DATAGRAM.with_borrow_mut(|packet| {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err("timed out".into());
                }
                socket.set_read_timeout(Some(left)).map_err(describe)?;
                let len = match socket.recv(packet) {
                    Ok(len) => len,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => return Err(describe(error)),
                };
                match wire::decode(&packet[..len], id, name, qtype)? {
                    Decoded::Reply(reply) => return Ok(Some(reply)),
                    Decoded::Truncated => return Ok(None),
                    Decoded::Foreign => debug!("dns: ignoring a stray packet from {server}"),
                }
            }
        })
    }

    /// The reply over TCP (RFC 1035 4.2.2: each message prefixed with its 2-octet length), all of
    /// it within the timeout.
    fn ask_tcp(
        &self,
        server: SocketAddr,
        id: u16,
        name: &str,
        qtype: u16,
    ) -> Result<Reply, String> {
        let mut stream = TcpStream::connect_timeout(&server, self.timeout).map_err(describe)?;
        let deadline = Instant::now() + self.timeout;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(describe)?;
        let query = wire::encode_query(id, name, qtype);
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend(query);
        stream.write_all(&framed).map_err(describe)?;
        let mut len = [0; 2];
        read_before(&mut stream, &mut len, deadline)?;
        let mut packet = vec![0; u16::from_be_bytes(len).into()];
        read_before(&mut stream, &mut packet, deadline)?;
        match wire::decode(&packet, id, name, qtype)? {
            Decoded::Reply(reply) => Ok(reply),
            Decoded::Truncated => Err("sent a truncated reply over TCP".into()),
            Decoded::Foreign => Err("sent a reply over TCP that does not match the query".into()),
        }
    }
}

/// A lookup's result as the resolver returns it.
fn records(name: &str, found: Found) -> Result<Vec<Data>, DnsError> {
    match found {
        Found::Records(records) => Ok(records),
        Found::NoSuchName => Err(DnsError::NotFound(format!("{name}: no such domain"))),
    }
}

/// Fills `buf` from `stream` before `deadline`, so a server sending an octet at a time cannot
/// hold the query longer than that.
fn read_before(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), String> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        stream.set_read_timeout(Some(left)).map_err(describe)?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err("closed the TCP connection before the whole reply".into()),
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(describe(error)),
        }
    }
    Ok(())
}

/// The wire form of a host or domain name: lowercase, without the trailing dot.
///
/// Anything but a DNS name (underscores allowed, ASCII only: IDNA is not supported) cannot be a mail
/// domain: `NotFound`.
fn check_name(name: &str) -> Result<String, DnsError> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    match check_host_name(bare, HostNameRules::DNS_NAME) {
        Ok(()) => Ok(bare.to_ascii_lowercase()),
        Err(HostNameError::NotAscii) => Err(DnsError::NotFound(format!(
            "{name}: not an ASCII domain (IDNA is not supported)"
        ))),
        Err(error) => Err(DnsError::NotFound(format!(
            "{name}: not a domain name: {}",
            error.describe()
        ))),
    }
}

/// An I/O error as a failure reason; both timeout kinds read "timed out".
fn describe(error: io::Error) -> String {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        _ => error.to_string(),
    }
}

fn rcode_name(rcode: u8) -> String {
    match rcode {
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        _ => format!("RCODE {rcode}"),
    }
}

fn type_name(qtype: u16) -> &'static str {
    match qtype {
        TYPE_MX => "MX",
        TYPE_A => "A",
        TYPE_AAAA => "AAAA",
        _ => "other",
    }
}

/// A random number for query ids and shuffling: SipHash, keyed by std's per-process random
/// keys, of a counter. Unpredictable enough to make forged replies guesswork (RFC 5452).
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Fisher–Yates.
fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, (random() % (i as u64 + 1)) as usize);
    }
}
