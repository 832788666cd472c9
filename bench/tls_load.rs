//! TLS load for an SMTP server: N parallel sessions, each connecting, saying STARTTLS, then sending messages
//! (several per connection, or one per connection), with the client and server CPU each costs. A Python client
//! spends as much CPU per handshake as the server, so this one uses rustls, as Postel does.
//!
//! cargo bench --bench tls_load -- --port 2525 --server-pid PID [--sessions 10] [--messages 1000]
//!     [--per-connection 100] [--no-resume] [--handshakes-only] [--plain] [--to ADDRESS]
//!
//! It prints one line: messages (or connections) per second, and CPU milliseconds per message (or
//! connection) for the server and for this client. `--handshakes-only` opens connections that say EHLO,
//! STARTTLS, EHLO, QUIT, to measure the handshake; `--plain` leaves STARTTLS out (the baseline to subtract);
//! `--no-resume` turns session resumption off, so that every handshake is a full one; `--to` names the
//! recipient (default `sink@localhost`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use postel::tls::Stream;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

struct Options {
    addr: SocketAddr,
    server_pid: Option<u32>,
    sessions: usize,
    messages: u64,
    per_connection: u64,
    resume: bool,
    handshakes_only: bool,
    tls: bool,
    to: String,
}

fn options() -> Options {
    let mut o = Options {
        addr: "127.0.0.1:2525".parse().unwrap(),
        server_pid: None,
        sessions: 10,
        messages: 1000,
        per_connection: 100,
        resume: true,
        handshakes_only: false,
        tls: true,
        to: "sink@localhost".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--port" => o.addr = format!("127.0.0.1:{}", value()).parse().unwrap(),
            "--server-pid" => o.server_pid = Some(value().parse().unwrap()),
            "--sessions" => o.sessions = value().parse().unwrap(),
            "--messages" => o.messages = value().parse().unwrap(),
            "--per-connection" => o.per_connection = value().parse().unwrap(),
            "--no-resume" => o.resume = false,
            "--handshakes-only" => o.handshakes_only = true,
            "--plain" => o.tls = false,
            "--to" => o.to = value(),
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// CPU time (user + system) of a process so far, from /proc.
fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |n: usize| {
        fields
            .get(n)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat(5): 11 and 12 after the command name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

struct Session {
    reader: BufReader<Stream>,
}

impl Session {
    fn reply(&mut self) -> u16 {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.reader.read_line(&mut line).unwrap() > 0,
                "server closed"
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                return line[..3].parse().unwrap();
            }
        }
    }

    fn say(&mut self, text: &str) {
        self.reader.get_mut().write_all(text.as_bytes()).unwrap();
    }

    fn command(&mut self, text: &str, expect: u16) {
        self.say(text);
        assert_eq!(self.reply(), expect, "{text:?}");
    }
}

fn connect(o: &Options, config: &Arc<ClientConfig>) -> Session {
    let tcp = TcpStream::connect(o.addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut session = Session {
        reader: BufReader::new(Stream::Plain(tcp)),
    };
    assert_eq!(session.reply(), 220);
    session.command("EHLO load.test\r\n", 250);
    if o.tls {
        session.command("STARTTLS\r\n", 220);
        let name = ServerName::try_from("postel.test").unwrap();
        let stream = session.reader.get_mut();
        stream
            .connect_tls(Arc::clone(config), name, Duration::from_secs(30))
            .unwrap();
        session.command("EHLO load.test\r\n", 250);
    }
    session
}

/// A message of about 1 KiB, the size the other benchmark cases send.
fn message() -> String {
    let mut text = String::from("From: load@load.test\r\nSubject: load\r\n\r\n");
    while text.len() < 1024 {
        text.push_str("A line of the body of a benchmark message, about as long as lines are.\r\n");
    }
    text.push_str(".\r\n");
    text
}

fn main() {
    let o = Arc::new(options());
    let mut config = (*postel::tls::client::unverified()).clone();
    if !o.resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let config = Arc::new(config);
    let envelope = format!(
        "MAIL FROM:<load@load.test>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        o.to
    );
    let envelope = Arc::new(envelope);
    let message = Arc::new(message());
    let done = Arc::new(AtomicU64::new(0));
    let server_before = o.server_pid.map(|p| cpu(&p.to_string()));
    let client_before = cpu("self");
    let started = Instant::now();
    let threads: Vec<_> = (0..o.sessions)
        .map(|_| {
            let (o, config, done) = (Arc::clone(&o), Arc::clone(&config), Arc::clone(&done));
            let (envelope, message) = (Arc::clone(&envelope), Arc::clone(&message));
            std::thread::spawn(move || {
                loop {
                    let mut session = connect(&o, &config);
                    let batch = if o.handshakes_only {
                        1
                    } else {
                        o.per_connection
                    };
                    for _ in 0..batch {
                        if done.fetch_add(1, Ordering::Relaxed) >= o.messages {
                            session.command("QUIT\r\n", 221);
                            return;
                        }
                        if !o.handshakes_only {
                            session.say(&envelope);
                            assert_eq!(
                                (session.reply(), session.reply(), session.reply()),
                                (250, 250, 354)
                            );
                            session.command(&message, 250);
                        }
                    }
                    session.command("QUIT\r\n", 221);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = o.messages as f64;
    let client = (cpu("self") - client_before).as_secs_f64() * 1000.0 / count;
    let server = match (o.server_pid, server_before) {
        (Some(pid), Some(before)) => format!(
            "{:.3}",
            (cpu(&pid.to_string()) - before).as_secs_f64() * 1000.0 / count
        ),
        _ => "-".into(),
    };
    let unit = if o.handshakes_only {
        "connections"
    } else {
        "messages"
    };
    println!(
        "{} {unit}, {} sessions, {} per connection, tls={} resume={}: {:.0} {unit}/s, server CPU {server} ms, \
         client CPU {client:.3} ms per {}",
        o.messages,
        o.sessions,
        if o.handshakes_only {
            1
        } else {
            o.per_connection
        },
        o.tls,
        o.resume,
        count / elapsed,
        &unit[..unit.len() - 1],
    );
}
