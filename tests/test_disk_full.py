"""A disk that fills up (doc/spool.md, doc/delivery.md): the spool answers 452 and keeps nothing half-written; below
`spool_min_free` MAIL waits while queued mail still leaves; a full mailbox disk defers the delivery, leaves the
mailbox as it was, and the retry delivers once there is room.

Needs a small file system: a 2 MiB tmpfs (mount needs root), else a loop-mounted ext4 image; skipped otherwise.
"""

import errno
import os
import shutil
import time
import subprocess

import pytest

import spool
from helpers import transaction, wait_until
from mboxutil import DELIVER, message_ids, messages, queue_empty, sent_lines


def _try(argv):
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


@pytest.fixture
def small_fs(tmp_path):
    """A mounted 2 MiB file system; unmounted at the end."""
    mount = tmp_path / "small"
    mount.mkdir()
    how = None
    if _try(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)]):
        how = "tmpfs"
    elif shutil.which("mkfs.ext4"):
        image = tmp_path / "small.img"
        with open(image, "wb") as f:
            f.truncate(4 * 1024 * 1024)
        if _try(["mkfs.ext4", "-q", "-F", str(image)]) and _try(["mount", "-o", "loop", str(image), str(mount)]):
            how = "ext4 on a loop device"
    if how is None:
        pytest.skip("cannot mount a small file system here (mount -t tmpfs and mount -o loop both refused: not root, "
                    "or no CAP_SYS_ADMIN in this container)")
    try:
        yield mount
    finally:
        if not _try(["umount", str(mount)]):
            _try(["umount", "-l", str(mount)])


def fill(folder, leave=0):
    """Fills the file system of `folder` (a folder at its root) with a file beside it until ENOSPC, then frees `leave`
    bytes of that file."""
    path = folder.parent / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
        os.fsync(fd)
    finally:
        os.close(fd)
    if leave:
        size = path.stat().st_size
        os.truncate(path, max(0, size - leave))
    return path


