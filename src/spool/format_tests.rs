//! Spools left by each released format version (src/spool/fixtures/vN, written by
//! fixtures/make-fixture.sh with the Postel of that version), read back by this one; and spools in a
//! version this Postel does not read, refused with a word on how to drain them.

use std::fs;
use std::path::Path;

use super::tests::{TempDir, read_body};
use super::*;

/// A copy of the fixture of `version`, to scan and repair.
fn fixture(version: u32) -> TempDir {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("src/spool/fixtures/v{version}"));
    let dir = TempDir::new(&format!("fixture-v{version}"));
    fs::copy(from.join("journal"), dir.0.join("journal")).unwrap();
    fs::create_dir(dir.0.join("queue")).unwrap();
    for file in fs::read_dir(from.join("queue")).unwrap() {
        let file = file.unwrap().path();
        fs::copy(&file, dir.0.join("queue").join(file.file_name().unwrap())).unwrap();
    }
    dir
}

/// What make-fixture.sh leaves queued, by Message-ID: sender, recipients, and the recipients
/// delivered already; every other recipient is deferred, after one attempt. The message to
/// bob is done and must not come back.
const QUEUED: [(&str, &str, &[&str], &[&str]); 3] = [
    (
        "<one@fixture.test>",
        "carol@example.org",
        &["alice@localhost", "x@remote.test"],
        &["alice"],
    ),
    ("<two@fixture.test>", "", &["y@remote.test"], &[]),
    (
        "<four@fixture.test>",
        "alice@localhost",
        &["z@remote.test"],
        &[],
    ),
];

fn message_id(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let header = text
        .lines()
        .find_map(|line| line.strip_prefix("Message-ID: "))
        .unwrap_or_else(|| panic!("no Message-ID in {text:?}"));
    header.to_string()
}

/// Checks that `scan` holds what the fixture holds.
fn check(spool: &Spool, scan: &Scan, version: u32) {
    assert_eq!(scan.problems, Vec::<String>::new(), "version {version}");
    assert_eq!(scan.messages.len(), QUEUED.len(), "version {version}");
    for (wanted, sender, recipients, delivered) in QUEUED {
        let message = scan
            .messages
            .iter()
            .find(|m| message_id(&read_body(spool, m)) == wanted)
            .unwrap_or_else(|| panic!("version {version}: {wanted} is not queued"));
        assert_eq!(message.envelope.sender, sender, "version {version}");
        assert_eq!(message.envelope.recipients, recipients, "version {version}");
        assert_eq!(message.state.attempts, 1, "version {version}: {wanted}");
        // From version 3 on, a small message's envelope says what its body takes in an mbox file.
        let mbox_size = (version >= 3).then(|| {
            let body = read_body(spool, message);
            crate::copy::convert(crate::copy::Format::MBOX, &body).len() as u64
        });
        assert_eq!(
            message.envelope.mbox_size, mbox_size,
            "version {version}: {wanted}"
        );
        // From version 4 on, it also summarizes the header section.
        let headers = (version >= 4).then(|| {
            let body = read_body(spool, message);
            HeaderSummary {
                len: headers::section(&body).len() as u64,
                received: 0,
                delivered_to: 0,
            }
        });
        assert_eq!(
            message.envelope.headers, headers,
            "version {version}: {wanted}"
        );
        for result in &message.state.results {
            let expected = delivered.contains(&result.recipient.as_str());
            let was = matches!(result.outcome, Outcome::Delivered);
            assert_eq!(was, expected, "version {version}: {wanted}: {result:?}");
            if !was {
                assert!(
                    matches!(&result.outcome, Outcome::Deferred { status, .. } if status == "4.4.1"),
                    "version {version}: {wanted}: {result:?}"
                );
            }
        }
    }
}

#[test]
fn every_released_format_is_read_back_and_rewritten_in_the_current_one() {
    for version in format::OLDEST_READABLE..=format::VERSION {
        let dir = fixture(version);
        let spool = Spool::open(&dir.0).unwrap();
        check(&spool, &spool.scan(false).unwrap(), version);

        // The lock holder's start-up scan compacts the journal into the current version, and
        // what it left reads back the same.
        let _lock = spool.lock().unwrap();
        check(&spool, &spool.scan(true).unwrap(), version);
        let journal = fs::read_to_string(dir.0.join("journal")).unwrap();
        assert!(journal.starts_with(format::LINE), "{journal}");
        check(
            &spool,
            &Spool::open(&dir.0).unwrap().scan(false).unwrap(),
            version,
        );
    }
}

