//! Resolver tests over real sockets on loopback: scripted fake servers, and dnsmasq when installed.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::thread::{self, JoinHandle};

use super::*;

/// The per-server timeout in these tests.
const SHORT: Duration = Duration::from_millis(300);
/// Header flags of a plain answer: QR, RD, RA.
const ANSWER: u16 = 0x8180;
const TRUNCATED: u16 = 0x0200;
const SERVFAIL: u16 = 2;

fn resolver(servers: &[SocketAddr]) -> Resolver {
    Resolver::new(servers.to_vec(), SHORT)
}

/// A loopback address where nothing listens: queries to it are refused at once.
fn closed_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn names_are_checked_and_lowercased() {
    assert_eq!(check_name("Mail.Example.ORG.").unwrap(), "mail.example.org");
    assert_eq!(check_name("_srv.x-1.test").unwrap(), "_srv.x-1.test");
    let label = "a".repeat(63);
    assert!(check_name(&format!("{label}.test")).is_ok());
    assert!(
        check_name(&format!("{label}a.test")).is_err(),
        "label of 64 octets"
    );
    let long = [label.as_str(); 4].join(".");
    assert_eq!(long.len(), 255);
    assert!(
        check_name(&long[..253]).is_ok(),
        "253 characters are 255 octets on the wire"
    );
    assert!(check_name(&long[..254]).is_err());
    for bad in ["", ".", "a..b", ".a", "a b.test", "a/b.test", "[127.0.0.1]"] {
        assert!(
            matches!(check_name(bad), Err(DnsError::NotFound(_))),
            "{bad:?}"
        );
    }
    let error = check_name("bücher.test").unwrap_err();
    assert_eq!(
        error.to_string(),
        "bücher.test: not an ASCII domain (IDNA is not supported)"
    );
}

#[test]
fn reads_nameservers_from_resolv_conf() {
    let path = std::env::temp_dir().join(format!("postel-resolv-{}.conf", std::process::id()));
    fs::write(
        &path,
        "# comment\nsearch example.org\nnameserver 192.0.2.53\n; nameserver 192.0.2.1\n\
         nameserver fe80::1%eth0\n  nameserver ::1 # trailing comment\noptions ndots:2\n",
    )
    .unwrap();
    let servers = Resolver::from_resolv_conf(&path);
    fs::write(&path, "search example.org\n").unwrap();
    let none = Resolver::from_resolv_conf(&path);
    fs::remove_file(&path).unwrap();
    assert_eq!(
        servers.unwrap(),
        [
            "192.0.2.53:53".parse().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
    assert_eq!(none.unwrap_err().kind(), io::ErrorKind::InvalidData);
}

#[test]
fn shuffles_every_order() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let mut items = [1, 2, 3];
        shuffle(&mut items);
        seen.insert(items);
    }
    assert_eq!(seen.len(), 6);
}

#[test]
fn a_silent_server_is_a_temporary_failure() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let result = resolver(&[silent.local_addr().unwrap()]).mx("example.test");
    let elapsed = started.elapsed();
    assert!(
        matches!(&result, Err(DnsError::Temporary(why)) if why.ends_with("timed out")),
        "{result:?}"
    );
    assert!(
        elapsed >= SHORT * DEFAULT_ATTEMPTS,
        "gave up after {elapsed:?}"
    );
    assert!(
        elapsed < SHORT * DEFAULT_ATTEMPTS + Duration::from_secs(5),
        "took {elapsed:?}"
    );
}

#[test]
fn no_servers_is_a_temporary_failure() {
    let result = resolver(&[]).addresses("example.test");
    assert!(matches!(result, Err(DnsError::Temporary(_))), "{result:?}");
}

#[test]
fn a_refusing_port_moves_on_to_the_next_server() {
    let fake =
        Fake::start(|query, _| vec![respond(query, ANSWER, &[record(TYPE_A, &[192, 0, 2, 1])])]);
    let addresses = resolver(&[closed_port(), fake.addr]).addresses("host.test");
    assert_eq!(addresses.unwrap(), [IpAddr::from([192, 0, 2, 1])]);
}