def send(postel, subject, size):
    """One message of about `size` bytes to alice; returns the end-of-data reply (or the first refusal)."""
    conn = postel.session()
    for line in ("MAIL FROM:<carol@example.org>", "RCPT TO:<alice@localhost>", "DATA"):
        r = conn.cmd(line)
        if r.code >= 400:
            return r, line
    body = (f"Subject: {subject}\r\nMessage-ID: <{subject}@disk.test>\r\n\r\n").encode()
    body += (b"z" * 78 + b"\r\n") * (size // 80 + 1)
    conn.send(body + b".\r\n")
    return conn.reply(timeout=20), "end of data"


def test_full_spool_answers_452_and_keeps_nothing_half_written(make_postel, small_fs):
    spool_dir = small_fs / "spool"
    spool_dir.mkdir()
    # No reserve: the writes themselves meet the full disk. Segments close after a second, so that a message
    # sent later than that needs a new one (a segment's room, zeros written ahead, takes records on a full disk).
    postel = make_postel(**DELIVER, spool_dir=str(spool_dir), spool_min_free=0, spool_segment_age="1s")
    r, _ = send(postel, "before", 1000)
    assert r.code == 250, r
    assert wait_until(lambda: sent_lines(postel.log(), to="alice"), 10)
    filler = fill(spool_dir, leave=16 * 1024)
    results = {}
    for subject, size in (("small1", 1000), ("large1", 300_000), ("small2", 1000), ("large2", 600_000)):
        results[subject] = send(postel, subject, size)
    # With 16 KiB free some small messages may still fit; the large ones cannot.
    for subject in ("large1", "large2"):
        r, stage = results[subject]
        assert r.code == 452 and stage == "end of data", f"{subject}: {r} at {stage}"
        assert r.enhanced and r.enhanced.startswith("4.3."), r
    # Now nothing fits at all, nor in the room of a segment still open: the last one closes and, its messages
    # delivered, goes; then the room it held is filled too.
    time.sleep(1.5)
    fill(spool_dir)
    r, stage = send(postel, "small3", 1000)
    assert r.code == 452 and stage == "end of data", f"small3 on a full disk: {r} at {stage}"
    # Nothing half-written: tmp/ is empty, every queue file parses, and no refused message is in it.
    assert wait_until(lambda: postel.tmp_files() == [], 5), f"left in tmp/: {postel.tmp_files()}"
    records = spool.read_queue(spool_dir)
    refused = [s for s, (r, _) in results.items() if r.code != 250] + ["small3"]
    for envelope, body in records:
        for s in refused:
            assert f"<{s}@disk.test>".encode() not in body, f"refused message {s} is in the queue: {envelope}"
    assert "panicked" not in postel.log()
    # Room again: mail flows.
    filler.unlink()
    r, _ = send(postel, "after", 1000)
    assert r.code == 250, r
    accepted = ["before"] + [s for s, (r, _) in results.items() if r.code == 250] + ["after"]
    assert wait_until(lambda: len(sent_lines(postel.log(), to="alice")) >= len(accepted), 15), postel.log()[-2000:]
    assert sorted(message_ids(postel.mailboxes / "alice")) == sorted(f"<{s}@disk.test>" for s in accepted)


def test_full_mailbox_disk_defers_and_the_retry_delivers(make_postel, small_fs):
    mail_dir = small_fs / "mail"
    mail_dir.mkdir()
    postel = make_postel(**DELIVER, mailbox_dir=str(mail_dir))
    box = mail_dir / "alice"
    r, _ = send(postel, "first", 2000)
    assert r.code == 250, r
    assert wait_until(lambda: sent_lines(postel.log(), to="alice"), 10)
    before = box.read_bytes()
    filler = fill(mail_dir, leave=16 * 1024)  # the next append gets part-way, then ENOSPC
    r, _ = send(postel, "second", 200_000)
    assert r.code == 250, r  # the spool is on another disk
    postel.wait_log(rf"{r.queue_id}: to=<alice>.*status=deferred", timeout=10)
    assert box.read_bytes() == before, "the mailbox was changed by a delivery that failed (not truncated back)"
    assert messages(box) and message_ids(box) == ["<first@disk.test>"]
    assert not (mail_dir / "alice.lock").exists(), "dot-lock left behind after the failed delivery"
    # Still full at the next retry: still deferred, still intact.
    assert wait_until(lambda: postel.log().count(f"{r.queue_id}: to=<alice>") >= 2, 10), postel.log()[-2000:]
    assert box.read_bytes() == before
    filler.unlink()
    assert wait_until(lambda: sent_lines(postel.log(), to="alice")[1:], 15), (
        f"not delivered after space was freed:\n{postel.log()[-2000:]}")
    assert message_ids(box) == ["<first@disk.test>", "<second@disk.test>"]
    ((_, raw1), (_, raw2)) = messages(box)
    assert raw2.count(b"z" * 78 + b"\n") == 200_000 // 80 + 1


def test_below_the_reserve_mail_waits_and_queued_mail_still_leaves(make_postel, small_fs):
    """Clients filled the spool's disk once, and the journal had no room left to say that queued mail was delivered,
    so nothing could leave and free it. Now MAIL gets 452 4.3.1 while less than spool_min_free is free, and the
    reserve keeps room for delivery records, so the queue drains."""
    spool_dir = small_fs / "spool"
    spool_dir.mkdir()
    postel = make_postel(**DELIVER, spool_dir=str(spool_dir), spool_min_free=512 * 1024)
    lock = postel.mailboxes / "alice.lock"
    lock.write_bytes(b"%d\n" % os.getpid())  # a live process holds alice's mailbox: the delivery waits
    r, _ = send(postel, "waiting", 1000)
    assert r.code == 250, r
    postel.wait_log(rf"{r.queue_id}: to=<alice>.*status=deferred", timeout=10)
    filler = fill(spool_dir, leave=256 * 1024)
    refused, stage = send(postel, "refused", 1000)
    assert (refused.code, refused.enhanced, stage) == (452, "4.3.1", "MAIL FROM:<carol@example.org>"), refused
    assert "insufficient system storage" in refused.text
    postel.wait_log(r"MAIL refused: \d+ KiB free for the spool, which keeps 512 KiB \(spool_min_free\)", timeout=5)
    # The queued message still leaves: its delivery is recorded in the reserve.
    lock.unlink()
    assert wait_until(lambda: sent_lines(postel.log(), to="alice"), 15), postel.log()[-2000:]
    assert message_ids(postel.mailboxes / "alice") == ["<waiting@disk.test>"]
    assert wait_until(lambda: queue_empty(postel.config_path), 10)
    filler.unlink()
    r, _ = send(postel, "after", 1000)
    assert r.code == 250, r
    assert wait_until(lambda: len(sent_lines(postel.log(), to="alice")) == 2, 15), postel.log()[-2000:]
    assert message_ids(postel.mailboxes / "alice") == ["<waiting@disk.test>", "<after@disk.test>"]
    assert "panicked" not in postel.log()


def test_soml_on_a_full_spool_says_450_and_logs_why(make_postel, small_fs, tmp_path):
    """SOML for a user at no terminal goes to the spool; when that fails, the reply says so without the server's
    paths, and the log has the reason, as for MAIL."""
    spool_dir = small_fs / "spool"
    spool_dir.mkdir()
    utmp = tmp_path / "utmp"
    utmp.write_bytes(b"")
    # No reserve (spool_min_free = 0), so that SOML is taken and the full disk is met where the message is queued.
    postel = make_postel(**DELIVER, spool_dir=str(spool_dir), spool_min_free=0, terminal_delivery=True,
                         utmp_file=str(utmp))
    fill(spool_dir)
    conn = postel.session()
    conn.expect("SOML FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)
    conn.send(b"Subject: soml\r\n\r\n" + b"z" * 8000 + b"\r\n.\r\n")
    r = conn.reply(timeout=20)
    assert r.code == 450, r
    assert "cannot queue the message for the mailboxes: the queue cannot take it now" in r.text, r
    assert str(spool_dir) not in r.text, r
    postel.wait_log(r"s\d+: message not queued: ")


def test_a_notification_that_finds_the_disk_full_does_not_deliver_twice(make_postel, small_fs, tmp_path):
    """An attempt delivered to alice and failed for bob (his mailbox is over its limit), and then the disk was full
    when the notification for bob was to be queued. The retry queued the notification and delivered to alice a
    second time: what the attempt had delivered was forgotten with the failed conclusion."""
    spool_dir = small_fs / "spool"
    spool_dir.mkdir()
    aliases = tmp_path / "aliases"
    aliases.write_text('slow: "|sleep 3"\n')
    # Segments close after a second: the notification, 3 s later, needs a new one on the full disk.
    postel = make_postel(**{**DELIVER, "retry_first": "2s", "retry_max": "2s"}, spool_dir=str(spool_dir),
                         spool_min_free=0, spool_segment_age="1s", mailbox_size_limit=20000, aliases=str(aliases),
                         alias_commands=True, local_users=["alice", "bob", "carol"])
    (postel.mailboxes / "bob").write_bytes(b"From x Thu Jan  1 00:00:00 2026\n\n" + b"x" * 30000 + b"\n\n")
    conn = postel.session()
    # A header section of 16 KiB, which the notification quotes.
    padding = b"".join(b"X-Padding-%03d: %s\r\n" % (n, b"p" * 60) for n in range(220))
    r = transaction(conn, "carol@localhost", ["alice@localhost", "bob@localhost", "slow@localhost"],
                    b"Subject: once\r\nMessage-ID: <once@disk.test>\r\n" + padding + b"\r\nhi\r\n")
    assert r.code == 250, r
    # alice and bob are done within the command's 3 s; the disk fills before the attempt concludes.
    box = postel.mailboxes / "alice"
    assert wait_until(lambda: box.exists() and message_ids(box), 10), postel.log()[-2000:]
    filler = fill(spool_dir)
    postel.wait_log(rf"{r.queue_id}: delivery results could not be recorded", timeout=15)
    # The retry finds the disk still full, then room.
    assert wait_until(lambda: postel.log().count(f"{r.queue_id}: delivery results could not be recorded") >= 2
                      or f"{r.queue_id}: to=<alice> (via <alice@localhost>), delay" in postel.log()
                      and "cannot record" in postel.log(), 20), postel.log()[-3000:]
    filler.unlink()
    postel.wait_log(rf"{r.queue_id}: sender non-delivery notification", timeout=20)
    assert wait_until(lambda: queue_empty(postel.config_path), 20), postel.log()[-3000:]
    assert message_ids(postel.mailboxes / "alice") == ["<once@disk.test>"], "alice got the message twice"
