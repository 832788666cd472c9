//! The spool's behaviour on a real directory: both commit paths, scanning, repair, locking.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;

use super::group::SEGMENT_LIMIT;
use super::record::HEADER_LEN;
use super::writer::SMALL_LIMIT;
use super::*;

pub(super) use crate::testing::TempDir;

pub(super) fn envelope(recipients: &[&str]) -> Envelope {
    let recipients = recipients.iter().map(|r| r.to_string()).collect();
    Envelope {
        client: Some("127.0.0.1".parse().unwrap()),
        helo: "client.example".to_string(),
        protocol: crate::smtp::Protocol::Esmtp,
        body: Some(crate::smtp::BodyType::EightBitMime),
        ..Envelope::new("alice@example.org".to_string(), recipients, Utc::now())
    }
}

/// A body of `len` bytes of CRLF lines, different for each `seed`.
pub(super) fn body(seed: usize, len: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(len + 40);
    let mut line = 0;
    while body.len() < len {
        body.extend_from_slice(format!("Message {seed}, line {line}.\r\n").as_bytes());
        line += 1;
    }
    body.truncate(len);
    body
}

/// Writes a message in pieces of 1000 bytes and commits it.
pub(super) fn send(spool: &Spool, envelope: Envelope, body: &[u8]) -> Result<Queued, SpoolError> {
    let mut writer = spool.new_message(envelope);
    body.chunks(1000).for_each(|piece| writer.write(piece));
    spool.commit(writer)
}

/// A spool in `dir` with its group-commit thread, each segment taking messages for a minute.
fn grouped(dir: &TempDir) -> Spool {
    let mut spool = Spool::open(&dir.0).unwrap();
    spool
        .start_group_commit(std::time::Duration::from_secs(60))
        .unwrap();
    spool
}