/// The drain advice every refusal carries.
fn assert_refused(error: SpoolError, path: &Path, version: u32) {
    let text = error.to_string();
    assert!(
        matches!(&error, SpoolError::Format { path: p, version: v } if p == path && *v == version),
        "{error:?}"
    );
    assert!(
        text.contains(&format!("spool format version {version}"))
            && text.contains("postel queue run"),
        "{text}"
    );
}

#[test]
fn a_journal_in_a_newer_format_is_refused_and_left_alone() {
    let dir = fixture(format::VERSION);
    let journal = dir.0.join("journal");
    let text = fs::read_to_string(&journal).unwrap();
    let newer = text.replacen(format::LINE, "version 99\n", 1);
    fs::write(&journal, &newer).unwrap();
    let spool = Spool::open(&dir.0).unwrap();
    let _lock = spool.lock().unwrap();
    assert_refused(spool.scan(true).unwrap_err(), &journal, 99);
    assert_eq!(fs::read_to_string(&journal).unwrap(), newer);
}

#[test]
fn a_record_in_a_newer_format_is_refused_at_start_up_and_skipped_by_pick_up() {
    let dir = fixture(format::VERSION);
    let spool = Spool::open(&dir.0).unwrap();
    let (path, newer) = {
        let mut writer = spool.new_message(super::tests::envelope(&["bob@localhost"]));
        writer.write(b"Subject: newer\r\n\r\nbody\r\n");
        let queued = spool.commit(writer).unwrap();
        let bytes = fs::read(&queued.file).unwrap();
        (queued.file, bytes)
    };
    // The same record with another version line and its checksum made right again.
    let text = String::from_utf8(newer).unwrap();
    let envelope_and_body = text[record::HEADER_LEN..].replacen(format::LINE, "version 7\n", 1);
    let header = record::Header {
        envelope_len: (envelope_and_body.find("Subject").unwrap()) as u32,
        body_len: "Subject: newer\r\n\r\nbody\r\n".len() as u64,
        crc: crc32fast::hash(envelope_and_body.as_bytes()),
    };
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(envelope_and_body.as_bytes());
    fs::write(&path, bytes).unwrap();

    let fresh = Spool::open(&dir.0).unwrap();
    let picked = fresh.pick_up(&Default::default()).unwrap();
    assert!(
        picked
            .problems
            .iter()
            .any(|p| p.contains("spool format version 7")),
        "{:?}",
        picked.problems
    );
    let _lock = fresh.lock().unwrap();
    assert_refused(
        Spool::open(&dir.0).unwrap().scan(true).unwrap_err(),
        &path,
        7,
    );
    assert!(path.exists(), "an unreadable record is never deleted");
}

/// A change to what this Postel writes must bump the version and add a fixture: the current
/// version's fixture is exactly what the code writes today, record by record and entry by entry.
#[test]
fn the_current_fixture_is_what_this_postel_writes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("src/spool/fixtures/v{}", format::VERSION));
    for file in fs::read_dir(dir.join("queue")).unwrap() {
        let path = file.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        let mut offset = 0;
        while offset < bytes.len() {
            let line: &[u8; record::HEADER_LEN] = bytes[offset..offset + record::HEADER_LEN]
                .try_into()
                .unwrap();
            let header = record::Header::parse(line).unwrap();
            let start = offset + record::HEADER_LEN;
            let stored = &bytes[start..start + header.envelope_len as usize];
            let envelope = envelope::Envelope::parse(stored).unwrap();
            assert_eq!(
                envelope.encode().as_bytes(),
                stored,
                "{}: the envelope at byte {offset} is written differently now: bump the spool \
                 format version (src/spool/format.rs) and add a fixture",
                path.display()
            );
            offset = start + header.envelope_len as usize + header.body_len as usize;
        }
    }
    let journal = fs::read(dir.join("journal")).unwrap();
    let entries = journal
        .strip_prefix(format::LINE.as_bytes())
        .expect("the journal begins with its version line");
    for line in entries.split_inclusive(|&b| b == b'\n') {
        let (id, entry) = state::parse(line).unwrap();
        let mut written = Vec::new();
        state::encode(&id, &entry, &mut written);
        assert_eq!(
            written, line,
            "a journal entry is written differently now: bump the spool format version \
             (src/spool/format.rs) and add a fixture"
        );
    }
}