#[test]
fn servfail_moves_on_to_the_next_server_and_fails_temporarily_at_the_end() {
    let failing = Fake::start(|query, _| vec![respond(query, ANSWER | SERVFAIL, &[])]);
    let working = Fake::start(|query, _| {
        vec![respond(
            query,
            ANSWER,
            &[record(TYPE_MX, &mx(5, "mx.host.test"))],
        )]
    });
    let route = resolver(&[failing.addr, working.addr]).mx("host.test");
    assert_eq!(route.unwrap(), Route::Mx(vec![(5, "mx.host.test".into())]));
    let result = resolver(&[failing.addr]).mx("host.test");
    assert!(
        matches!(&result, Err(DnsError::Temporary(why)) if why.ends_with("answered SERVFAIL")),
        "{result:?}"
    );
}

#[test]
fn stray_packets_are_ignored() {
    let fake = Fake::start(|query, _| {
        let mut wrong_id = respond(query, ANSWER, &[record(TYPE_A, &[192, 0, 2, 66])]);
        wrong_id[0] ^= 0xff;
        vec![
            wrong_id,
            b"junk".to_vec(),
            respond(query, ANSWER, &[record(TYPE_A, &[192, 0, 2, 1])]),
        ]
    });
    let addresses = resolver(&[fake.addr]).addresses("host.test");
    assert_eq!(addresses.unwrap(), [IpAddr::from([192, 0, 2, 1])]);
}

#[test]
fn truncated_answers_are_asked_again_over_tcp() {
    let fake = Fake::start(|query, tcp| {
        let address = if tcp { [192, 0, 2, 2] } else { [192, 0, 2, 1] };
        let flags = if tcp { ANSWER } else { ANSWER | TRUNCATED };
        vec![respond(query, flags, &[record(TYPE_A, &address)])]
    });
    let addresses = resolver(&[fake.addr]).addresses("host.test");
    assert_eq!(addresses.unwrap(), [IpAddr::from([192, 0, 2, 2])]);
}

#[test]
fn a_tcp_answer_cut_short_is_a_temporary_failure() {
    let fake = Fake::start(|query, tcp| {
        let truncated = respond(query, ANSWER | TRUNCATED, &[]);
        if tcp { vec![] } else { vec![truncated] }
    });
    let result = resolver(&[fake.addr]).addresses("host.test");
    assert!(
        matches!(&result, Err(DnsError::Temporary(why))
            if why.ends_with("closed the TCP connection before the whole reply")),
        "{result:?}"
    );
}

#[test]
fn malformed_answers_are_temporary_failures() {
    let fake = Fake::start(|query, _| {
        vec![respond(
            query,
            ANSWER,
            &[record(TYPE_MX, b"\0\x05\xc0\xff")],
        )]
    });
    let result = resolver(&[fake.addr]).mx("host.test");
    assert!(matches!(result, Err(DnsError::Temporary(_))), "{result:?}");
}

#[test]
fn equal_preferences_come_in_random_order() {
    let fake = Fake::start(|query, _| {
        let hosts = [
            (10, "a.test"),
            (10, "b.test"),
            (5, "first.test"),
            (10, "c.test"),
            (20, "last.test"),
        ];
        let answers: Vec<_> = hosts
            .iter()
            .map(|&(preference, host)| record(TYPE_MX, &mx(preference, host)))
            .collect();
        vec![respond(query, ANSWER, &answers)]
    });
    let resolver = resolver(&[fake.addr]);
    let mut middles = std::collections::HashSet::new();
    for _ in 0..50 {
        let Ok(Route::Mx(hosts)) = resolver.mx("host.test") else {
            panic!("no MX")
        };
        let preferences: Vec<u16> = hosts.iter().map(|&(preference, _)| preference).collect();
        assert_eq!(preferences, [5, 10, 10, 10, 20]);
        assert_eq!(
            (hosts[0].1.as_str(), hosts[4].1.as_str()),
            ("first.test", "last.test")
        );
        middles.insert(hosts[1..4].to_vec());
    }
    assert!(
        middles.len() > 1,
        "equal preferences always in the same order: {middles:?}"
    );
}