pub(super) fn read_body(spool: &Spool, queued: &Queued) -> Vec<u8> {
    let mut bytes = Vec::new();
    spool
        .read_body(queued)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

pub(super) fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Commits messages of these sizes and checks that a scan gives each back whole.
fn round_trip(spool: &Spool, sizes: &[usize]) {
    let mut committed = Vec::new();
    for (seed, &size) in sizes.iter().enumerate() {
        let queued = send(
            spool,
            envelope(&["bob@localhost", "postmaster"]),
            &body(seed, size),
        )
        .unwrap();
        assert_eq!(queued.len, size as u64);
        assert_eq!(read_body(spool, &queued), body(seed, size));
        committed.push(queued);
    }
    let scan = spool.scan(false).unwrap();
    assert_eq!(scan.problems, Vec::<String>::new());
    let mut scanned = scan.messages;
    scanned.sort_by(|a, b| a.envelope.id.cmp(&b.envelope.id));
    assert_eq!(scanned, committed);
    assert!(names(&spool.tmp).is_empty());
}

#[test]
fn small_and_large_messages_round_trip_with_group_commit() {
    let dir = TempDir::new("group");
    let spool = grouped(&dir);
    round_trip(
        &spool,
        &[0, 1, 1000, SMALL_LIMIT, SMALL_LIMIT + 1, 300 * 1024, 5],
    );
    // The small ones share a segment; each large one has a file of its own.
    assert_eq!(names(&spool.queue).len(), 3);
}

#[test]
fn small_and_large_messages_round_trip_in_files_of_their_own() {
    let dir = TempDir::new("files");
    let spool = Spool::open(&dir.0).unwrap();
    round_trip(&spool, &[0, 1000, SMALL_LIMIT + 1, 300 * 1024]);
    assert_eq!(names(&spool.queue).len(), 4);
}

#[test]
fn a_queued_message_is_named_by_its_new_id_and_keeps_its_envelope() {
    let dir = TempDir::new("id");
    let spool = Spool::open(&dir.0).unwrap();
    let sent = envelope(&["bob@localhost"]);
    let queued = send(&spool, sent.clone(), b"Subject: hi\r\n\r\nhello\r\n").unwrap();
    assert!(queued.envelope.id.as_str().parse::<QueueId>().is_ok());
    assert_eq!(queued.file, spool.queue.join(queued.envelope.id.as_str()));
    assert_eq!(
        queued.envelope,
        Envelope {
            id: queued.envelope.id.clone(),
            // "Subject: hi\n\nhello\n", counted as it arrived.
            mbox_size: Some(19),
            // "Subject: hi\r\n", up to the empty line.
            headers: Some(HeaderSummary {
                len: 13,
                received: 0,
                delivered_to: 0,
            }),
            ..sent.sanitized()
        }
    );
}

#[test]
fn a_large_message_keeps_its_header_summary_only_if_the_section_ends_in_memory() {
    let dir = TempDir::new("large-headers");
    let spool = Spool::open(&dir.0).unwrap();
    let body = "x".repeat(SMALL_LIMIT + 1);
    let text = format!("Received: a\r\nDelivered-To: b\r\n\r\n{body}\r\n");
    let queued = send(&spool, envelope(&["bob@localhost"]), text.as_bytes()).unwrap();
    let summary = HeaderSummary {
        len: 30,
        received: 1,
        delivered_to: 1,
    };
    assert_eq!(queued.envelope.headers, Some(summary));
    assert_eq!(queued.envelope.mbox_size, None, "counted only in memory");
    let scanned = &spool.scan(false).unwrap().messages;
    assert_eq!(scanned[0].envelope.headers, Some(summary));
    let long = format!("Received: a\r\nX-Long: {body}\r\n\r\nbody\r\n");
    let queued = send(&spool, envelope(&["bob@localhost"]), long.as_bytes()).unwrap();
    assert_eq!(queued.envelope.headers, None);
}

#[test]
fn concurrent_commits_get_distinct_ids_and_all_scan_back() {
    let dir = TempDir::new("concurrent");
    let spool = grouped(&dir);
    let spool = Arc::new(spool);
    let threads: Vec<_> = (0..16)
        .map(|thread| {
            let spool = Arc::clone(&spool);
            std::thread::spawn(move || {
                (0..25)
                    .map(|n| {
                        let seed = thread * 100 + n;
                        let rcpt = format!("user{seed}@localhost");
                        send(&spool, envelope(&[&rcpt]), &body(seed, 100 + seed * 37)).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut committed: Vec<Queued> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    committed.sort_by(|a, b| a.envelope.id.cmp(&b.envelope.id));
    committed.dedup_by(|a, b| a.envelope.id == b.envelope.id);
    assert_eq!(committed.len(), 400);

    let scan = spool.scan(false).unwrap();
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    assert_eq!(scan.messages.len(), 400);
    for queued in &scan.messages {
        let seed: usize = queued.envelope.recipients[0]["user".len()..]
            .split('@')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(read_body(&spool, queued), body(seed, 100 + seed * 37));
    }
}

#[test]
fn segments_rotate_once_full() {
    let dir = TempDir::new("rotate");
    let spool = grouped(&dir);
    // One segment's worth of the largest messages kept in memory, and two more for the next.
    let sizes = vec![SMALL_LIMIT; (SEGMENT_LIMIT / SMALL_LIMIT as u64) as usize + 2];
    round_trip(&spool, &sizes);
    assert_eq!(names(&spool.queue).len(), 2);
}

/// Waits (a bounded while) until `dir` holds `count` files.
fn wait_for_files(dir: &Path, count: usize) -> Vec<String> {
    for _ in 0..200 {
        if names(dir).len() == count {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    names(dir)
}

#[test]
fn a_finished_segment_disappears_on_a_quiet_host() {
    let dir = TempDir::new("segment-age");
    let mut spool = Spool::open(&dir.0).unwrap();
    spool
        .start_group_commit(std::time::Duration::from_millis(100))
        .unwrap();
    let delivered = send(&spool, envelope(&["bob@localhost"]), b"one\r\n").unwrap();
    let waiting = send(&spool, envelope(&["bob@localhost"]), b"two\r\n").unwrap();
    assert_eq!(delivered.file, waiting.file, "both in one segment");
    spool.finish(&delivered.envelope.id).unwrap();
    // Closed after its time, with one message still live: it stays until that one is finished.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(names(&spool.queue).len(), 1);
    spool.finish(&waiting.envelope.id).unwrap();
    assert_eq!(names(&spool.queue), Vec::<String>::new());
    // Closed with nothing live: it goes at its time, without another message to rotate it.
    let later = send(&spool, envelope(&["bob@localhost"]), b"three\r\n").unwrap();
    spool.finish(&later.envelope.id).unwrap();
    assert_eq!(wait_for_files(&spool.queue, 0), Vec::<String>::new());
    // A message after the close goes into a new segment.
    let next = send(&spool, envelope(&["bob@localhost"]), b"four\r\n").unwrap();
    assert_ne!(next.file, later.file);
}

#[test]
fn a_removed_message_is_erased_from_a_segment_the_others_keep() {
    let dir = TempDir::new("erase");
    let spool = grouped(&dir);
    let sentinel = b"Subject: a sentinel for the eraser\r\n\r\nsecret\r\n";
    let before = send(&spool, envelope(&["bob@localhost"]), &body(1, 500)).unwrap();
    let removed = send(&spool, envelope(&["sentinel@localhost"]), sentinel).unwrap();
    let after = send(&spool, envelope(&["bob@localhost"]), &body(2, 500)).unwrap();
    assert!(before.file == removed.file && removed.file == after.file);
    let size = fs::metadata(&removed.file).unwrap().len();
    spool.remove(&removed).unwrap();
    let bytes = fs::read(&removed.file).unwrap();
    assert_eq!(
        bytes.len() as u64,
        size,
        "the other records stay where they are"
    );
    for gone in [&b"sentinel"[..], b"secret"] {
        assert!(memchr::memmem::find(&bytes, gone).is_none());
    }
    assert_eq!(read_body(&spool, &after), body(2, 500));
    // Every later scan steps over the erased record, and reports nothing.
    for repair in [false, true] {
        let scan = spool.scan(repair).unwrap();
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        let ids: Vec<_> = scan.messages.iter().map(|m| &m.envelope.id).collect();
        assert_eq!(ids, [&before.envelope.id, &after.envelope.id]);
    }
    // A segment whose live records are all finished goes, erased records and all.
    drop(spool);
    let spool = Spool::open(&dir.0).unwrap();
    spool.scan(true).unwrap();
    spool.finish(&before.envelope.id).unwrap();
    spool.finish(&after.envelope.id).unwrap();
    spool.scan(true).unwrap();
    assert_eq!(names(&spool.queue), Vec::<String>::new());
}

#[test]
fn an_erasure_a_crash_cut_short_is_finished_by_the_repairing_scan() {
    let dir = TempDir::new("erase-crash");
    let mut spool = Spool::open(&dir.0).unwrap();
    let (segment, third) = three_in_a_segment(&mut spool);
    // What a crash after the mark and before the zeros leaves: the second record marked, its bytes still there.
    let second = spool.scan(false).unwrap().messages.remove(1);
    let start = offset_of(&second);
    let file = fs::OpenOptions::new().write(true).open(&segment).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &file,
        &[record::ERASED_MARK],
        start + record::ERASED_MARK_AT as u64,
    )
    .unwrap();
    let scan = spool.scan(false).unwrap();
    assert_eq!(scan.messages.len(), 2, "a marked record is skipped at once");
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    let scan = spool.scan(true).unwrap();
    assert_eq!(
        scan.problems,
        [format!(
            "{}: record erased at byte {start} still held its bytes after a crash; zeroed",
            segment.display()
        )]
    );
    let bytes = fs::read(&segment).unwrap();
    let record = &bytes[start as usize + HEADER_LEN..third as usize];
    assert!(record.iter().all(|&b| b == 0));
    assert!(spool.scan(true).unwrap().problems.is_empty());
}

#[test]
fn a_removed_message_alone_in_its_file_is_deleted() {
    let dir = TempDir::new("erase-alone");
    let spool = Spool::open(&dir.0).unwrap();
    let queued = send(&spool, envelope(&["bob@localhost"]), b"alone\r\n").unwrap();
    assert!(spool.live.alone(&queued.envelope.id));
    spool.remove(&queued).unwrap();
    assert!(!queued.file.exists());
}

#[test]
fn a_dropped_writer_leaves_nothing_behind() {
    let dir = TempDir::new("dropped");
    let mut spool = Spool::open(&dir.0).unwrap();
    for group in [false, true] {
        if group {
            spool
                .start_group_commit(std::time::Duration::from_secs(60))
                .unwrap();
        }
        for size in [10, 300 * 1024] {
            let mut writer = spool.new_message(envelope(&["bob@localhost"]));
            body(1, size)
                .chunks(1000)
                .for_each(|piece| writer.write(piece));
            drop(writer);
            assert!(names(&spool.tmp).is_empty());
            assert!(names(&spool.queue).is_empty());
        }
    }
}

#[test]
fn a_write_error_fails_the_commit_and_leaves_nothing_in_the_queue() {
    let dir = TempDir::new("write-error");
    let spool = Spool::open(&dir.0).unwrap();
    let mut writer = spool.new_message(envelope(&["bob@localhost"]));
    fs::remove_dir(&spool.tmp).unwrap();
    writer.write(&body(1, 300 * 1024));
    let error = spool.commit(writer).unwrap_err();
    assert!(
        matches!(&error, SpoolError::Io { path, .. } if path.starts_with(&spool.tmp)),
        "{error}"
    );
    assert!(names(&spool.queue).is_empty());
}

#[test]
fn a_failed_batch_is_refused_and_the_next_starts_a_new_segment() {
    let dir = TempDir::new("batch-error");
    let spool = grouped(&dir);
    fs::remove_dir(&spool.queue).unwrap();
    let error = send(&spool, envelope(&["bob@localhost"]), b"hello\r\n").unwrap_err();
    assert!(
        matches!(&error, SpoolError::Io { path, .. } if path.starts_with(&spool.queue)),
        "{error}"
    );
    fs::create_dir(&spool.queue).unwrap();
    round_trip(&spool, &[10]);
}

#[test]
fn a_message_without_recipients_is_refused() {
    let dir = TempDir::new("no-rcpt");
    let spool = Spool::open(&dir.0).unwrap();
    assert!(matches!(
        send(&spool, envelope(&[]), b"x"),
        Err(SpoolError::NoRecipients)
    ));
    assert!(names(&spool.queue).is_empty());
}

#[test]
fn control_characters_in_the_envelope_become_question_marks() {
    let dir = TempDir::new("controls");
    let spool = Spool::open(&dir.0).unwrap();
    let mut sent = envelope(&["bob@localhost\r\nrcpt <eve@example.com>"]);
    sent.helo = "evil\u{7}".to_string();
    let queued = send(&spool, sent, b"x").unwrap();
    assert_eq!(queued.envelope.helo, "evil?");
    assert_eq!(
        queued.envelope.recipients,
        ["bob@localhost??rcpt <eve@example.com>"]
    );
    assert_eq!(spool.scan(false).unwrap().messages, [queued]);
}

/// Three small messages in one segment; returns it and where the third record starts.
fn three_in_a_segment(spool: &mut Spool) -> (PathBuf, u64) {
    let (segment, third, _) = three_records(spool);
    (segment, third)
}

/// Three small messages in one segment; returns it, where the third record starts and where it ends
/// (the room the segment has for more records follows).
fn three_records(spool: &mut Spool) -> (PathBuf, u64, u64) {
    spool
        .start_group_commit(std::time::Duration::from_secs(60))
        .unwrap();
    let queued: Vec<Queued> = (0..3)
        .map(|n| send(spool, envelope(&["bob@localhost"]), &body(n, 500)).unwrap())
        .collect();
    assert!(queued.iter().all(|q| q.file == queued[0].file));
    let third = &queued[2];
    (
        third.file.clone(),
        offset_of(third),
        third.body_offset + third.len,
    )
}

/// Writes `bytes` at `offset` of `path`.
fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let file = File::options().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, bytes, offset).unwrap();
}

#[test]
fn a_segment_ends_in_zeros_that_a_scan_takes_for_room() {
    let dir = TempDir::new("room");
    let mut spool = Spool::open(&dir.0).unwrap();
    let (segment, _, end) = three_records(&mut spool);
    let size = fs::metadata(&segment).unwrap().len();
    assert!(size > end, "the segment has room after its records");
    assert_eq!(size % (256 * 1024), 0, "it grows by 256 KiB at a time");
    for repair in [false, true] {
        let scan = spool.scan(repair).unwrap();
        assert_eq!(
            (scan.messages.len(), scan.problems),
            (3, Vec::<String>::new())
        );
    }
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        size,
        "the room stays"
    );
    // A fourth record goes into the room: the file keeps its length.
    let fourth = send(&spool, envelope(&["bob@localhost"]), &body(3, 500)).unwrap();
    assert_eq!(
        (fourth.file.clone(), offset_of(&fourth)),
        (segment.clone(), end)
    );
    assert_eq!(fs::metadata(&segment).unwrap().len(), size);
    assert_eq!(spool.scan(false).unwrap().messages.len(), 4);
}

#[test]
fn a_record_begun_in_the_room_is_a_torn_one() {
    let dir = TempDir::new("room-torn");
    let mut spool = Spool::open(&dir.0).unwrap();
    let (segment, _, end) = three_records(&mut spool);
    // A crash while a batch was written: its header, and a piece of its body further on, reached the disk.
    write_at(&segment, end, b"POSTEL1 ");
    check_torn_tail(&spool, &segment, end, 3);
    // Only a piece further on reached it: the zeros before it are no room either.
    let dir = TempDir::new("room-torn-further");
    let mut spool = Spool::open(&dir.0).unwrap();
    let (segment, _, end) = three_records(&mut spool);
    write_at(&segment, end + 5000, b"x");
    check_torn_tail(&spool, &segment, end, 3);
}

/// Where a record starts, from what scan or commit says of it.
fn offset_of(queued: &Queued) -> u64 {
    queued.body_offset - HEADER_LEN as u64 - queued.envelope.encode().len() as u64
}

/// Checks that a scan reports a torn record at `at` and keeps the `sound` ones before it, and that
/// the repair cuts the file there.
fn check_torn_tail(spool: &Spool, segment: &Path, at: u64, sound: usize) {
    let before = fs::metadata(segment).unwrap().len();
    let scan = spool.scan(false).unwrap();
    assert_eq!(scan.messages.len(), sound);
    assert_eq!(scan.problems.len(), 1);
    assert!(scan.problems[0].starts_with(&format!(
        "{}: torn record at byte {at} (",
        segment.display()
    )));
    assert_eq!(
        fs::metadata(segment).unwrap().len(),
        before,
        "scan without repair changes nothing"
    );

    let scan = spool.scan(true).unwrap();
    assert_eq!(scan.messages.len(), sound);
    assert!(scan.problems[0].starts_with(&format!(
        "{}: torn record at byte {at} cut off",
        segment.display()
    )));
    assert_eq!(fs::metadata(segment).unwrap().len(), at);
    let scan = spool.scan(true).unwrap();
    assert!(scan.problems.is_empty() && scan.messages.len() == sound);
}

#[test]
fn a_torn_record_is_reported_and_cut_off_with_repair() {
    let dir = TempDir::new("torn");
    let mut spool = Spool::open(&dir.0).unwrap();
    let (segment, third, end) = three_records(&mut spool);
    File::options()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(end - 5)
        .unwrap();
    check_torn_tail(&spool, &segment, third, 2);
}

#[test]
fn garbage_after_the_last_record_is_reported_and_cut_off_with_repair() {
    let dir = TempDir::new("garbage");
    let mut spool = Spool::open(&dir.0).unwrap();
    let (segment, third) = three_in_a_segment(&mut spool);
    File::options()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(third)
        .unwrap();
    File::options()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(b"POSTEL1 garbage")
        .unwrap();
    check_torn_tail(&spool, &segment, third, 2);
}

#[test]
fn a_flipped_byte_fails_the_checksum() {
    let dir = TempDir::new("flipped");
    let mut spool = Spool::open(&dir.0).unwrap();
    let (segment, third, end) = three_records(&mut spool);
    let mut bytes = fs::read(&segment).unwrap();
    bytes[end as usize - 1] ^= 1;
    fs::write(&segment, bytes).unwrap();
    check_torn_tail(&spool, &segment, third, 2);
}

#[test]
fn a_record_with_a_bad_envelope_is_reported_and_kept() {
    let dir = TempDir::new("bad-envelope");
    let spool = Spool::open(&dir.0).unwrap();
    let first = send(&spool, envelope(&["bob@localhost"]), b"first\r\n").unwrap();
    let envelope = b"id nonsense\n";
    let mut crc = crc32fast::Hasher::new();
    crc.update(envelope);
    let header = record::Header {
        envelope_len: envelope.len() as u32,
        body_len: 0,
        crc: crc.finalize(),
    };
    let mut file = File::options().append(true).open(&first.file).unwrap();
    file.write_all(&[&header.encode()[..], envelope].concat())
        .unwrap();
    let before = fs::metadata(&first.file).unwrap().len();

    let scan = spool.scan(true).unwrap();
    assert_eq!(scan.messages, std::slice::from_ref(&first));
    let at = first.body_offset + first.len;
    assert_eq!(scan.problems.len(), 1);
    assert!(scan.problems[0].starts_with(&format!(
        "{}: bad envelope at byte {at} (",
        first.file.display()
    )));
    assert_eq!(fs::metadata(&first.file).unwrap().len(), before);
}

#[test]
fn foreign_files_are_reported_and_left_alone() {
    let dir = TempDir::new("foreign");
    let spool = Spool::open(&dir.0).unwrap();
    let queued = send(&spool, envelope(&["bob@localhost"]), b"hello\r\n").unwrap();
    fs::write(spool.queue.join("README"), "notes").unwrap();
    fs::write(
        spool.queue.join("19AB5D7C5E3F1001A3F2"),
        "From alice Tue Nov 24\n",
    )
    .unwrap();
    fs::create_dir(spool.queue.join("19AB5D7C5E3F1001A3F3")).unwrap();
    let scan = spool.scan(true).unwrap();
    assert_eq!(scan.messages, [queued]);
    assert_eq!(scan.problems.len(), 3);
    assert!(
        scan.problems
            .iter()
            .all(|p| p.ends_with(": not a queue file; left alone")),
        "{:?}",
        scan.problems
    );
    assert_eq!(names(&spool.queue).len(), 4);
}

#[test]
fn repair_removes_leftovers_and_empty_queue_files() {
    let dir = TempDir::new("leftovers");
    let spool = Spool::open(&dir.0).unwrap();
    fs::write(spool.tmp.join("19AB5D7C5E3F1001A3F2"), "half a message").unwrap();
    fs::write(spool.queue.join("19AB5D7C5E3F1001A3F4"), "").unwrap();
    fs::write(spool.queue.join("19AB5D7C5E3F1001A3F5"), "POSTEL1 0000").unwrap();

    let scan = spool.scan(false).unwrap();
    assert_eq!(scan.problems.len(), 2, "{:?}", scan.problems);
    assert_eq!(names(&spool.tmp).len() + names(&spool.queue).len(), 3);

    let scan = spool.scan(true).unwrap();
    assert_eq!(scan.problems.len(), 3, "{:?}", scan.problems);
    assert!(scan.problems[0].ends_with("19AB5D7C5E3F1001A3F2: unfinished message removed"));
    assert!(scan.problems[1].ends_with(
        "19AB5D7C5E3F1001A3F4: torn record at byte 0 cut off (the file is empty); file removed"
    ));
    assert!(scan.problems[2].contains("19AB5D7C5E3F1001A3F5: torn record at byte 0 cut off"));
    assert!(names(&spool.tmp).is_empty() && names(&spool.queue).is_empty());
}

#[test]
fn reading_a_body_cut_short_is_an_error() {
    let dir = TempDir::new("short-body");
    let spool = Spool::open(&dir.0).unwrap();
    let queued = send(&spool, envelope(&["bob@localhost"]), b"hello\r\n").unwrap();
    File::options()
        .write(true)
        .open(&queued.file)
        .unwrap()
        .set_len(queued.body_offset + 2)
        .unwrap();
    let error = spool.read_body(&queued).err().unwrap();
    assert!(matches!(error, SpoolError::Corrupt { offset, .. } if offset == queued.body_offset));
}

#[test]
fn bodies_read_through_one_open_file_follow_the_segment_as_it_grows() {
    let dir = TempDir::new("open-file");
    let spool = grouped(&dir);
    let first = send(&spool, envelope(&["bob@localhost"]), &body(1, 300)).unwrap();
    let (mut open, mut out) = (None, Vec::new());
    spool.read_body_into(&first, &mut open, &mut out).unwrap();
    assert_eq!(out, body(1, 300));
    // Committed after the file was opened, into the same segment, past the length seen then.
    let second = send(&spool, envelope(&["bob@localhost"]), &body(2, 500)).unwrap();
    assert_eq!(second.file, first.file);
    spool.read_body_into(&second, &mut open, &mut out).unwrap();
    assert_eq!(out, body(2, 500));
    spool.read_body_into(&first, &mut open, &mut out).unwrap();
    assert_eq!(out, body(1, 300));

    // A message in another file, then one cut short.
    let other_dir = TempDir::new("open-file-2");
    let alone = grouped(&other_dir);
    let other = send(&alone, envelope(&["bob@localhost"]), b"hello\r\n").unwrap();
    alone.read_body_into(&other, &mut open, &mut out).unwrap();
    assert_eq!(out, b"hello\r\n");
    File::options()
        .write(true)
        .open(&second.file)
        .unwrap()
        .set_len(second.body_offset + 2)
        .unwrap();
    let error = spool
        .read_body_into(&second, &mut open, &mut out)
        .err()
        .unwrap();
    assert!(matches!(error, SpoolError::Corrupt { offset, .. } if offset == second.body_offset));
}

#[test]
fn a_second_lock_is_busy_until_the_first_is_dropped() {
    let dir = TempDir::new("lock");
    let spool = Spool::open(&dir.0).unwrap();
    let lock = spool.lock().unwrap();
    assert!(matches!(
        Spool::open(&dir.0).unwrap().lock(),
        Err(SpoolError::Busy)
    ));
    drop(lock);
    spool.lock().unwrap();
}

#[test]
fn the_body_buffer_is_sized_from_the_declared_size_up_to_the_memory_limit() {
    let tmp = TempDir::new("declared-size");
    let spool = Spool::open(&tmp.0).unwrap();
    let capacity = |declared_size| {
        let envelope = Envelope {
            declared_size,
            ..envelope(&["bob@localhost"])
        };
        spool.new_message(envelope).memory_capacity().unwrap()
    };
    assert_eq!(capacity(None), 0);
    assert!(capacity(Some(5000)) >= 5000);
    assert_eq!(capacity(Some(20 << 20)), SMALL_LIMIT);
    assert_eq!(capacity(Some(u64::MAX)), SMALL_LIMIT);
}

mod byte_for_byte {
    use proptest::prelude::*;

    use super::*;

    /// Bodies of any bytes, on both sides of the size where a message stops sharing a segment.
    fn any_body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2000),
            (0..2 * SMALL_LIMIT, any::<u8>()).prop_map(|(len, seed)| {
                (0..len).map(|at| (at as u8).wrapping_mul(seed)).collect()
            }),
        ]
    }

    proptest! {
        // Each case syncs files to disk: a few dozen cases are what the time allows.
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn a_message_comes_out_of_the_spool_byte_for_byte_and_after_a_restart(
            bodies in prop::collection::vec(any_body(), 1..4),
            piece in 1usize..5000,
            group_commit in any::<bool>(),
        ) {
            let dir = TempDir::new("bytes");
            let mut spool = Spool::open(&dir.0).unwrap();
            if group_commit {
                spool.start_group_commit(std::time::Duration::from_secs(60)).unwrap();
            }
            let mut queued = Vec::new();
            for body in &bodies {
                let mut writer = spool.new_message(envelope(&["bob@localhost"]));
                body.chunks(piece).for_each(|chunk| writer.write(chunk));
                let message = spool.commit(writer).unwrap();
                prop_assert_eq!(&read_body(&spool, &message), body);
                queued.push(message);
            }
            drop(spool);
            let spool = Spool::open(&dir.0).unwrap();
            let scan = spool.scan(false).unwrap();
            prop_assert_eq!(scan.problems, Vec::<String>::new());
            prop_assert_eq!(scan.messages.len(), bodies.len());
            for (message, body) in queued.iter().zip(&bodies) {
                let found = scan
                    .messages
                    .iter()
                    .find(|m| m.envelope.id == message.envelope.id)
                    .expect("every committed message scans back");
                prop_assert_eq!(&read_body(&spool, found), body);
            }
        }
    }
}

#[test]
fn a_repairing_scan_in_another_process_never_takes_a_message_being_written() {
    let dir = TempDir::new("repair-race");
    let writer = Spool::open(&dir.0).unwrap();
    let repairer = Spool::open(&dir.0).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                repairer.scan(true).unwrap();
            }
        });
        let failures = (0..1000)
            .filter(|&n| send(&writer, envelope(&["bob@example.org"]), &body(n, 200)).is_err())
            .count();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            failures, 0,
            "commits lost their file in tmp/ to the other scan"
        );
    });
}

