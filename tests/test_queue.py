"""The queue commands (doc/delivery.md "The queue commands"): list, show, run and remove, with a daemon running (it
does the work, asked through <spool>/control/ and SIGUSR1) and without one (the command does it itself).

A recipient at remote.test stays deferred: mail for other hosts goes to a loopback port that refuses connections.
"""

import re

import pytest

from helpers import postel, spool_free, wait_until, write_config
from mboxutil import deliver, message_ids, queue_empty, queue_list, sent_lines
from spool import queue_files

USERS = ["alice", "bob", "carol"]
SLOW = {"retry_first": "1h", "retry_max": "1h"}  # nothing is retried unless asked


def journal_attempts(spool, qid):
    """How many delivery attempts the journal records for `qid` (doc/spool.md: `<id> attempts <n> <crc>`)."""
    try:
        text = (spool / "journal").read_text()
    except FileNotFoundError:
        return 0
    return sum(int(m[1]) for m in re.finditer(rf"^{qid} attempts (\d+) [0-9a-f]{{8}}$", text, re.M))


def check_listing(listing, qid):
    assert qid in listing, listing
    entry = listing[listing.index(qid):]
    assert "<carol@localhost>" in entry.split("\n")[0], entry
    assert "x@remote.test" in entry and "deferred" in entry, entry
    assert re.search(r"alice.*delivered", entry), entry


def check_show(run, qid):
    assert run.returncode == 0, run.stderr
    text = run.stdout.decode()
    assert f"id: {qid}" in text or f"id {qid}" in text, text
    assert "<carol@localhost>" in text and "x@remote.test" in text, text
    assert "Subject: queued for later" in text and "The body." in text, text


def submit_by_smtp(server):
    conn = server.session()
    conn.expect("MAIL FROM:<carol@localhost>", 250)
    conn.expect("RCPT TO:<x@remote.test>", 250)  # a trusted client (127.0.0.1) may relay
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)
    conn.send(b"Subject: queued for later\r\nMessage-ID: <later@queue.test>\r\n\r\nThe body.\r\n.\r\n")
    r = conn.reply()
    assert r.code == 250, r
    conn.cmd("QUIT")
    return r.queue_id


def test_queue_commands_with_a_daemon(make_postel):
    server = make_postel(**deliver(local_users=USERS, **SLOW))
    qid = submit_by_smtp(server)
    server.wait_log(rf"{qid}: to=<x@remote.test>.*status=deferred", timeout=15)
    assert wait_until(lambda: sent_lines(server.log(), to="alice"), 10)
    check_listing(queue_list(server.config_path), qid)
    check_show(postel(["queue", "show", qid], server.config_path), qid)
    assert postel(["queue", "show", "0" * 20], server.config_path).returncode != 0

    tries = server.log().count(f"{qid}: to=<x@remote.test>")
    run = postel(["queue", "run"], server.config_path)
    assert run.returncode == 0, run.stderr
    assert wait_until(lambda: server.log().count(f"{qid}: to=<x@remote.test>") > tries, 10), (
        f"`queue run` did not make the daemon try again:\n{server.log()[-2000:]}")
    assert message_ids(server.mailboxes / "alice") == ["<later@queue.test>"], "alice got the message again"

    run = postel(["queue", "remove", qid], server.config_path)
    assert run.returncode == 0, run.stderr
    assert wait_until(lambda: queue_empty(server.config_path), 10), queue_list(server.config_path)
    server.wait_log(rf"{qid}: removed", timeout=5)
    # Removed, not bounced: no notification to carol.
    assert not (server.mailboxes / "carol").exists()


def spool_bytes(spool):
    """Every byte of every file under the spool directory."""
    return b"".join(path.read_bytes() for path in spool.rglob("*") if path.is_file())


