//! Entry points for the fuzz targets in fuzz/ and for the test that replays their corpora
//! (tests/fuzz_corpora.rs). Each takes any bytes, feeds them to a parser that reads bytes from
//! outside (a client, a DNS server, a file an administrator wrote, the spool after a crash), and
//! panics only when a property that must hold for every input does not.

use std::str;

use crate::auth::AuthUsers;
use crate::config::Config;
use crate::delivery::aliases::Aliases;
use crate::remote::dns::wire::{self, Decoded, TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_MX};
use crate::smtp::address;
use crate::smtp::data::{BareLf, DataReceiver, DataStep};
use crate::smtp::harness::{self, Run};
use crate::smtp::sasl::{Exchange, SaslStep};
use crate::smtp::{command, find_verb};
use crate::spool::journal::Journal;
use crate::spool::record::{HEADER_LEN, Header};
use crate::spool::{Envelope, Queued, Scan, Spool, SpoolError};

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every target by the name of its directory in fuzz/corpus/ (and its fuzz/fuzz_targets/ file).
pub const TARGETS: &[(&str, Target)] = &[
    ("command_line", command_line),
    ("session", session),
    ("data_receiver", data_receiver),
    ("address", address),
    ("envelope", envelope),
    ("journal", journal),
    ("queue_file", queue_file),
    ("aliases", aliases),
    ("dns_reply", dns_reply),
    ("config", config),
    ("sasl", sasl),
    ("auth_users", auth_users),
];

/// The first two bytes choose how the rest is fed: flags, and the size of each read (0: all at once).
fn options(data: &[u8]) -> (u8, usize, &[u8]) {
    match data {
        [flags, piece, rest @ ..] => (*flags, *piece as usize, rest),
        _ => (0, 0, &[]),
    }
}

/// One command line (without its line end): split into verb and arguments, the arguments parsed
/// as each kind of verb takes them. A path that parses prints as a path that parses the same.
pub fn command_line(data: &[u8]) {
    let Ok((verb, args)) = command::split(data) else {
        return;
    };
    let _ = find_verb(verb);
    let _ = command::no_argument(args);
    let _ = command::one_word(args);
    let _ = command::some_text(args);
    let _ = command::chunk(args);
    if let Ok(mail) = command::mail(args) {
        let again = command::mail(&format!("FROM:<{}>", mail.from));
        assert_eq!(again.map(|m| m.from).ok(), Some(mail.from), "{args:?}");
    }
    if let Ok(rcpt) = command::rcpt(args) {
        let again = command::rcpt(&format!("TO:<{}>", rcpt.to));
        assert_eq!(again.map(|r| r.to).ok(), Some(rcpt.to), "{args:?}");
    }
}

/// A client's byte stream through the session state machine (pipelined commands, DATA, BDAT,
/// STARTTLS, AUTH, ATRN on an ODMR port), read in pieces of the chosen size: it never panics or stalls, messages start
/// and end one at a time, the output is printable reply lines, and how the stream is cut into
/// reads changes nothing (but for what STARTTLS throws away).
pub fn session(data: &[u8]) {
    let (flags, piece, input) = options(data);
    let mut params = harness::params();
    params.max_errors = if flags & 4 == 0 { 1000 } else { 3 };
    if flags & 2 != 0 {
        params.bare_lf = BareLf::Reject;
    }
    params.tls_required = flags & 8 != 0;
    params.submission = flags & 16 != 0;
    params.odmr = flags & 32 != 0;
    let trusted = flags & 1 != 0;
    let whole = harness::run_with(params.clone(), trusted, input, input.len().max(1));
    // What was read before a STARTTLS is thrown away, so there the reads do matter.
    if piece > 0 && whole.discarded.is_empty() {
        let pieces = harness::run_with(params, trusted, input, piece);
        assert_same_run(&whole, &pieces);
    }
}

fn assert_same_run(whole: &Run, pieces: &Run) {
    assert_eq!(
        String::from_utf8_lossy(&whole.output),
        String::from_utf8_lossy(&pieces.output)
    );
    assert_eq!(whole.messages, pieces.messages);
    assert_eq!(whole.aborted, pieces.aborted);
    assert_eq!(whole.closed, pieces.closed);
    assert_eq!(whole.turned, pieces.turned);
}

