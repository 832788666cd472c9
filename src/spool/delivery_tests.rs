//! The delivery state on a real directory: record and finish through restarts, the deletion of
//! finished queue files, the journal's compaction and repair, pick-up, and the lock's owner.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};

use super::group::SEGMENT_LIMIT;
use super::tests::{TempDir, body, envelope, names, send};
use super::writer::SMALL_LIMIT;
use super::*;

fn delivered(recipient: &str) -> RecipientResult {
    RecipientResult {
        recipient: recipient.to_string(),
        outcome: Outcome::Delivered,
    }
}

fn deferred(recipient: &str, minutes: i64) -> RecipientResult {
    RecipientResult {
        recipient: recipient.to_string(),
        outcome: Outcome::Deferred {
            status: "4.2.2".to_string(),
            diagnostic: "mailbox full (try again)".to_string(),
            next_try: Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap()
                + Duration::minutes(minutes)
                + Duration::nanoseconds(123),
        },
    }
}

fn failed(recipient: &str) -> RecipientResult {
    RecipientResult {
        recipient: recipient.to_string(),
        outcome: Outcome::Failed {
            status: "5.1.1".to_string(),
            diagnostic: "no such user\r\nreally".to_string(),
        },
    }
}

/// A spool as the daemon opens it: locked, scanned with repair, group commit started.
fn daemon(dir: &TempDir) -> (Spool, SpoolLock, Scan) {
    let mut spool = Spool::open(&dir.0).unwrap();
    let lock = spool.lock().unwrap();
    let scan = spool.scan(true).unwrap();
    spool
        .start_group_commit(std::time::Duration::from_secs(60))
        .unwrap();
    (spool, lock, scan)
}

/// The messages a fresh spool on `dir` scans (without repair), by id.
fn rescan(dir: &TempDir) -> Vec<Queued> {
    let scan = Spool::open(&dir.0).unwrap().scan(false).unwrap();
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    by_id(scan.messages)
}

fn by_id(mut messages: Vec<Queued>) -> Vec<Queued> {
    messages.sort_by(|a, b| a.envelope.id.cmp(&b.envelope.id));
    messages
}

/// The journal's entries: everything after its version line.
fn journal_text(dir: &TempDir) -> String {
    let text = fs::read_to_string(dir.0.join("journal")).unwrap_or_default();
    match text.strip_prefix(format::LINE) {
        Some(entries) => entries.to_string(),
        None => {
            assert_eq!(text, "", "a journal begins with its version line");
            text
        }
    }
}

#[test]
fn recorded_results_and_finished_messages_survive_a_restart() {
    let dir = TempDir::new("record");
    let queued: Vec<Queued> = {
        let (spool, _lock, _) = daemon(&dir);
        let rcpts = ["alice@localhost", "|/usr/bin/prog -x", "bob@localhost"];
        let mut queued: Vec<Queued> = (0..3)
            .map(|n| send(&spool, envelope(&rcpts), &body(n, 300)).unwrap())
            .collect();
        let attempts = [
            (0, vec![deferred(rcpts[0], 10), delivered(rcpts[1])]),
            (1, vec![failed(rcpts[2])]),
            (0, vec![deferred(rcpts[0], 40), failed(rcpts[2])]),
            (2, vec![delivered(rcpts[0])]),
        ];
        for (n, results) in attempts {
            spool.record(&queued[n].envelope.id, &results).unwrap();
            queued[n].state.apply(results);
        }
        spool.finish(&queued[2].envelope.id).unwrap();
        queued.truncate(2);
        queued
    };
    assert_eq!(queued[0].state.attempts, 2);
    assert_eq!(
        queued[0].state.outcome("alice@localhost"),
        Some(&deferred("alice@localhost", 40).outcome)
    );
    assert_eq!(
        queued[0].state.next_try(),
        Some(Utc.with_ymd_and_hms(2026, 11, 24, 6, 40, 0).unwrap() + Duration::nanoseconds(123))
    );
    assert_eq!(rescan(&dir), queued);

    // The restarted daemon sees the same, and so does the one after it (the journal compacted).
    for _ in 0..2 {
        let (_spool, _lock, scan) = daemon(&dir);
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(by_id(scan.messages), queued);
    }
}

