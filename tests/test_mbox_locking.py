"""Mailbox locking (doc/delivery.md "Mailbox format and locking"): the dot-lock and the fcntl lock, as other programs
take them, hold delivery off; a lock held too long defers the delivery, and the retry delivers once it is gone."""

import fcntl
import mailbox
import os
import re
import smtplib
import subprocess
import sys
import threading
import time

import pytest

from helpers import wait_until
from mboxutil import DELIVER, deliver, message_ids, messages, mutt_message_ids, queue_list, sent_lines

# A second process that keeps taking the mailbox's locks as liblockfile and mutt do: the dot-lock <mbox>.lock
# (O_EXCL, holding its PID) and then an fcntl write lock, ~0.3 s each time. While it holds them the mailbox must not
# change; it writes what it saw to REPORT when STOP appears.
LOCKER = r'''
import fcntl, os, sys, time
mbox, stop, report = sys.argv[1:4]
lock = mbox + ".lock"
held = changed = 0
notes = []
open(stop + ".started", "w").close()
while not os.path.exists(stop):
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        time.sleep(0.01)
        continue
    try:
        os.write(fd, b"%d\n" % os.getpid())
        os.close(fd)
        f = open(mbox, "ab")
        deadline = time.monotonic() + 5
        while True:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    notes.append("fcntl lock not free within 5 s while holding the dot-lock")
                    break
                time.sleep(0.01)
        before = os.fstat(f.fileno()).st_size
        time.sleep(0.3)
        after = os.fstat(f.fileno()).st_size
        if after != before:
            changed += 1
            notes.append(f"mailbox grew from {before} to {after} bytes while the locker held both locks")
        if not os.path.exists(lock) or open(lock, "rb").read() != b"%d\n" % os.getpid():
            notes.append("the locker's dot-lock was removed or replaced while it held it")
        fcntl.lockf(f, fcntl.LOCK_UN)
        f.close()
        held += 1
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
    time.sleep(0.15)
with open(report, "w") as out:
    out.write(f"held {held}\n" + "".join(n + "\n" for n in notes))
'''


def read_locked(path, timeout=10.0):
    """Reads the mailbox with Python's mailbox.mbox under lock()/unlock() (fcntl lock and dot-lock): its Message-IDs."""
    deadline = time.monotonic() + timeout
    while True:
        box = mailbox.mbox(str(path), create=False)
        try:
            try:
                box.lock()
            except mailbox.ExternalClashError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"Python's mailbox could not lock {path} within {timeout}s")
                time.sleep(0.02)
                continue
            try:
                before = os.path.getsize(path)
                ids = [box.get_message(k)["Message-ID"] for k in box.keys()]
                # The raw file must parse too, under the same lock.
                raw = messages(path)
                after = os.path.getsize(path)
            finally:
                box.unlock()
            assert before == after, f"{path} grew from {before} to {after} bytes while Python's mailbox held its locks"
            assert len(raw) == len(ids), f"{len(raw)} messages by the file's From_ lines, {len(ids)} by Python"
            return ids
        finally:
            box.close()


