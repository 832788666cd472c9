"""Permanent failures (doc/delivery.md): delivery status notifications, the null sender, mail loops, and local parts
that try to leave the mailbox folder."""

import email
import os
import time
from pathlib import Path

import pytest

from helpers import wait_until
from mboxutil import DELIVER, deliver, messages, message_ids, queue_empty, sent_lines, strip_trace


def prefill(path, size):
    """A well-formed mbox of about `size` bytes (one message)."""
    head = b"From someone@example.org Tue Nov 24 13:49:21 2026\nSubject: filler\nMessage-ID: <filler@test>\n\n"
    body = b"f" * 59 + b"\n"
    n = max(1, (size - len(head) - 1) // len(body))
    path.write_bytes(head + body * n + b"\n")
    return path.read_bytes()


def send(postel, sender, rcpts, data):
    conn = postel.session()
    r = conn.cmd(f"MAIL FROM:<{sender}>")
    assert r.code == 250, r
    for rcpt in rcpts:
        r = conn.cmd(f"RCPT TO:<{rcpt}>")
        assert r.code == 250, r
    conn.expect("DATA", 354)
    conn.send(data + b".\r\n")
    r = conn.reply()
    assert r.code == 250, r
    conn.cmd("QUIT")
    return r.queue_id


def msg(subject, extra=b""):
    return (b"From: Alice <alice@localhost>\r\nTo: Bob <bob@localhost>\r\nSubject: " + subject.encode() + b"\r\n"
            b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@bounce.test>\r\n" + extra +
            b"\r\nThe body of " + subject.encode() + b".\r\n")


def dsn(raw):
    """Checks a delivery status notification; returns (message, per-message fields, [per-recipient fields], headers)."""
    m = email.message_from_bytes(raw)
    assert m.get_content_type() == "multipart/report", m.get_content_type()
    assert m.get_param("report-type") == "delivery-status", m["Content-Type"]
    parts = m.get_payload()
    assert parts[0].get_content_type() == "text/plain", [p.get_content_type() for p in parts]
    status = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    assert len(status) == 1, [p.get_content_type() for p in parts]
    blocks = status[0].get_payload()
    assert len(blocks) >= 2, blocks
    original = [p for p in parts if p.get_content_type() in ("text/rfc822-headers", "message/rfc822")]
    assert len(original) == 1, [p.get_content_type() for p in parts]
    o = original[0]
    if o.get_content_type() == "text/rfc822-headers":
        headers = o.get_payload(decode=True)
    else:
        headers = o.get_payload()[0].as_bytes()
    return m, blocks[0], blocks[1:], headers


def wait_quiet(postel, seconds=1.5):
    """Waits until the log has not grown for `seconds` (bounded): the server has nothing more to do."""
    deadline = time.monotonic() + 15
    last, since = len(postel.log()), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = len(postel.log())
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
    raise AssertionError("the server kept logging for 15 s")


def test_mailbox_over_limit_bounces_once_with_a_dsn(make_postel):
    postel = make_postel(**deliver(mailbox_size_limit=2000))
    bob = postel.mailboxes / "bob"
    before = prefill(bob, 1900)
    qid = send(postel, "alice@localhost", ["bob@localhost"], msg("too big for bob"))
    assert wait_until(lambda: sent_lines(postel.log(), to="alice"), 15), f"no DSN for alice:\n{postel.log()[-2000:]}"
    wait_quiet(postel)
    assert bob.read_bytes() == before, "bob's mailbox changed"
    got = messages(postel.mailboxes / "alice")
    assert len(got) == 1, f"{len(got)} messages in alice's mailbox, expected one DSN"
    ((from_line, raw),) = got
    assert from_line.startswith(b"From MAILER-DAEMON "), from_line
    assert raw.startswith(b"Return-Path: <>\n"), raw[:200]
    m, per_message, per_rcpt, headers = dsn(strip_trace(raw))
    assert len(per_rcpt) == 1, per_rcpt
    r = per_rcpt[0]
    assert r["Action"].strip() == "failed", r
    assert r["Status"].strip() == "5.2.2", r
    assert "bob@localhost" in r["Final-Recipient"], r
    assert r["Diagnostic-Code"], r
    assert per_message["Reporting-MTA"], per_message
    assert b"Subject: too big for bob" in headers and b"Message-ID: <too.big.for.bob@bounce.test>" in headers, headers
    assert b"The body of" not in headers, "the report should carry the original headers (here: only them)"
    assert m["To"] and "alice@localhost" in m["To"], m["To"]
    assert qid and wait_until(lambda: queue_empty(postel.config_path), 10)
    assert not (postel.mailboxes / "root").exists()


def test_null_sender_failure_goes_to_postmaster_once(make_postel):
    postel = make_postel(**deliver(mailbox_size_limit=2000))
    prefill(postel.mailboxes / "bob", 1900)
    send(postel, "", ["bob@localhost"], msg("bounce of a bounce"))
    assert wait_until(lambda: sent_lines(postel.log(), to="root"), 15), f"nothing for postmaster:\n{postel.log()[-2000:]}"
    wait_quiet(postel)
    got = messages(postel.mailboxes / "root")
    assert len(got) == 1, f"{len(got)} messages in root's mailbox, expected one"
    ((from_line, raw),) = got
    # doc/delivery.md: the notification goes to postmaster, from double-bounce@<hostname>.
    assert from_line.startswith(b"From double-bounce@postel.test "), from_line
    _, _, per_rcpt, headers = dsn(strip_trace(raw))
    assert per_rcpt[0]["Status"].strip() == "5.2.2"
    assert b"Subject: bounce of a bounce" in headers
    assert sorted(p.name for p in postel.mailboxes.iterdir()) == ["bob", "root"]
    assert wait_until(lambda: queue_empty(postel.config_path), 10)


def test_a_failing_notification_is_dropped_not_looped(make_postel):
    postel = make_postel(**deliver(mailbox_size_limit=2000))
    bob = prefill(postel.mailboxes / "bob", 1900)
    root = prefill(postel.mailboxes / "root", 1900)
    qid = send(postel, "", ["bob@localhost"], msg("nowhere to go"))
    assert wait_until(lambda: queue_empty(postel.config_path), 15), f"queue never emptied:\n{postel.log()[-3000:]}"
    wait_quiet(postel, 2.0)
    log = postel.log()
    assert (postel.mailboxes / "bob").read_bytes() == bob
    assert (postel.mailboxes / "root").read_bytes() == root
    assert sorted(p.name for p in postel.mailboxes.iterdir()) == ["bob", "root"]
    assert "drop" in log.lower(), f"no log line says the notification was dropped:\n{log[-3000:]}"
    # One failure for bob, one for the notification to postmaster: no more.
    attempts = [line for line in log.splitlines() if "status=" in line and "deferred" not in line]
    assert len(attempts) <= 3, "\n".join(attempts)
    assert qid


def test_delivered_to_loop_bounces_5_4_6(make_postel):
    postel = make_postel(**DELIVER)
    send(postel, "bob@localhost", ["alice@localhost"], msg("looping", b"Delivered-To: alice@localhost\r\n"))
    assert wait_until(lambda: sent_lines(postel.log(), to="bob"), 15), postel.log()[-2000:]
    wait_quiet(postel)
    assert not (postel.mailboxes / "alice").exists() or messages(postel.mailboxes / "alice") == []
    ((_, raw),) = messages(postel.mailboxes / "bob")
    _, _, per_rcpt, headers = dsn(strip_trace(raw))
    assert per_rcpt[0]["Status"].strip() == "5.4.6", per_rcpt[0]
    assert b"Subject: looping" in headers


@pytest.mark.parametrize("received, loops", [(100, False), (101, True), (150, True)])
def test_too_many_received_headers_bounce_5_4_6(make_postel, received, loops):
    postel = make_postel(**DELIVER)
    trace = b"".join(b"Received: from hop%d.example by hop%d.example; Tue, 24 Nov 2026 13:49:21 +0000\r\n" % (i, i + 1)
                     for i in range(received))
    data = trace + msg(f"hops {received}")
    send(postel, "bob@localhost", ["alice@localhost"], data)
    if loops:
        assert wait_until(lambda: sent_lines(postel.log(), to="bob"), 15), postel.log()[-2000:]
        wait_quiet(postel)
        assert not (postel.mailboxes / "alice").exists()
        ((_, raw),) = messages(postel.mailboxes / "bob")
        _, _, per_rcpt, headers = dsn(strip_trace(raw))
        assert per_rcpt[0]["Status"].strip() == "5.4.6", per_rcpt[0]
        # The loop was found from the counts noted at intake; the notification still quotes the header section.
        assert f"Subject: hops {received}".encode() in headers, headers
    else:
        assert wait_until(lambda: sent_lines(postel.log(), to="alice"), 15), postel.log()[-2000:]
        wait_quiet(postel)
        assert message_ids(postel.mailboxes / "alice") == [f"<hops.{received}@bounce.test>"]
        assert not (postel.mailboxes / "bob").exists()


TRAVERSAL = ["../etc/passwd", "a/b", ".hidden", '"../x"', '"a/../../b"', '".hidden"', '".."', '"x/"', '"/abs"',
             "..", "a..b/c", '"a\\/b"']


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def test_local_parts_never_leave_the_mailbox_folder(make_postel, tmp_path):
    postel = make_postel(**deliver(local_users="any"))
    before = set(tree(tmp_path))
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@localhost>", 250)
    accepted, refused = [], {}
    for local in TRAVERSAL:
        r = conn.cmd(f"RCPT TO:<{local}@localhost>")
        if r.code == 250:
            accepted.append(local)
        else:
            assert r.code in (501, 550, 553), f"{local}: {r}"
            refused[local] = r
    conn.expect("RCPT TO:<carol@localhost>", 250)  # so the transaction has a recipient whatever happens
    conn.expect("DATA", 354)
    conn.send(msg("traversal") + b".\r\n")
    assert conn.reply().code == 250
    conn.cmd("QUIT")
    assert wait_until(lambda: queue_empty(postel.config_path), 15), postel.log()[-3000:]
    wait_quiet(postel)
    new = sorted(set(tree(tmp_path)) - before)
    mailbox_files = sorted(os.listdir(postel.mailboxes))
    assert mailbox_files == ["carol"], f"files in the mailbox folder: {mailbox_files} (accepted at RCPT: {accepted})"
    outside = [p for p in new if not p.startswith(("postel0/spool", "postel0/mailboxes/carol", "postel0/postel.log"))]
    assert outside == [], f"created outside the mailbox folder: {outside}"
    # carol got her copy, and one DSN for whatever was accepted at RCPT and then failed.
    ids = message_ids(postel.mailboxes / "carol")
    assert "<traversal@bounce.test>" in ids
    if accepted:
        assert len(ids) == 2, f"accepted {accepted} but carol's mailbox holds {ids}"
        dsn_raw = [raw for _, raw in messages(postel.mailboxes / "carol") if b"multipart/report" in raw]
        _, _, per_rcpt, _ = dsn(strip_trace(dsn_raw[0]))
        assert len(per_rcpt) == len(accepted), per_rcpt
        for r in per_rcpt:
            assert r["Status"].strip().startswith("5."), r


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_planted_link_is_never_written_through(make_postel, tmp_path, kind):
    """doc/delivery.md: the mailbox must be a regular file with one link; a symlink or hard link is refused."""
    postel = make_postel(**DELIVER)
    target = tmp_path / "precious"
    target.write_bytes(b"do not touch\n")
    box = postel.mailboxes / "alice"
    if kind == "symlink":
        box.symlink_to(target)
    else:
        os.link(target, box)
    conn = postel.session()
    conn.expect("MAIL FROM:<bob@localhost>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)
    conn.send(msg("through a link") + b".\r\n")
    r = conn.reply()
    assert r.code == 250, r
    postel.wait_log(rf"{r.queue_id}: to=<alice>.*status=(deferred|bounced)", timeout=10)
    assert target.read_bytes() == b"do not touch\n", f"delivered through a {kind}"
    assert box.is_symlink() == (kind == "symlink")