def test_a_finished_segment_disappears_on_a_quiet_host(make_postel):
    """Delivered mail in a shared segment leaves the disk within spool_segment_age, without more mail to rotate
    the segment."""
    server = make_postel(**deliver(local_users=USERS, spool_segment_age="1s"))
    conn = server.session()
    conn.expect("MAIL FROM:<carol@localhost>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)
    conn.send(b"Subject: delivered\r\n\r\nA quiet-host marker.\r\n.\r\n")
    assert conn.reply().code == 250
    conn.cmd("QUIT")
    assert wait_until(lambda: sent_lines(server.log(), to="alice"), 10), server.log()[-2000:]
    assert wait_until(lambda: queue_files(server.spool) == [], 10), queue_files(server.spool)
    assert b"quiet-host marker" not in spool_bytes(server.spool)


def test_queue_remove_leaves_nothing_of_the_message_readable_in_the_spool(make_postel):
    server = make_postel(**deliver(local_users=USERS, spool_segment_age="1s", **SLOW))
    qid = submit_by_smtp(server)
    server.wait_log(rf"{qid}: to=<x@remote.test>.*status=deferred", timeout=15)
    assert b"The body." in spool_bytes(server.spool)
    run = postel(["queue", "remove", qid], server.config_path)
    assert run.returncode == 0, run.stderr
    server.wait_log(rf"{qid}: removed", timeout=10)
    assert wait_until(lambda: b"The body." not in spool_bytes(server.spool), 10), queue_files(server.spool)
    assert b"queued for later" not in spool_bytes(server.spool)


@pytest.mark.parametrize("daemon", [True, False], ids=["daemon", "no daemon"])
def test_queue_remove_erases_the_message_from_a_segment_another_message_keeps(make_postel, daemon):
    """The removed message's record is erased in place at once, and the journal compacted (doc/spool.md "When
    queue files go"): the segment stays for the message still waiting in it, while nothing of the removed one is
    left in any spool file, neither its body nor its sender nor its recipients."""
    server = make_postel(**deliver(local_users=USERS, **SLOW))
    conn = server.session()
    ids = {}
    for name in ("dropped", "kept"):
        conn.expect(f"MAIL FROM:<{name}-sender-b7f3@localhost>", 250)
        conn.expect(f"RCPT TO:<{name}-rcpt-b7f3@remote.test>", 250)
        conn.expect("DATA", 354)
        conn.send(f"Subject: {name}\r\n\r\nThe {name} sentinel b7f3.\r\n.\r\n".encode())
        r = conn.reply()
        assert r.code == 250, r
        ids[name] = r.queue_id
    conn.cmd("QUIT")
    for qid in ids.values():
        server.wait_log(rf"{qid}: to=<.*status=deferred", timeout=15)
    assert len(queue_files(server.spool)) == 1, "both messages share one segment"
    if not daemon:
        server.kill()
    run = postel(["queue", "remove", ids["dropped"]], server.config_path)
    assert run.returncode == 0, run.stderr
    if daemon:
        server.wait_log(rf"{ids['dropped']}: removed by the administrator", timeout=10)
    spooled = spool_bytes(server.spool)
    assert b"dropped" not in spooled, "the removed message is still readable in the spool"
    assert b"The kept sentinel b7f3." in spooled
    assert [env["id"] for env, _ in server.records()] == [ids["kept"]]
    listing = queue_list(server.config_path)
    assert ids["kept"] in listing and ids["dropped"] not in listing, listing
    if not daemon:
        server.restart()
    # The segment scans cleanly after a restart, and goes once the kept message is finished too.
    server.kill()
    server.restart()
    assert "bad envelope" not in server.log() and "torn record" not in server.log(), server.log()[-3000:]
    assert ids["kept"] in queue_list(server.config_path)
    run = postel(["queue", "remove", ids["kept"]], server.config_path)
    assert run.returncode == 0, run.stderr
    assert wait_until(lambda: queue_files(server.spool) == [], 10), queue_files(server.spool)


def test_queue_commands_without_a_daemon(make_postel, tmp_path):
    folder = tmp_path / "alone"
    folder.mkdir()
    config = write_config(folder, **deliver(local_users=USERS, **SLOW))
    spool = folder / "spool"
    run = postel(["sendmail", "-f", "carol@localhost", "x@remote.test", "alice@localhost"], config,
                 input=b"Subject: queued for later\nMessage-ID: <later@queue.test>\n\nThe body.\n")
    assert run.returncode == 0, run.stderr
    # sendmail started the delivery in the background: wait until it has tried both and let go of the spool.
    assert wait_until(lambda: "deferred" in queue_list(config) and spool_free(spool), 20), queue_list(config)
    listing = queue_list(config)
    (qid,) = set(re.findall(r"\b[0-9A-F]{20}\b", listing))
    check_listing(listing, qid)
    check_show(postel(["queue", "show", qid], config), qid)
    assert message_ids(folder / "mailboxes" / "alice") == ["<later@queue.test>"]

    before = journal_attempts(spool, qid)
    assert before >= 1
    run = postel(["queue", "run"], config)
    assert run.returncode == 0, run.stderr
    assert journal_attempts(spool, qid) == before + 1, "`queue run` without a daemon did not try the message"
    assert message_ids(folder / "mailboxes" / "alice") == ["<later@queue.test>"], "alice got the message again"

    run = postel(["queue", "remove", qid], config)
    assert run.returncode == 0, run.stderr
    assert queue_empty(config), queue_list(config)
    assert postel(["queue", "show", qid], config).returncode != 0
    # A daemon started now finds nothing to do: the message is gone, not delivered, not bounced.
    server = make_postel(**deliver(local_users=USERS, spool_dir=str(spool), mailbox_dir=str(folder / "mailboxes")))
    server.wait_log("0 messages queued")  # the port is open a moment before the ready line is logged
    assert queue_files(spool) == [], queue_files(spool)
    assert not (folder / "mailboxes" / "carol").exists()


@pytest.mark.parametrize("daemon", [True, False], ids=["daemon", "no daemon"])
def test_queue_remove_of_an_unknown_id(make_postel, tmp_path, daemon):
    server = None
    if daemon:
        server = make_postel(**deliver(local_users=USERS))
        config = server.config_path
    else:
        (tmp_path / "x").mkdir()
        config = write_config(tmp_path / "x", **deliver(local_users=USERS))
    run = postel(["queue", "remove", "not-an-id"], config)
    assert run.returncode != 0, run
    run = postel(["queue", "remove", "0" * 20], config)
    if server and run.returncode == 0:
        # Handed to the daemon, which can only say so in its log.
        server.wait_log(r"0{20}.*no such message", timeout=10)
    else:
        assert run.returncode != 0, run
