"""The classroom: `postel demo` and `postel serve --explain` show every session explained, driven by smtplib
and by a raw socket making the mistakes students make."""

import mailbox
import os
import re
import signal
import smtplib
import socket
import subprocess
import time

from helpers import POSTEL_BIN, free_port, wait_until

TAG = r"\[s\d+(?: [0-9A-F]{20})?\]"


def explained(output):
    """The explain view's lines, checked: each C: and S: line is followed by its explanation with a reference."""
    lines = [line for line in output.splitlines() if re.match(TAG, line)]
    for n, line in enumerate(lines):
        body = re.sub(TAG + " ", "", line, count=1)
        if body.startswith("C: "):
            following = lines[n + 1]
            assert re.search(r"\(RFC \d+|no SMTP command", following), f"{line!r} not explained: {following!r}"
        if body.startswith("S: "):
            following = lines[n + 1]
            assert "(RFC 5321 §4.2.1)" in following, f"{line!r} not explained by its digits: {following!r}"
    return lines


def start_demo(folder, port):
    out = open(folder / "demo.out", "wb")
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "POSTEL_CONFIG")}
    proc = subprocess.Popen([str(POSTEL_BIN), "demo", "--listen", f"127.0.0.1:{port}"], cwd=folder,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    out.close()

    def accepting():
        assert proc.poll() is None, (folder / "demo.out").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_until(accepting, timeout=10)
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_demo_explains_a_session_and_the_steps_of_spool_and_mailbox(tmp_path):
    port = free_port()
    proc = start_demo(tmp_path, port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("teacher@school.test", ["ada@localhost"], b"Subject: first\r\n\r\nHello, class.\r\n")
        box = tmp_path / "mailboxes" / "ada"
        wait_until(lambda: box.exists() and len(mailbox.mbox(box)) == 1, timeout=10)
        assert mailbox.mbox(box)[0]["Subject"] == "first"
        output = (tmp_path / "demo.out").read_text()
        wait_until(lambda: "delivery attempt: delivered" in (tmp_path / "demo.out").read_text(), timeout=10)
        output = (tmp_path / "demo.out").read_text()
    finally:
        stop(proc)
    assert "nc -C 127.0.0.1" in output and "swaks" in output, output[:600]
    lines = explained(output)
    text = "\n".join(lines)
    assert "Names one recipient of the message" in text and "RFC 5321 §4.1.1.3" in text
    assert "2.1.5 = destination address valid (RFC 3463 §3.2)" in text
    assert "ada is a local user" in text
    assert re.search(TAG + r" +\. spooled in segment", text), text
    assert re.search(r"bytes appended to .*mailboxes/ada under a dot-lock and an fcntl lock, fsync", text), text
    assert "\x1b[" not in output, "piped output must have no colour codes"


def test_explain_teaches_the_mistakes_students_make(make_postel):
    server = make_postel(serve_args=["--explain"])
    conn = server.session(helo="student.test")
    other = server.session(helo="neighbour.test")
    conn.expect("RCPT TO:<alice@postel.test>", 503)
    conn.expect("MAIL FROM <teacher@school.test>", 501)
    conn.send(b"MAIL FROM:<teacher@school.test>\n")
    assert conn.reply().code == 250
    conn.expect("DATA", 554)
    conn.expect("X" * 600, 500)
    other.expect("RCPT TO:<bob@postel.test>", 503)
    help_reply = conn.expect("HELP RCPT", 214)
    assert "RFC 5321 section 4.1.1.3" in help_reply.text
    conn.expect("RCPT TO:<nobody@elsewhere.test>", 250)
    conn.expect("QUIT", 221)
    other.expect("QUIT", 221)
    server.wait_disconnects(3)
    output = server.log()
    lines = explained(output)
    text = "\n".join(lines)
    assert "! command out of order: RCPT is allowed only after MAIL" in text, text
    assert "! missing colon: write it as MAIL FROM:<address>" in text, text
    assert "! this line ended with a bare LF, not CR LF" in text, text
    assert "! DATA without an accepted recipient" in text, text
    assert "! the line is longer than the server takes: RFC 5321 §4.5.3.1.4 promises only 512 octets" in text
    assert "the client may relay (trusted_networks" in text
    tags = {re.match(r"\[(s\d+)", line)[1] for line in lines if "C: EHLO" in line}
    assert len(tags) == 2, "each session has its own tag"
    assert "\x1b[" not in output