#[test]
fn deliveries_recorded_at_once_take_one_journal_line_each_and_survive_a_restart() {
    let dir = TempDir::new("record-delivered");
    let rcpts = ["a@example.test", "b@example.test", "c@example.test"];
    let queued = {
        let (spool, _lock, _) = daemon(&dir);
        let queued = send(&spool, envelope(&rcpts), &body(0, 300)).unwrap();
        spool
            .record_delivered(&queued.envelope.id, &rcpts[..2])
            .unwrap();
        spool
            .record_delivered(&queued.envelope.id, &[] as &[&str])
            .unwrap();
        queued
    };
    let id = queued.envelope.id.to_string();
    assert_eq!(
        journal_text(&dir)
            .lines()
            .filter(|line| line.contains(&id))
            .count(),
        2,
        "{}",
        journal_text(&dir)
    );
    let [back] = &rescan(&dir)[..] else {
        panic!("not one message scanned back")
    };
    assert_eq!(back.envelope, queued.envelope);
    let outcomes: Vec<_> = rcpts.iter().map(|r| back.state.outcome(r)).collect();
    assert_eq!(
        outcomes,
        [Some(&Outcome::Delivered), Some(&Outcome::Delivered), None]
    );
    assert_eq!(
        back.state.attempts, 0,
        "recording deliveries at once counts no attempt"
    );
}

#[test]
fn a_segment_is_deleted_once_rotated_away_and_all_its_messages_are_finished() {
    let dir = TempDir::new("segment-delete");
    let (spool, _lock, _) = daemon(&dir);
    // Messages of the largest size kept in memory: all but the last that fit stay under the segment
    // limit; the last fills the segment.
    let under = (SEGMENT_LIMIT / SMALL_LIMIT as u64 - 1) as usize;
    let first: Vec<Queued> = (0..under)
        .map(|n| send(&spool, envelope(&["bob@localhost"]), &body(n, SMALL_LIMIT)).unwrap())
        .collect();
    let segment = first[0].file.clone();
    assert!(first.iter().all(|q| q.file == segment));
    for queued in &first {
        spool.finish(&queued.envelope.id).unwrap();
    }
    assert!(
        segment.exists(),
        "the group-commit thread still appends to it"
    );
    let last = send(
        &spool,
        envelope(&["bob@localhost"]),
        &body(under, SMALL_LIMIT),
    )
    .unwrap();
    assert_eq!(last.file, segment);
    assert!(segment.exists(), "one message in it is still live");

    // The next segment is still being appended to when its only message is finished.
    let next = send(&spool, envelope(&["bob@localhost"]), b"hello\r\n").unwrap();
    assert_ne!(next.file, segment);
    spool.finish(&last.envelope.id).unwrap();
    assert!(!segment.exists());
    spool.finish(&next.envelope.id).unwrap();
    assert!(next.file.exists());
    drop(spool);
    drop(_lock);

    let (spool, _lock, scan) = daemon(&dir);
    assert!(scan.messages.is_empty() && scan.problems.is_empty());
    assert!(names(&spool.queue).is_empty());
}

#[test]
fn a_message_in_a_file_of_its_own_is_deleted_at_finish() {
    let dir = TempDir::new("own-file");
    let (spool, _lock, _) = daemon(&dir);
    let big = send(&spool, envelope(&["bob@localhost"]), &body(1, 300 * 1024)).unwrap();
    let small = send(&spool, envelope(&["bob@localhost"]), b"hello\r\n").unwrap();
    assert_eq!(names(&spool.queue).len(), 2);
    spool
        .record(&big.envelope.id, &[delivered("bob@localhost")])
        .unwrap();
    spool.finish(&big.envelope.id).unwrap();
    assert!(!big.file.exists());
    assert_eq!(rescan(&dir), [small]);
}