#[test]
fn a_root_target_beside_real_exchangers_is_dropped() {
    let fake = Fake::start(|query, _| {
        vec![respond(
            query,
            ANSWER,
            &[
                record(TYPE_MX, &mx(0, "")),
                record(TYPE_MX, &mx(10, "mx.test")),
            ],
        )]
    });
    assert_eq!(
        resolver(&[fake.addr]).mx("host.test").unwrap(),
        Route::Mx(vec![(10, "mx.test".into())])
    );
}

#[test]
fn addresses_survive_one_failing_family() {
    let fake = Fake::start(|query, _| {
        let qtype = u16::from_be_bytes([query[query.len() - 4], query[query.len() - 3]]);
        match qtype {
            TYPE_A => vec![respond(query, ANSWER, &[record(TYPE_A, &[192, 0, 2, 1])])],
            _ => vec![respond(query, ANSWER | SERVFAIL, &[])],
        }
    });
    assert_eq!(
        resolver(&[fake.addr]).addresses("host.test").unwrap(),
        [IpAddr::from([192, 0, 2, 1])]
    );
}

/// A fake server counting the queries it gets, answering each with `handler`.
fn counting(handler: impl Fn(&[u8]) -> Vec<u8> + Send + 'static) -> (Fake, Arc<AtomicUsize>) {
    let queries = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&queries);
    let fake = Fake::start(move |query, _| {
        counted.fetch_add(1, Ordering::Relaxed);
        vec![handler(query)]
    });
    (fake, queries)
}

#[test]
fn a_second_lookup_is_answered_from_the_cache_shared_by_clones() {
    let (fake, queries) =
        counting(|query| respond(query, ANSWER, &[record(TYPE_MX, &mx(5, "mx.host.test"))]));
    let resolver = resolver(&[fake.addr]);
    let expected = Route::Mx(vec![(5, "mx.host.test".into())]);
    assert_eq!(resolver.mx("host.test").unwrap(), expected);
    assert_eq!(resolver.mx("HOST.test.").unwrap(), expected);
    assert_eq!(resolver.clone().mx("host.test").unwrap(), expected);
    assert_eq!(queries.load(Ordering::Relaxed), 1);
}

#[test]
fn a_zero_ttl_answer_is_asked_again() {
    let (fake, queries) = counting(|query| {
        let mut answer = record(TYPE_A, &[192, 0, 2, 1]);
        answer[6..10].fill(0); // TTL 0
        respond(query, ANSWER, &[answer])
    });
    let resolver = resolver(&[fake.addr]);
    for _ in 0..2 {
        assert_eq!(resolver.lookup("host.test", TYPE_A).unwrap().len(), 1);
    }
    assert_eq!(queries.load(Ordering::Relaxed), 2);
}

#[test]
fn a_missing_domain_is_cached_only_with_an_soa() {
    for (with_soa, expected_queries) in [(true, 1), (false, 2)] {
        let (fake, queries) = counting(move |query| {
            let authority: &[Vec<u8>] = if with_soa { &[soa(60)] } else { &[] };
            respond_with_authority(query, ANSWER | 3, &[], authority)
        });
        let resolver = resolver(&[fake.addr]);
        for _ in 0..2 {
            let missing = resolver.mx("gone.test");
            assert!(
                matches!(&missing, Err(DnsError::NotFound(why)) if why == "gone.test: no such domain"),
                "{missing:?}"
            );
        }
        let missing = resolver.addresses("gone.test");
        assert!(matches!(missing, Err(DnsError::NotFound(_))), "{missing:?}");
        assert_eq!(
            queries.load(Ordering::Relaxed),
            expected_queries + usize::from(!with_soa),
            "with an SOA: {with_soa}"
        );
    }
}

#[test]
fn no_records_of_a_type_is_cached_with_an_soa() {
    let (fake, queries) = counting(|query| respond_with_authority(query, ANSWER, &[], &[soa(60)]));
    let resolver = resolver(&[fake.addr]);
    assert_eq!(resolver.mx("bare.test").unwrap(), Route::Implicit);
    assert_eq!(resolver.mx("bare.test").unwrap(), Route::Implicit);
    assert_eq!(queries.load(Ordering::Relaxed), 1);
}

