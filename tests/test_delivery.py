"""Local delivery end to end (doc/delivery.md): real clients send, real readers (Python's mailbox, mutt) read the mbox.

Every server here delivers (`DELIVER`: delivery_workers = 4, retries after 1-2 s).
"""

import datetime
import email
import email.policy
import email.utils
import hashlib
import os
import re
import smtplib
import socket
import subprocess
import time

import pytest

from helpers import HOSTNAME, transaction, wait_until
from mboxutil import (DELIVER, as_delivered, lf, message_ids, messages, mutt_message_ids, python_mbox, sent_lines,
                      strip_trace, trace_headers, unquote)


def delivered(postel, user, count, timeout=20.0):
    """Waits until <mailboxes>/<user> holds `count` messages; returns messages(path)."""
    path = postel.mailboxes / user
    # The log line comes after the append and fsync: the mailbox is complete then (reading it earlier, without the
    # lock, may see a delivery half-way).
    ok = wait_until(lambda: len(sent_lines(postel.log(), to=user)) >= count, timeout)
    got = messages(path)
    assert ok and len(got) == count, f"{path}: {len(got)} messages, expected {count}; log tail:\n{postel.log()[-2000:]}"
    return got


def sample(subject, body=b"Hello.\r\n", extra=b""):
    return (b"From: Carol <carol@example.org>\r\n"
            b"To: Alice <alice@localhost>\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Date: Tue, 24 Nov 2026 13:49:21 +0000\r\n"
            b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@client.test>\r\n"
            + extra + b"\r\n" + body)


def dot_stuff(body):
    return re.sub(rb"(?m)^\.", b"..", body)


def test_smtplib_and_swaks_messages_arrive_byte_identical(make_postel, tmp_path):
    postel = make_postel(**DELIVER)
    body = (b"A line.\r\nFrom the start of a line\r\n>From quoted once\r\n.leading dot\r\n..two dots\r\n"
            b"\tindented\r\n\r\nlast line\r\n")
    one = sample("via smtplib", body, b"X-Long: " + b"x" * 300 + b"\r\n")
    with smtplib.SMTP("127.0.0.1", postel.port, timeout=10) as client:
        client.ehlo("client.test")
        refused = client.sendmail("carol@example.org", ["alice@localhost"], one)
        assert refused == {}
    two = sample("via swaks", b"Swaks body.\r\nFrom here\r\n.\r\n..\r\n.dot\r\n>>From there\r\n")
    data = tmp_path / "swaks.eml"
    # swaks sends the file with CRLF line ends, dot-stuffed, and adds "\r\n." itself: so no final newline here.
    data.write_bytes(lf(two)[:-1])
    run = subprocess.run(["swaks", "--server", f"127.0.0.1:{postel.port}", "--helo", "swaks.test",
                          "--from", "carol@example.org", "--to", "alice@localhost", "--data", str(data),
                          "--timeout", "10"], capture_output=True, timeout=30)
    assert run.returncode == 0, run.stdout.decode(errors="replace")[-2000:]
    assert b"250 2.0.0" in run.stdout

    got = delivered(postel, "alice", 2)
    box = postel.mailboxes / "alice"
    by_python = python_mbox(box)
    assert len(by_python) == 2
    for (from_line, raw), (py_from, py_raw), sent in zip(got, by_python, [one, two]):
        assert from_line.startswith(b"From carol@example.org ")
        assert py_from.startswith("carol@example.org ")
        assert py_raw == raw, "Python's mailbox reads other bytes than the file holds"
        # The body as sent, with LF line ends and mboxrd quoting (Python's mbox leaves ">From " quoted as stored).
        assert strip_trace(raw) == as_delivered(sent)
        assert unquote(strip_trace(raw)) == lf(sent)
        trace = trace_headers(raw)
        names = [n for n, _ in trace]
        assert names == ["return-path", "delivered-to", "received"], trace
        assert trace[0][1] == "<carol@example.org>"
        assert trace[1][1] == "alice@localhost"
        assert f"by {HOSTNAME} (Postel)" in trace[2][1] and "for <alice@localhost>" in trace[2][1], trace[2]
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert parsed["Subject"] in ("via smtplib", "via swaks")
    assert message_ids(box) == ["<via.smtplib@client.test>", "<via.swaks@client.test>"]
    assert mutt_message_ids(box) == ["<via.smtplib@client.test>", "<via.swaks@client.test>"]
    assert not (postel.mailboxes / "alice.lock").exists(), "dot-lock left behind"