#[test]
fn a_finished_message_whose_file_survived_is_neither_scanned_nor_kept() {
    let dir = TempDir::new("survived");
    let spool = Spool::open(&dir.0).unwrap();
    let done = send(&spool, envelope(&["bob@localhost"]), b"done\r\n").unwrap();
    let live = send(&spool, envelope(&["bob@localhost"]), b"live\r\n").unwrap();
    // A spool that never saw the message (as after a crash between the journal entry and the
    // deletion) finishes it: the entry is written, the file stays.
    let other = Spool::open(&dir.0).unwrap();
    other.finish(&done.envelope.id).unwrap();
    assert!(done.file.exists());
    assert_eq!(rescan(&dir), std::slice::from_ref(&live));

    let (spool, _lock, scan) = daemon(&dir);
    assert_eq!(scan.messages, [live]);
    assert!(!done.file.exists());
    assert_eq!(names(&spool.queue).len(), 1);
    assert_eq!(
        journal_text(&dir),
        "",
        "nothing about a deleted file is kept"
    );
}

#[test]
fn compaction_keeps_the_live_state_and_drops_what_is_finished() {
    let dir = TempDir::new("compact");
    let (spool, lock, _) = daemon(&dir);
    let mut kept = send(&spool, envelope(&["a", "b"]), b"kept\r\n").unwrap();
    let neighbour = send(&spool, envelope(&["a"]), b"neighbour\r\n").unwrap();
    let own = send(&spool, envelope(&["a"]), &body(1, 200 * 1024)).unwrap();
    assert_eq!(kept.file, neighbour.file);
    for queued in [&kept, &neighbour, &own] {
        for minutes in 0..5 {
            spool
                .record(
                    &queued.envelope.id,
                    &[deferred("a", minutes), delivered("b")],
                )
                .unwrap();
        }
    }
    spool.finish(&neighbour.envelope.id).unwrap();
    spool.finish(&own.envelope.id).unwrap();
    kept.state.results = vec![deferred("a", 4), delivered("b")];
    kept.state.attempts = 5;
    assert_eq!(journal_text(&dir).lines().count(), 3 * 5 * 3 + 2);
    drop((spool, lock));

    let (spool, lock, scan) = daemon(&dir);
    assert_eq!(scan.messages, [kept.clone()]);
    let text = journal_text(&dir);
    let lines: Vec<&str> = text.lines().collect();
    let (id, neighbour_id) = (kept.envelope.id.as_str(), neighbour.envelope.id.as_str());
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with(&format!("{id} deferred a 2026-11-24T06:04:00.000000123Z ")));
    assert!(lines[1].starts_with(&format!("{id} delivered b ")));
    assert!(lines[2].starts_with(&format!("{id} attempts 5 ")));
    assert!(
        lines[3].starts_with(&format!("{neighbour_id} done ")),
        "its segment is still there"
    );
    drop((spool, lock));

    let (spool, lock, scan) = daemon(&dir);
    assert_eq!(scan.messages, [kept.clone()]);
    assert_eq!(journal_text(&dir), text);
    spool.finish(&kept.envelope.id).unwrap();
    assert!(names(&spool.queue).is_empty());
    drop((spool, lock));

    let (_spool, _lock, scan) = daemon(&dir);
    assert!(scan.messages.is_empty());
    assert_eq!(journal_text(&dir), "");
}

#[test]
fn a_torn_journal_tail_is_reported_and_cut_off_at_start_up() {
    let dir = TempDir::new("torn-journal");
    let (spool, lock, _) = daemon(&dir);
    let mut queued = send(&spool, envelope(&["a"]), b"hello\r\n").unwrap();
    let id = queued.envelope.id.clone();
    spool.record(&id, &[deferred("a", 1)]).unwrap();
    queued.state.apply([deferred("a", 1)]);
    drop((spool, lock));
    let journal = dir.0.join("journal");
    let good = fs::metadata(&journal).unwrap().len();
    let mut file = File::options().append(true).open(&journal).unwrap();
    file.write_all(format!("{id} done").as_bytes()).unwrap();

    let scan = Spool::open(&dir.0).unwrap().scan(false).unwrap();
    assert_eq!(scan.messages, [queued.clone()]);
    assert_eq!(
        scan.problems,
        [format!(
            "{}: torn entry at byte {good} (the line has no newline at its end)",
            journal.display()
        )]
    );
    assert!(
        fs::metadata(&journal).unwrap().len() > good,
        "scan without repair changes nothing"
    );

    let (_spool, _lock, scan) = daemon(&dir);
    assert_eq!(scan.messages, [queued]);
    assert_eq!(
        scan.problems,
        [format!(
            "{}: torn entry at byte {good} cut off (the line has no newline at its end)",
            journal.display()
        )]
    );
    assert_eq!(fs::metadata(&journal).unwrap().len(), good);
}