/// Message content after DATA: the message ends at the first end-of-data line and nowhere else, a
/// normalised message has no bare LF, and how the stream is cut into reads changes nothing.
pub fn data_receiver(data: &[u8]) {
    let (flags, piece, input) = options(data);
    let bare_lf = if flags & 1 == 0 {
        BareLf::Normalize
    } else {
        BareLf::Reject
    };
    let whole = receive(input, bare_lf, input.len().max(1));
    let first_end = if input.starts_with(b".\r\n") {
        Some(3)
    } else {
        memchr::memmem::find(input, b"\r\n.\r\n").map(|at| at + 5)
    };
    assert_eq!(whole.end, first_end, "the end of data");
    if bare_lf == BareLf::Normalize {
        let content = &whole.content;
        assert!(
            content
                .iter()
                .enumerate()
                .all(|(at, &b)| b != b'\n' || (at > 0 && content[at - 1] == b'\r')),
            "a bare LF in normalised content"
        );
    }
    if piece > 0 {
        assert_eq!(whole, receive(input, bare_lf, piece));
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Received {
    content: Vec<u8>,
    /// How many input bytes the message took, end-of-data line included, if it ended.
    end: Option<usize>,
    saw_bare_lf: bool,
}

/// Feeds `input` to a receiver `piece` bytes at a time, as the session does.
fn receive(input: &[u8], bare_lf: BareLf, piece: usize) -> Received {
    let mut receiver = DataReceiver::new(bare_lf);
    let (mut content, mut buffer, mut fed, mut consumed, mut idle) =
        (Vec::new(), Vec::new(), 0, 0, 0);
    loop {
        let (used, step) = receiver.step(&buffer);
        idle = if used == 0 { idle + 1 } else { 0 };
        assert!(idle < 4, "the receiver makes no progress on {buffer:?}");
        let need_input = match step {
            DataStep::Content(bytes) => {
                content.extend_from_slice(bytes);
                false
            }
            DataStep::End => {
                return Received {
                    content,
                    end: Some(consumed + used),
                    saw_bare_lf: receiver.saw_bare_lf,
                };
            }
            DataStep::NeedInput => true,
        };
        buffer.drain(..used);
        consumed += used;
        if need_input {
            assert!(buffer.len() <= 2, "more than 2 bytes left undecided");
            if fed == input.len() {
                return Received {
                    content,
                    end: None,
                    saw_bare_lf: receiver.saw_bare_lf,
                };
            }
            let more = piece.min(input.len() - fed);
            buffer.extend_from_slice(&input[fed..fed + more]);
            fed += more;
        }
    }
}

/// RFC 5321 paths and mailboxes, with and without SMTPUTF8: what parses prints as what parses the same.
pub fn address(data: &[u8]) {
    let (flags, _, input) = options(data);
    let Ok(text) = str::from_utf8(input) else {
        return;
    };
    let utf8 = flags & 1 != 0;
    if let Ok((path, rest)) = address::parse_forward_path(text, utf8) {
        assert!(text.ends_with(rest));
        let printed = format!("<{path}>");
        let again = address::parse_forward_path(&printed, utf8);
        assert_eq!(again, Ok((path, "")), "{text:?}");
    }
    if let Ok((path, _)) = address::parse_reverse_path(text, utf8) {
        let printed = format!("<{path}>");
        let again = address::parse_reverse_path(&printed, utf8);
        assert_eq!(again.map(|(p, _)| p).ok(), Some(path), "{text:?}");
    }
    if let Ok(mailbox) = address::parse_mailbox(text, utf8) {
        let printed = mailbox.to_string();
        assert_eq!(
            address::parse_mailbox(&printed, utf8),
            Ok(mailbox),
            "{text:?}"
        );
    }
    let _ = address::domain(text, utf8);
}

/// A queue-file record as read back after a crash: its header line, then the envelope's text
/// form. What parses encodes to what parses the same, but for what the spool never keeps (time
/// below the microsecond, control characters).
pub fn envelope(data: &[u8]) {
    if let Some(line) = data.first_chunk::<HEADER_LEN>()
        && let Ok(header) = Header::parse(line)
    {
        assert_eq!(&header.encode(), line);
    }
    let text = data.get(HEADER_LEN..).unwrap_or(data);
    for bytes in [data, text] {
        // What the spool writes is a sanitized envelope (a file from elsewhere may hold control
        // characters, which are kept as read): that must read back as itself.
        if let Ok(envelope) = Envelope::parse(bytes) {
            let clean = envelope.sanitized();
            assert_eq!(Envelope::parse(clean.encode().as_bytes()), Ok(clean));
        }
    }
}

/// The journal as read back at start-up, whatever a crash or a disk left in it.
pub fn journal(data: &[u8]) {
    let replay = Journal::replay(data).expect("reading from memory cannot fail");
    assert!(replay.torn.is_none_or(|(at, _)| at < data.len() as u64));
}

/// A queue file as a crash, a bad disk or another program may leave it, scanned as at start-up (with repair):
/// the scan finds its sound records, each inside the file, or says what is wrong in a problem or an error;
/// after the repair, a second scan finds the same messages and no torn record.
pub fn queue_file(data: &[u8]) {
    let spool_dir = std::env::temp_dir().join(format!("postel-fuzz-queue-{}", std::process::id()));
    let spool = Spool::open(&spool_dir).expect("a spool in the temporary folder");
    let path = spool_dir.join("queue").join(FUZZED_QUEUE_FILE);
    std::fs::write(&path, data).expect("the queue file is written");
    let scanned = |spool: &Spool| match spool.scan(true) {
        Ok(scan) => Some(scan),
        Err(SpoolError::Format { .. }) => None,
        Err(e) => panic!("the scan failed: {e}"),
    };
    if let Some(first) = scanned(&spool) {
        let places = |scan: &Scan| -> Vec<_> {
            let place = |m: &Queued| (m.envelope.id.clone(), m.record_offset, m.body_offset, m.len);
            scan.messages.iter().map(place).collect()
        };
        for &(_, record, body, len) in &places(&first) {
            assert!(
                record < body && body + len <= data.len() as u64,
                "{record} {body} {len}"
            );
        }
        let second = scanned(&spool).expect("a repaired spool scans again");
        assert_eq!(places(&first), places(&second));
        assert!(
            !second.problems.iter().any(|p| p.contains("torn")),
            "{:?}",
            second.problems
        );
    }
    let _ = std::fs::remove_dir_all(&spool_dir);
}

/// The name the `queue_file` target gives its file: a queue id, as the scan expects of a queue file.
const FUZZED_QUEUE_FILE: &str = "66190BDCA74D7000305E";

/// An aliases file.
pub fn aliases(data: &[u8]) {
    if let Ok(text) = str::from_utf8(data)
        && let Ok(aliases) = Aliases::parse(text, "aliases")
    {
        for line in text.lines() {
            if let Some((name, _)) = line.split_once(':') {
                let _ = aliases.expand(name.trim());
            }
        }
    }
}

/// A DNS reply, answered against the question it carries (or a fixed one when it carries none).
pub fn dns_reply(data: &[u8]) {
    let id = data
        .first_chunk::<2>()
        .map_or(0, |id| u16::from_be_bytes(*id));
    let (id, name, qtype) = wire::question(data).unwrap_or((id, "example.test".into(), TYPE_MX));
    if let Ok(Decoded::Reply(reply)) = wire::decode(data, id, &name, qtype) {
        for qtype in [TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_MX] {
            let _ = reply.data_for(&name, qtype);
        }
    }
}

/// A configuration file.
pub fn config(data: &[u8]) {
    if let Ok(text) = str::from_utf8(data) {
        let _ = Config::parse(text, "postel.toml");
    }
}

/// A SASL exchange: the AUTH arguments on the first line, the client's responses on the next.
pub fn sasl(data: &[u8]) {
    let Ok(text) = str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    let (mechanism, initial) = match first.split_once(' ') {
        Some((mechanism, initial)) => (mechanism, Some(initial)),
        None => (first, None),
    };
    let (mut exchange, mut step) = Exchange::start(mechanism, initial);
    for line in lines {
        if !matches!(step, SaslStep::Challenge(_)) {
            break;
        }
        step = exchange.respond(line);
    }
}

/// An auth_users file.
pub fn auth_users(data: &[u8]) {
    if let Ok(text) = str::from_utf8(data) {
        let _ = AuthUsers::parse(text, "auth_users");
    }
}