/// Found by the soak test: with the spool's disk full of queued mail, the repairing scan at start-up could
/// not write the compacted journal, so the server refused to start and the queue could never drain.
#[test]
fn a_journal_that_cannot_be_compacted_does_not_stop_the_scan() {
    let dir = TempDir::new("nocompact");
    let spool = Spool::open(&dir.0).unwrap();
    let queued = send(&spool, envelope(&["bob@localhost"]), b"hello\r\n").unwrap();
    drop(spool);
    // Where the new journal would be written, a directory: as on a full disk, it cannot be.
    fs::create_dir(dir.0.join("journal.new")).unwrap();
    let spool = Spool::open(&dir.0).unwrap();
    let scan = spool.scan(true).unwrap();
    assert_eq!(scan.messages.len(), 1);
    assert_eq!(read_body(&spool, &scan.messages[0]), b"hello\r\n");
    assert_eq!(scan.messages[0].envelope.id, queued.envelope.id);
}

#[test]
fn the_mbox_size_is_counted_for_a_body_kept_in_memory_only() {
    let dir = TempDir::new("mbox-size");
    let spool = Spool::open(&dir.0).unwrap();
    let small = b"Subject: x\r\n\r\nFrom here\r\nno end";
    let queued = send(&spool, envelope(&["bob@localhost"]), small).unwrap();
    let mbox = crate::copy::convert(crate::copy::Format::MBOX, small);
    assert_eq!(queued.envelope.mbox_size, Some(mbox.len() as u64));
    let rescanned = spool.scan(false).unwrap().messages;
    assert_eq!(rescanned[0].envelope.mbox_size, Some(mbox.len() as u64));
    let large = vec![b'x'; SMALL_LIMIT + 1];
    let queued = send(&spool, envelope(&["bob@localhost"]), &large).unwrap();
    assert_eq!(
        queued.envelope.mbox_size, None,
        "its envelope went to disk before its body"
    );
    assert_eq!(read_body(&spool, &queued), large);
}