def test_parallel_sessions_and_lockers_lose_nothing(make_postel, tmp_path):
    server = make_postel(**DELIVER, workers=20)
    box = server.mailboxes / "alice"
    box.touch()
    stop, report = tmp_path / "stop", tmp_path / "report"
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(box), str(stop), str(report)])
    assert wait_until(lambda: (tmp_path / "stop.started").exists(), 10), "the locker did not start"
    sessions, per_session = 12, 12
    errors = []

    def send(n):
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
                client.ehlo(f"sender{n}.test")
                for i in range(per_session):
                    msg = (f"From: sender{n}@example.org\r\nTo: alice@localhost\r\nSubject: {n}/{i}\r\n"
                           f"Message-ID: <{n}.{i}@concurrency.test>\r\n\r\nFrom session {n}, message {i}.\r\n"
                           f".\r\n>From\r\n").encode()
                    assert client.sendmail(f"sender{n}@example.org", ["alice@localhost"], msg) == {}
                    time.sleep(0.2)  # spread the load over a few seconds, many lock rounds
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(f"session {n}: {e!r}")

    try:
        threads = [threading.Thread(target=send, args=(n,)) for n in range(sessions)]
        for t in threads:
            t.start()
        reads = 0
        total = sessions * per_session
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ids = read_locked(box)
            reads += 1
            assert len(ids) == len(set(ids)), f"a message is in the mailbox twice: {sorted(ids)}"
            if len(sent_lines(server.log(), to="alice")) >= total and not any(t.is_alive() for t in threads):
                break
            time.sleep(0.1)
        for t in threads:
            t.join(20)
        assert not errors, errors
    finally:
        stop.touch()
        try:
            locker.wait(10)
        finally:
            if locker.poll() is None:
                locker.kill()
                locker.wait()
    notes = report.read_text().splitlines()
    assert notes[0].startswith("held ") and int(notes[0].split()[1]) >= 3, notes
    assert notes[1:] == [], notes
    expected = {f"<{n}.{i}@concurrency.test>" for n in range(sessions) for i in range(per_session)}
    ids = read_locked(box)
    assert sorted(ids) == sorted(expected), (
        f"missing {sorted(expected - set(ids))[:10]}, extra/duplicated "
        f"{sorted(i for i in ids if ids.count(i) > 1 or i not in expected)[:10]}")
    assert reads > 3
    assert sorted(mutt_message_ids(box)) == sorted(expected)
    # Every message was delivered once; the log agrees (its line comes just after the append).
    wait_until(lambda: len(sent_lines(server.log(), to="alice")) >= len(expected), 10)
    assert len(sent_lines(server.log(), to="alice")) == len(expected)
    assert not (server.mailboxes / "alice.lock").exists()


def hold_fcntl(path):
    f = open(path, "ab")
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


@pytest.mark.parametrize("kind", ["dotlock", "fcntl", "both", "dotlock-empty"])
def test_a_lock_held_too_long_defers_and_the_retry_delivers(make_postel, kind):
    server = make_postel(**DELIVER)
    box = server.mailboxes / "alice"
    box.write_bytes(b"")
    lock = server.mailboxes / "alice.lock"
    held = None
    if kind in ("dotlock", "both"):
        lock.write_bytes(b"%d\n" % os.getpid())  # a live process: never stale before stale_lock_age
    if kind == "dotlock-empty":
        lock.write_bytes(b"")  # as Python's mailbox writes it: no PID to check, so only age makes it stale
    if kind in ("fcntl", "both"):
        held = hold_fcntl(box)
    try:
        conn = server.session()
        conn.expect("MAIL FROM:<carol@example.org>", 250)
        conn.expect("RCPT TO:<alice@localhost>", 250)
        conn.expect("DATA", 354)
        conn.send(b"Subject: locked out\r\nMessage-ID: <locked@test>\r\n\r\nWait for it.\r\n.\r\n")
        r = conn.reply()
        assert r.code == 250, r
        server.wait_log(rf"{r.queue_id}: to=<alice>.*status=deferred", timeout=10)
        listing = queue_list(server.config_path)
        assert r.queue_id in listing, listing
        assert re.search(r"deferred", listing), listing
        assert box.read_bytes() == b"", "delivered into a locked mailbox"
        if kind != "fcntl":
            assert lock.exists(), "the server removed a dot-lock that is not stale"
    finally:
        if held:
            held.close()
        if kind != "fcntl":
            lock.unlink()
    assert wait_until(lambda: sent_lines(server.log(), to="alice"), 15), (
        f"not delivered after the lock went:\n{server.log()[-2000:]}")
    assert message_ids(box) == ["<locked@test>"]
    assert wait_until(lambda: "Mail queue is empty" in queue_list(server.config_path), 10)


def test_a_dotlock_of_a_dead_process_is_cleared_at_once(make_postel):
    server = make_postel(**deliver(mailbox_lock_timeout="10s"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    (server.mailboxes / "alice.lock").write_bytes(b"%d\n" % dead.pid)
    conn = server.session()
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)
    conn.send(b"Subject: stale\r\nMessage-ID: <stale@test>\r\n\r\nx\r\n.\r\n")
    assert conn.reply().code == 250
    start = time.monotonic()
    assert wait_until(lambda: sent_lines(server.log(), to="alice"), 8), server.log()[-2000:]
    assert time.monotonic() - start < 5, "a dot-lock naming a dead PID was not cleared at once"
    assert message_ids(server.mailboxes / "alice") == ["<stale@test>"]
    assert "status=deferred" not in server.log()