#[test]
fn failures_are_not_cached() {
    let (fake, queries) = counting(|query| respond(query, ANSWER | SERVFAIL, &[]));
    let resolver = resolver(&[fake.addr]);
    for _ in 0..2 {
        assert!(matches!(
            resolver.mx("host.test"),
            Err(DnsError::Temporary(_))
        ));
    }
    assert_eq!(
        queries.load(Ordering::Relaxed),
        2 * DEFAULT_ATTEMPTS as usize
    );
}

/// A scripted DNS server on loopback, UDP and TCP on one port: `handler(query, over_tcp)`
/// returns the packets to send back. Stopped and joined when dropped.
struct Fake {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    fn start(handler: impl Fn(&[u8], bool) -> Vec<Vec<u8>> + Send + 'static) -> Fake {
        let (udp, tcp) = (0..10)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
                let tcp = TcpListener::bind(udp.local_addr().unwrap()).ok()?;
                Some((udp, tcp))
            })
            .expect("no port free for both UDP and TCP");
        let addr = udp.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            udp.set_read_timeout(Some(Duration::from_millis(10)))
                .unwrap();
            tcp.set_nonblocking(true).unwrap();
            let mut packet = [0; 512];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((len, peer)) = udp.recv_from(&mut packet) {
                    for reply in handler(&packet[..len], false) {
                        udp.send_to(&reply, peer).unwrap();
                    }
                }
                if let Ok((mut stream, _)) = tcp.accept() {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(1)))
                        .unwrap();
                    let mut len = [0; 2];
                    stream.read_exact(&mut len).unwrap();
                    let mut query = vec![0; u16::from_be_bytes(len).into()];
                    stream.read_exact(&mut query).unwrap();
                    for reply in handler(&query, true) {
                        stream
                            .write_all(&(reply.len() as u16).to_be_bytes())
                            .unwrap();
                        stream.write_all(&reply).unwrap();
                    }
                }
            }
        });
        Fake {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// The answer to `query` (its id and question) with `flags` and `answers`.
fn respond(query: &[u8], flags: u16, answers: &[Vec<u8>]) -> Vec<u8> {
    respond_with_authority(query, flags, answers, &[])
}

/// The same with an authority section.
fn respond_with_authority(
    query: &[u8],
    flags: u16,
    answers: &[Vec<u8>],
    authority: &[Vec<u8>],
) -> Vec<u8> {
    let mut packet = query[..2].to_vec();
    for word in [flags, 1, answers.len() as u16, authority.len() as u16, 0] {
        packet.extend(word.to_be_bytes());
    }
    packet.extend_from_slice(&query[12..]);
    packet.extend(answers.concat());
    packet.extend(authority.concat());
    packet
}

/// An SOA record for the root zone with TTL 3600 and this MINIMUM: what negative answers carry.
fn soa(minimum: u32) -> Vec<u8> {
    let mut data = b"\x02ns\0\x0ahostmaster\0".to_vec();
    for field in [1, 1200, 120, 604_800, minimum] {
        data.extend(u32::to_be_bytes(field));
    }
    let mut record = vec![0, 0, 6, 0, 1];
    record.extend(3600u32.to_be_bytes());
    record.extend((data.len() as u16).to_be_bytes());
    record.extend(data);
    record
}

/// A record for the question's name (a pointer to offset 12), class IN.
fn record(rtype: u16, data: &[u8]) -> Vec<u8> {
    let mut record = vec![0xc0, 12];
    record.extend(rtype.to_be_bytes());
    record.extend([0, 1, 0, 0, 1, 0]);
    record.extend((data.len() as u16).to_be_bytes());
    record.extend_from_slice(data);
    record
}

/// MX record data; `host` "" is the root.
fn mx(preference: u16, host: &str) -> Vec<u8> {
    let mut data = preference.to_be_bytes().to_vec();
    for label in host.split('.').filter(|label| !label.is_empty()) {
        data.push(label.len() as u8);
        data.extend_from_slice(label.as_bytes());
    }
    data.push(0);
    data
}

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// The zone dnsmasq serves; `ready.test` tells that it is up.
const ZONE: &[&str] = &[
    "--local=/test/",
    "--host-record=ready.test,127.0.0.9",
    "--mx-host=example.test,mx2.example.test,20",
    "--mx-host=example.test,mx1.example.test,10",
    "--host-record=mx1.example.test,127.0.0.2",
    "--host-record=mx2.example.test,127.0.0.3",
    "--host-record=plain.test,127.0.0.4",
    "--host-record=dual.test,127.0.0.5,::5",
    "--cname=alias.test,dual.test",
    "--mx-host=nullmx.test,.,0",
];

/// A dnsmasq serving `ZONE` on a loopback port, killed when dropped.
struct Dnsmasq {
    child: Child,
    server: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running dnsmasq.
fn dnsmasq() -> Dnsmasq {
    let program = crate::testing::tool(DNSMASQ, "dnsmasq-base");
    for _ in 0..5 {
        let server = closed_port();
        let child = Command::new(&program)
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
            ])
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .arg(format!("--port={}", server.port()))
            .args(ZONE)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut dnsmasq = Dnsmasq { child, server };
        let probe = Resolver::new(vec![server], Duration::from_millis(100));
        for _ in 0..100 {
            if probe.addresses("ready.test").is_ok() {
                return dnsmasq;
            }
            if dnsmasq.child.try_wait().unwrap().is_some() {
                break; // Its port was taken after all: try another.
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("dnsmasq did not come up");
}

#[test]
fn dnsmasq_mx_records_sorted_by_preference() {
    let dnsmasq = dnsmasq();
    let resolver = resolver(&[dnsmasq.server]);
    let route = resolver.mx("Example.Test.").unwrap();
    assert_eq!(
        route,
        Route::Mx(vec![
            (10, "mx1.example.test".into()),
            (20, "mx2.example.test".into())
        ])
    );
    assert_eq!(
        resolver.addresses("mx2.example.test").unwrap(),
        [IpAddr::from([127, 0, 0, 3])]
    );
}

#[test]
fn dnsmasq_no_mx_is_an_implicit_mx() {
    let dnsmasq = dnsmasq();
    let resolver = resolver(&[dnsmasq.server]);
    assert_eq!(resolver.mx("plain.test").unwrap(), Route::Implicit);
    assert_eq!(
        resolver.addresses("plain.test").unwrap(),
        [IpAddr::from([127, 0, 0, 4])]
    );
}

#[test]
fn dnsmasq_null_mx() {
    let dnsmasq = dnsmasq();
    assert_eq!(
        resolver(&[dnsmasq.server]).mx("nullmx.test").unwrap(),
        Route::NullMx
    );
}

#[test]
fn dnsmasq_addresses_ipv4_first_through_a_cname() {
    let dnsmasq = dnsmasq();
    let resolver = resolver(&[dnsmasq.server]);
    let expected = [IpAddr::from([127, 0, 0, 5]), "::5".parse().unwrap()];
    assert_eq!(resolver.addresses("dual.test").unwrap(), expected);
    assert_eq!(resolver.addresses("alias.test").unwrap(), expected);
}

#[test]
fn dnsmasq_missing_names_are_not_found() {
    let dnsmasq = dnsmasq();
    let resolver = resolver(&[dnsmasq.server]);
    let missing = resolver.mx("missing.test");
    assert!(
        matches!(&missing, Err(DnsError::NotFound(why)) if why == "missing.test: no such domain"),
        "{missing:?}"
    );
    let missing = resolver.addresses("missing.test");
    assert!(matches!(missing, Err(DnsError::NotFound(_))), "{missing:?}");
    let no_address = resolver.addresses("example.test");
    assert!(
        matches!(&no_address, Err(DnsError::NotFound(why)) if why.ends_with("no address records")),
        "{no_address:?}"
    );
}
