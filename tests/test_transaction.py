"""Whole mail transactions with real clients (smtplib, swaks) and raw pipelined bytes.

Each test checks the replies and what the spool holds afterwards.
"""

import re
import shutil
import smtplib
import subprocess

import pytest

from helpers import HOSTNAME, message, transaction

EHLO_KEYWORDS = {"pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "help"}


def test_smtplib_transaction_is_stored_byte_exact(postel):
    # A line starting with a dot is dot-stuffed by smtplib and must be stored unstuffed.
    body = "Line one.\r\n.leading dot\r\n..two dots\r\n\r\nLast line.\r\n"
    msg = message("smtplib", body)
    with smtplib.SMTP("127.0.0.1", postel.port, local_hostname="client.test", timeout=10) as s:
        code, _ = s.ehlo()
        assert code == 250
        assert EHLO_KEYWORDS <= set(s.esmtp_features), s.esmtp_features
        assert s.esmtp_features["size"] == str(50 * 1024 * 1024)
        code, text = s.mail("carol@example.org", [f"SIZE={len(msg)}"])
        assert (code, text.split()[0]) == (250, b"2.1.0"), text
        for rcpt in ["alice@localhost", "bob@postel.test"]:
            code, text = s.rcpt(rcpt)
            assert (code, text.split()[0]) == (250, b"2.1.5"), text
        code, text = s.data(msg)
        assert code == 250, text
        m = re.fullmatch(rb"2\.0\.0 Ok: queued as ([0-9A-F]{20})", text)
        assert m, text
    envelope, stored = postel.record(m[1].decode())
    assert stored == msg
    assert envelope["sender"] == "<carol@example.org>"
    assert envelope["rcpt"] == ["<alice@localhost>", "<bob@postel.test>"]
    assert envelope["client"] == "127.0.0.1"
    assert envelope["helo"] == "client.test"
    assert envelope["protocol"] == "ESMTP"
    assert envelope["size"] == str(len(msg))
    assert "body" not in envelope and "smtputf8" not in envelope
    assert postel.queued_ids() == [m[1].decode()]


def test_smtplib_smtputf8_and_8bitmime(postel):
    msg = message("utf8", "Gr\u00fc\u00dfe aus K\u00f6ln.\r\n").replace(b"Carol", "J\u00f6rg".encode())
    with smtplib.SMTP("127.0.0.1", postel.port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        code, text = s.mail("j\u00f6rg@example.org", ["SMTPUTF8", "BODY=8BITMIME"])
        assert code == 250, text
        code, text = s.rcpt("alice@localhost")
        assert code == 250, text
        code, text = s.data(msg)
        assert code == 250, text
    envelope, stored = postel.record(re.search(rb"[0-9A-F]{20}", text)[0].decode())
    assert stored == msg
    assert envelope["sender"] == "<j\u00f6rg@example.org>"
    assert envelope["body"] == "8BITMIME"
    assert envelope["smtputf8"] == "yes"


def test_swaks_transaction(postel, tmp_path):
    if not shutil.which("swaks"):
        pytest.skip("swaks is not installed (tests/setup-tools.sh installs it)")
    # swaks ends the data with CRLF.CRLF itself, so the file has no final newline.
    body = "From: swaks@example.org\nTo: alice@localhost\nSubject: swaks\n\nHello from swaks.\n.dot line"
    data = tmp_path / "message.txt"
    data.write_text(body)
    run = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(postel.port), "--helo", "swaks.test",
         "--from", "swaks@example.org", "--to", "alice@localhost,bob@localhost",
         "--data", f"@{data}", "--timeout", "10"],
        capture_output=True, text=True, timeout=30,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    m = re.search(r"<-  250 2\.0\.0 Ok: queued as ([0-9A-F]{20})", run.stdout)
    assert m, run.stdout
    envelope, stored = postel.record(m[1])
    # swaks sends every line end as CRLF and dot-stuffs; the spool keeps the lines unstuffed.
    assert stored == body.replace("\n", "\r\n").encode() + b"\r\n"
    assert envelope["sender"] == "<swaks@example.org>"
    assert envelope["rcpt"] == ["<alice@localhost>", "<bob@localhost>"]
    assert envelope["helo"] == "swaks.test"
    assert envelope["protocol"] == "ESMTP"


def test_pipelined_batch_replies_in_order(postel):
    conn = postel.session()
    conn.send(
        b"MAIL FROM:<carol@example.org>\r\n"
        b"RCPT TO:<alice@localhost>\r\n"
        b"RCPT TO:<nobody@localhost>\r\n"
        b"RCPT TO:<bob@localhost>\r\n"
        b"DATA\r\n"
    )
    replies = [conn.reply() for _ in range(5)]
    assert [r.code for r in replies] == [250, 250, 550, 250, 354], replies
    assert replies[2].enhanced == "5.1.1", replies[2]
    msg = message("pipelined")
    conn.send(msg + b".\r\nNOOP\r\nQUIT\r\n")
    done, noop, bye = conn.reply(), conn.reply(), conn.reply()
    assert done.code == 250 and done.queue_id, done
    assert (noop.code, bye.code) == (250, 221), (noop, bye)
    assert conn.closed()
    envelope, stored = postel.record(done.queue_id)
    assert envelope["rcpt"] == ["<alice@localhost>", "<bob@localhost>"]
    assert stored == msg


def test_pipelined_commands_after_end_of_data(postel):
    # The next transaction arrives in the same write as the end of the previous message.
    conn = postel.session()
    conn.send(b"MAIL FROM:<carol@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n")
    assert [conn.reply().code for _ in range(3)] == [250, 250, 354]
    first, second = message("first"), message("second", ".starts with a dot\r\n")
    conn.send(first + b".\r\nMAIL FROM:<>\r\nRCPT TO:<bob@localhost>\r\nRCPT TO:<postmaster@localhost>\r\nDATA\r\n")
    replies = [conn.reply() for _ in range(5)]
    assert [r.code for r in replies] == [250, 250, 250, 250, 354], replies
    conn.send(second.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
    done = conn.reply()
    assert done.code == 250 and done.queue_id, done
    assert conn.reply().code == 221
    env1, body1 = postel.record(replies[0].queue_id)
    env2, body2 = postel.record(done.queue_id)
    assert (env1["sender"], env1["rcpt"], body1) == ("<carol@example.org>", ["<alice@localhost>"], first)
    assert (env2["sender"], env2["rcpt"], body2) == ("<>", ["<bob@localhost>", "<postmaster@localhost>"], second)


def test_helo_gives_protocol_smtp(postel):
    conn = postel.connect()
    conn.greet("old.client.test", ehlo=False)
    done = transaction(conn, "carol@example.org", ["alice@localhost"], message("helo"))
    assert done.code == 250, done
    envelope, _ = postel.record(done.queue_id)
    assert envelope["protocol"] == "SMTP"
    assert envelope["helo"] == "old.client.test"


def test_several_messages_in_one_session(postel):
    conn = postel.session()
    ids = []
    for n in range(3):
        done = transaction(conn, f"sender{n}@example.org", ["alice@localhost"], message(f"msg {n}"))
        assert done.code == 250 and done.queue_id, done
        ids.append(done.queue_id)
    assert len(set(ids)) == 3
    assert conn.cmd("QUIT").code == 221
    for n, queue_id in enumerate(ids):
        envelope, stored = postel.record(queue_id)
        assert (envelope["sender"], stored) == (f"<sender{n}@example.org>", message(f"msg {n}"))


def test_postmaster_is_always_accepted(postel):
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    for rcpt in ["<postmaster>", "<Postmaster>", "<postmaster@localhost>", f"<POSTMASTER@{HOSTNAME}>"]:
        conn.expect(f"RCPT TO:{rcpt}", 250, "2.1.5")
    conn.expect("DATA", 354)
    conn.send(message("to postmaster") + b".\r\n")
    done = conn.reply()
    assert done.code == 250, done
    envelope, _ = postel.record(done.queue_id)
    # <postmaster> and <Postmaster> are the same mailbox; the server may keep one of them.
    assert {r.lower() for r in envelope["rcpt"]} == {"<postmaster>", "<postmaster@localhost>", f"<postmaster@{HOSTNAME}>"}


def test_unknown_local_user_is_refused(postel):
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<nobody@localhost>", 550, "5.1.1")
    conn.expect("RCPT TO:<nobody@postel.test>", 550, "5.1.1")
    conn.expect("RCPT TO:<alice@localhost>", 250, "2.1.5")
    conn.expect("QUIT", 221)
    postel.assert_nothing_queued()


def test_bare_lf_normalized_by_default(postel):
    conn = postel.session()
    done = transaction(conn, "carol@example.org", ["alice@localhost"],
                       b"Subject: lf\r\n\r\nunix line\nend\r\n")
    assert done.code == 250, done
    _, stored = postel.record(done.queue_id)
    assert stored == b"Subject: lf\r\n\r\nunix line\r\nend\r\n"


def test_bare_lf_rejected_when_configured(make_postel):
    postel = make_postel(bare_lf="reject")
    conn = postel.session()
    done = transaction(conn, "carol@example.org", ["alice@localhost"],
                       b"Subject: lf\r\n\r\nunix line\nend\r\n")
    assert (done.code, done.enhanced) == (550, "5.6.0"), done
    conn.expect("NOOP", 250)
    postel.assert_nothing_queued()
    clean = transaction(conn, "carol@example.org", ["alice@localhost"], message("clean"))
    assert clean.code == 250, clean


def test_bdat_chunks(postel):
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@example.org> BODY=8BITMIME", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    first, second = b"Subject: bdat\r\n\r\n", b"line one\r\n.not stuffed\r\n"
    conn.send(b"BDAT %d\r\n" % len(first) + first)
    assert conn.reply().code == 250
    conn.send(b"BDAT %d LAST\r\n" % len(second) + second)
    done = conn.reply()
    assert done.code == 250 and done.queue_id, done
    _, stored = postel.record(done.queue_id)
    assert stored == first + second


def test_connection_and_message_log_lines(postel):
    conn = postel.session("logger.test")
    done = transaction(conn, "carol@example.org", ["alice@localhost", "bob@localhost"], message("log"))
    assert done.code == 250, done
    conn.expect("QUIT", 221)
    size = len(message("log"))
    line = postel.wait_log(
        rf"{done.queue_id}: from=<carol@example\.org>, size={size}, nrcpt=2, client=127\.0\.0\.1(?::\d+)?, "
        rf"session=(s\d+) \(queued\)")
    postel.wait_log(rf"{line[1]}: disconnect from 127\.0\.0\.1:\d+ helo=logger\.test messages=1 duration=")