#[test]
fn an_append_after_a_torn_tail_starts_a_line_of_its_own_and_bad_lines_are_skipped() {
    let dir = TempDir::new("append-after-torn");
    let spool = Spool::open(&dir.0).unwrap();
    let mut queued = send(&spool, envelope(&["a"]), b"hello\r\n").unwrap();
    let id = queued.envelope.id.clone();
    fs::write(
        dir.0.join("journal"),
        format!("garbage\n{id} delivered a 00000000\n{id} del"),
    )
    .unwrap();
    // A command that holds the lock but never repaired the journal (`postel queue remove`).
    let _lock = spool.lock().unwrap();
    spool.record(&id, &[deferred("a", 2)]).unwrap();
    queued.state.apply([deferred("a", 2)]);

    let scan = Spool::open(&dir.0).unwrap().scan(false).unwrap();
    assert_eq!(scan.messages, [queued]);
    let journal = dir.0.join("journal");
    assert_eq!(
        scan.problems,
        [
            format!(
                "{}: bad entry at byte 0 (no checksum); skipped",
                journal.display()
            ),
            format!(
                "{}: bad entry at byte 8 (checksum mismatch); skipped",
                journal.display()
            ),
        ]
    );
}

#[test]
fn concurrent_records_are_all_durable_and_all_scanned_back() {
    let dir = TempDir::new("concurrent-record");
    let (spool, _lock, _) = daemon(&dir);
    let spool = Arc::new(spool);
    let threads: Vec<_> = (0..16)
        .map(|thread| {
            let spool = Arc::clone(&spool);
            std::thread::spawn(move || {
                (0..20)
                    .map(|n| {
                        let rcpt = format!("user {thread}-{n}@localhost");
                        let mut queued = send(&spool, envelope(&[&rcpt]), b"x\r\n").unwrap();
                        for minutes in 0..3 {
                            let results = [deferred(&rcpt, minutes)];
                            spool.record(&queued.envelope.id, &results).unwrap();
                            queued.state.apply(results);
                        }
                        if n % 4 == 0 {
                            spool.finish(&queued.envelope.id).unwrap();
                            None
                        } else {
                            Some(queued)
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let live: Vec<Queued> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .flatten()
        .collect();
    assert_eq!(live.len(), 16 * 15);
    assert_eq!(rescan(&dir), by_id(live));
}

#[test]
fn the_journal_is_compacted_while_the_server_runs() {
    let dir = TempDir::new("online-compact");
    let mut spool = Spool::open(&dir.0).unwrap();
    let _lock = spool.lock().unwrap();
    spool.scan(true).unwrap();
    // Files of their own, so that finished messages' files (and entries) go at once.
    let mut queued: Vec<Queued> = (0..20)
        .map(|n| send(&spool, envelope(&["a"]), &body(n, 100)).unwrap())
        .collect();
    spool
        .start_group_commit(std::time::Duration::from_secs(60))
        .unwrap();
    spool.journal.set_compact_min(8 * 1024);
    let first = queued[0].envelope.id.clone();
    for round in 0..10 {
        for message in &mut queued {
            let results = [deferred("a", round)];
            spool.record(&message.envelope.id, &results).unwrap();
            message.state.apply(results);
        }
        let finished = queued.remove(0);
        spool.finish(&finished.envelope.id).unwrap();
        assert!(!finished.file.exists());
    }
    // About 45 KiB were appended; what is left is the live state and what came after the last
    // compaction.
    let text = journal_text(&dir);
    assert!(text.len() < 12 * 1024, "{} bytes", text.len());
    assert!(!text.contains(first.as_str()), "{text}");
    assert_eq!(rescan(&dir), queued);
}

#[test]
fn pick_up_finds_what_another_program_queued_and_nothing_else() {
    let dir = TempDir::new("pick-up");
    fs::create_dir_all(dir.0.join("queue")).unwrap();
    fs::write(dir.0.join("queue/notes"), "not mail").unwrap();
    let (spool, _lock, scan) = daemon(&dir);
    assert_eq!(scan.problems.len(), 1);
    let mine = [
        send(&spool, envelope(&["a"]), b"small\r\n").unwrap(),
        send(&spool, envelope(&["a"]), &body(1, 200 * 1024)).unwrap(),
    ];
    let none = HashSet::new();
    let picked = spool.pick_up(&none).unwrap();
    assert!(picked.messages.is_empty() && picked.problems.is_empty());

    // `postel sendmail` while the daemon runs: its own Spool, no lock, no group commit.
    let sendmail = Spool::open(&dir.0).unwrap();
    let theirs = send(&sendmail, envelope(&["b"]), b"from sendmail\r\n").unwrap();
    let known_one = send(&sendmail, envelope(&["c"]), b"known\r\n").unwrap();
    let known = HashSet::from([known_one.file.clone(), mine[0].file.clone()]);
    let picked = spool.pick_up(&known).unwrap();
    assert!(picked.problems.is_empty(), "{:?}", picked.problems);
    assert_eq!(picked.messages, std::slice::from_ref(&theirs));
    assert!(spool.pick_up(&known).unwrap().messages.is_empty());

    // Picked up, it is the daemon's to finish.
    spool.finish(&theirs.envelope.id).unwrap();
    assert!(!theirs.file.exists());
    assert!(mine.iter().all(|q| q.file.exists()));
}

#[test]
fn the_owner_is_the_process_that_holds_the_lock() {
    let dir = TempDir::new("owner");
    let spool = Spool::open(&dir.0).unwrap();
    assert_eq!(spool.owner(), None, "no lock file yet");
    let lock = spool.lock().unwrap();
    // flock belongs to the open file, so another Spool of this process sees it held.
    let other = Spool::open(&dir.0).unwrap();
    assert_eq!(other.owner(), Some(std::process::id()));
    drop(lock);
    assert_eq!(other.owner(), None);

    let script = "import fcntl, os, sys\n\
                  fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n\
                  fcntl.flock(fd, fcntl.LOCK_EX)\n\
                  os.ftruncate(fd, 0)\n\
                  os.write(fd, b'%d\\n' % os.getpid())\n\
                  print('locked', flush=True)\n\
                  sys.stdin.read()\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(dir.0.join("lock"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "locked\n");
    assert_eq!(spool.owner(), Some(child.id()));
    assert!(matches!(spool.lock(), Err(SpoolError::Busy)));
    drop(child.stdin.take());
    child.wait().unwrap();
    assert_eq!(spool.owner(), None);
    let _lock = spool.lock().unwrap();
    assert_eq!(
        fs::read_to_string(dir.0.join("lock")).unwrap(),
        format!("{}\n", std::process::id())
    );
}

#[test]
fn a_message_another_program_is_still_writing_survives_a_repair() {
    let dir = TempDir::new("writing");
    let inetd = Spool::open(&dir.0).unwrap();
    let mut writer = inetd.new_message(envelope(&["a"]));
    writer.write(&body(1, SMALL_LIMIT + 1));
    let (spool, _lock, scan) = daemon(&dir);
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    assert_eq!(names(&spool.tmp).len(), 1);
    writer.write(b"the end\r\n");
    let queued = inetd.commit(writer).unwrap();
    assert_eq!(spool.pick_up(&HashSet::new()).unwrap().messages, [queued]);
}
