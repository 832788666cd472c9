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

import pytest

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


def accepting(port, proc):
    if proc.poll() is not None:
        pytest.fail(f"postel demo exited with {proc.returncode}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def start_demo(folder, port):
    out = open(folder / "demo.out", "wb")
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "POSTEL_CONFIG")}
    proc = subprocess.Popen([str(POSTEL_BIN), "demo", "--listen", f"127.0.0.1:{port}"], cwd=folder,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    out.close()
    wait_until(lambda: accepting(port, proc), timeout=10)
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


def verb_server(make_postel, **keys):
    from mboxutil import DELIVER
    return make_postel(**{**DELIVER, **keys})


def test_verb_with_smtplib_names_the_spool_and_the_delivery_in_the_reply(make_postel):
    server = verb_server(make_postel)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
        client.ehlo("client.test")
        code, text = client.docmd("VERB")
        assert code == 250 and b"narration on" in text
        code, text = client.docmd("MAIL FROM:<carol@example.org>")
        assert code == 250
        code, text = client.docmd("RCPT TO:<alice@localhost>")
        assert code == 250
        assert b"alice is a local user" in text, text
        code, text = client.docmd("RSET")
        assert code == 250, "RSET leaves narration on"
        assert client.mail("carol@example.org")[0] == 250
        assert client.rcpt("alice@localhost")[0] == 250
        code, text = client.data(b"Subject: narrated\r\n\r\nHi.\r\n")
        # smtplib joins the lines of a multi-line reply with newlines.
        assert code == 250 and b"alice@localhost: delivered" in text, text
        assert text.splitlines()[-1].startswith(b"2.0.0 Ok: queued as"), text
        code, text = client.docmd("NOOP")
        assert code == 250
        code, text = client.docmd("VERB OFF")
        assert (code, text) == (250, b"2.0.0 Ok: narration off")
        code, text = client.docmd("NOOP")
        assert text == b"2.0.0 Ok"


def test_verb_reply_after_the_data_reports_the_first_delivery(make_postel):
    from helpers import SmtpConn
    server = verb_server(make_postel)
    conn = SmtpConn.connect(server.port)
    conn.greet()
    conn.expect("VERB", 250)
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    rcpt = conn.expect("RCPT TO:<alice@localhost>", 250)
    assert all(line.startswith("250-2.1.5 ") for line in rcpt.raw[:-1]) and rcpt.raw[-1].startswith("250 2.1.5 ")
    conn.expect("DATA", 354)
    conn.send(b"Subject: narrated\r\n\r\nHi.\r\n.\r\n")
    reply = conn.reply(timeout=15)
    assert reply.code == 250 and reply.queue_id, reply
    assert all(line[:4] == "250-" for line in reply.raw[:-1]), reply
    text = reply.text
    assert re.search(r"spooled in segment [0-9A-F]{20} with \d+ other messages", text), text
    assert re.search(r"bytes appended to .*mailboxes/alice under a dot-lock and an fcntl lock, fsync", text), text
    assert "alice@localhost: delivered" in text, text
    assert reply.lines[-1].startswith("2.0.0 Ok: queued as"), reply


def test_verb_is_for_trusted_clients_and_keeps_aliases_hidden_without_expn(make_postel, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("staff: alice, bob\n")
    server = verb_server(make_postel, aliases=str(aliases), expn=False)
    conn = server.session()
    conn.expect("VERB", 250)
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    rcpt = conn.expect("RCPT TO:<staff@localhost>", 250)
    assert "staff is an alias" in rcpt.text and "bob" not in rcpt.text, rcpt
    conn.expect("DATA", 354)
    conn.send(b"Subject: to staff\r\n\r\nHi.\r\n.\r\n")
    reply = conn.reply(timeout=15)
    assert reply.code == 250 and "staff@localhost: delivered" in reply.text, reply
    assert "alice" not in reply.text and "bob" not in reply.text, reply

    untrusted = verb_server(make_postel, trusted_networks=[])
    conn = untrusted.session()
    reply = conn.expect("VERB", 250)
    assert "for local, trusted and authenticated clients only" in reply.text
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    assert len(conn.expect("RCPT TO:<alice@localhost>", 250).raw) == 1


def test_verb_replies_parse_for_swaks(make_postel):
    """swaks has no VERB option: a proxy in front of the server adds VERB after the client's EHLO and swallows
    its reply, so swaks reads narrated replies to everything after it."""
    import threading
    server = verb_server(make_postel)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen = []

    def proxy():
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        client.settimeout(20)
        up = upstream.makefile("rb")

        def pass_reply():
            """Hands one reply, every line of it, from the server to the client."""
            while True:
                reply = up.readline()
                seen.append(reply)
                client.sendall(reply)
                if reply[3:4] != b"-":
                    return

        client.sendall(up.readline())
        injected = False
        buffered = b""
        while True:
            data = client.recv(65536)
            if not data:
                break
            upstream.sendall(data)
            buffered += data
            while b"\r\n" in buffered:
                line, buffered = buffered.split(b"\r\n", 1)
                pass_reply()
                if line.upper().startswith(b"EHLO") and not injected:
                    injected = True
                    upstream.sendall(b"VERB\r\n")
                    assert up.readline().startswith(b"250 ")
                if line.upper() == b"DATA":
                    break
            if seen and seen[-1].startswith(b"354"):
                body = b""
                while not body.endswith(b"\r\n.\r\n"):
                    body += client.recv(65536)
                upstream.sendall(body)
                pass_reply()
        client.close()
        upstream.close()

    thread = threading.Thread(target=proxy, daemon=True)
    thread.start()
    run = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--helo", "swaks.test", "--from",
                          "carol@example.org", "--to", "alice@localhost", "--timeout", "20"],
                         capture_output=True, timeout=60)
    thread.join(30)
    listener.close()
    out = run.stdout.decode(errors="replace")
    assert run.returncode == 0, out[-2000:]
    assert "<-  250-2.1.5 localhost is a local domain and alice is a local user" in out, out
    assert re.search(r"<-  250-2\.0\.0 alice@localhost: delivered", out), out
    assert re.search(r"<-  250 2\.0\.0 Ok: queued as", out), out


def test_a_terminal_gets_a_colour_per_session_unless_no_color(tmp_path):
    import pty
    import select

    for no_color, coloured in ((None, True), ("1", False)):
        port = free_port()
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "POSTEL_CONFIG", "NO_COLOR")}
        if no_color:
            env["NO_COLOR"] = no_color
        folder = tmp_path / f"colour-{coloured}"
        folder.mkdir()
        proc = subprocess.Popen([str(POSTEL_BIN), "demo", "--listen", f"127.0.0.1:{port}"], cwd=folder,
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL, env=env)
        os.close(slave)
        try:
            wait_until(lambda: accepting(port, proc), timeout=10)
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.noop()
            shown, deadline = b"", time.monotonic() + 5
            while b"S: 221" not in shown and time.monotonic() < deadline:
                if select.select([master], [], [], 0.2)[0]:
                    shown += os.read(master, 65536)
        finally:
            stop(proc)
            os.close(master)
        assert (b"\x1b[" in shown) == coloured, shown[-500:]