# (id, body sent after the headers, with CRLF) -- the body is dot-stuffed on the wire by the test.
BODIES = [
    ("from-lines", b"From me\r\nFrom: not a header\r\n>From once\r\n>>From twice\r\n From with a space\r\nFrom\r\n"),
    ("dots", b".\r\n..\r\n...\r\n.x\r\n..y\r\n. \r\n"),
    ("empty-body", b""),
    ("blank-lines", b"\r\n\r\n\r\nafter blanks\r\n\r\n\r\n"),
    ("long-line", b"y" * 5000 + b"\r\n"),
]


@pytest.mark.parametrize("name, body", BODIES, ids=[b[0] for b in BODIES])
def test_bodies_survive_delivery(make_postel, name, body):
    postel = make_postel(**DELIVER)
    conn = postel.session()
    sent = sample(name, body)
    r = transaction(conn, "carol@example.org", ["alice@localhost"], dot_stuff(sent))
    assert r.code == 250, r
    ((_, raw),) = delivered(postel, "alice", 1)
    assert strip_trace(raw) == as_delivered(sent)
    assert unquote(strip_trace(raw)) == lf(sent)
    ((_, py_raw),) = python_mbox(postel.mailboxes / "alice")
    assert py_raw == raw
    assert mutt_message_ids(postel.mailboxes / "alice") == [f"<{name}@client.test>"]


def test_empty_message(make_postel):
    """DATA then at once the final dot: the message is only the trace headers, and the mbox stays well-formed."""
    postel = make_postel(**DELIVER)
    conn = postel.session()
    r = transaction(conn, "carol@example.org", ["alice@localhost"], b"")
    assert r.code == 250, r
    # A second message after it must still be a message of its own.
    r = transaction(conn, "carol@example.org", ["alice@localhost"], sample("after empty"))
    assert r.code == 250, r
    got = delivered(postel, "alice", 2)
    raws = sorted((raw for _, raw in got), key=len)
    assert strip_trace(raws[0]) in (b"", b"\n"), raws[0]
    assert [n for n, _ in trace_headers(raws[0])] == ["return-path", "delivered-to", "received"]
    assert len(python_mbox(postel.mailboxes / "alice")) == 2
    assert sorted(mutt_message_ids(postel.mailboxes / "alice"), key=str) == ["<after.empty@client.test>", None]


def test_message_without_final_newline_bdat(make_postel):
    """BDAT sends exact bytes: a message that does not end with CRLF still gets its newline and the empty line."""
    postel = make_postel(**DELIVER)
    conn = postel.session()
    sent = sample("no newline", b"first line\r\nlast line without newline")
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.send(f"BDAT {len(sent)} LAST\r\n".encode() + sent)
    r = conn.reply()
    assert r.code == 250, r
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)
    conn.send(sample("next") + b".\r\n")
    assert conn.reply().code == 250
    got = delivered(postel, "alice", 2)
    bodies = {email.message_from_bytes(raw)["Message-ID"]: raw for _, raw in got}
    assert strip_trace(bodies["<no.newline@client.test>"]) == lf(sent) + b"\n"
    assert strip_trace(bodies["<next@client.test>"]) == lf(sample("next"))
    assert sorted(mutt_message_ids(postel.mailboxes / "alice")) == ["<next@client.test>", "<no.newline@client.test>"]


def test_8bitmime_body(make_postel):
    postel = make_postel(**DELIVER)
    conn = postel.session()
    body = (bytes(range(0x80, 0x100)) + b"\r\n" + "Grüße, naïve café — ✓\r\n".encode()
            + b"\xff\xfe latin-1 \xe9\r\n")
    sent = sample("eight bit", body, b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n")
    conn.expect("MAIL FROM:<carol@example.org> BODY=8BITMIME", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)
    conn.send(dot_stuff(sent) + b".\r\n")
    assert conn.reply().code == 250
    ((_, raw),) = delivered(postel, "alice", 1)
    assert strip_trace(raw) == lf(sent)
    assert mutt_message_ids(postel.mailboxes / "alice") == ["<eight.bit@client.test>"]


def test_smtputf8_local_part(make_postel):
    postel = make_postel(**DELIVER, local_users="any")
    conn = postel.session()
    sent = ("From: Jörg <jörg@example.org>\r\nTo: José <josé@localhost>\r\nSubject: ünïcödé\r\n"
            "Message-ID: <utf8@client.test>\r\n\r\nBody ✓\r\n").encode()
    conn.expect("MAIL FROM:<jörg@example.org> SMTPUTF8 BODY=8BITMIME", 250)
    conn.expect("RCPT TO:<josé@localhost>", 250)
    conn.expect("DATA", 354)
    conn.send(sent + b".\r\n")
    assert conn.reply().code == 250
    ((from_line, raw),) = delivered(postel, "josé", 1)
    assert from_line.startswith("From jörg@example.org ".encode())
    assert strip_trace(raw) == lf(sent)
    trace = dict(trace_headers(raw))
    assert trace["delivered-to"] == "josé@localhost"
    assert trace["return-path"] == "<jörg@example.org>"
    assert os.listdir(postel.mailboxes) == ["josé"]


def test_20_mib_message_arrives_intact(make_postel):
    postel = make_postel(**DELIVER)
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_=+\r\n"
    body = line * (20 * 1024 * 1024 // len(line) + 1)
    sent = sample("big", body)
    with smtplib.SMTP("127.0.0.1", postel.port, timeout=60) as client:
        client.ehlo("client.test")
        assert client.sendmail("carol@example.org", ["alice@localhost"], sent) == {}
    ((_, raw),) = delivered(postel, "alice", 1, timeout=30)
    assert hashlib.sha256(strip_trace(raw)).hexdigest() == hashlib.sha256(lf(sent)).hexdigest()
    assert len(python_mbox(postel.mailboxes / "alice")) == 1


def test_the_received_header_gives_the_arrival_time_and_an_ipv6_address_literal(make_postel):
    """RFC 5321 4.4: the Received line tells when the message was received, however much later a retry delivers it;
    its TCP-info is an address literal, `[IPv6:::1]` for a client on ::1 (doc/delivery.md)."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        v6_port = s.getsockname()[1]
    postel = make_postel(**DELIVER)
    config = postel.config_path.read_text().replace('listen = ["127.0.0.1:', f'listen = ["[::1]:{v6_port}", "127.0.0.1:')
    postel.config_path.write_text(config)
    postel.kill()
    postel.restart()
    # A dot-lock held by a live process (this one) defers the delivery until it is gone.
    lock = postel.mailboxes / "alice.lock"
    lock.write_bytes(b"%d\n" % os.getpid())
    with smtplib.SMTP("::1", v6_port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.sendmail("carol@example.org", ["alice@localhost"], sample("late")) == {}
    assert wait_until(lambda: "status=deferred" in postel.log(), 20), postel.log()[-2000:]
    time.sleep(1.5)  # so that the delivery is seconds after the arrival
    lock.unlink()
    ((from_line, raw),) = delivered(postel, "alice", 1)
    received = dict(trace_headers(raw))["received"]
    assert "from client.test (unknown [IPv6:::1])" in received, received
    arrival = datetime.datetime.strptime(from_line.split(b" ", 2)[2].decode(), "%a %b %d %H:%M:%S %Y")
    stamped = email.utils.parsedate_to_datetime(received.rsplit(";", 1)[1].strip())
    assert stamped.replace(tzinfo=None) == arrival, f"Received says {stamped}, the message arrived {arrival}"


def test_a_message_to_fifty_mailboxes_reaches_each_once(make_postel):
    """Each mailbox is a target of its own: the message's 50 deliveries go out as 50 jobs over the workers, and
    the attempt is concluded once all are back — every mailbox has the message once, and it leaves the queue."""
    postel = make_postel(**{**DELIVER, "local_users": "any"})
    users = [f"user{i}" for i in range(50)]
    conn = postel.session()
    body = b"Subject: fifty\r\nMessage-ID: <fifty@delivery.test>\r\n\r\nTo everyone.\r\n"
    r = transaction(conn, "alice@localhost", [f"{u}@localhost" for u in users], body)
    assert r.code == 250, r
    conn.cmd("QUIT")
    assert wait_until(lambda: re.search(rf"^.*{r.queue_id}: removed", postel.log(), re.M), 30), postel.log()[-3000:]
    for user in users:
        assert message_ids(postel.mailboxes / user) == ["<fifty@delivery.test>"], user
