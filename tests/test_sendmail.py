"""The sendmail command (doc/delivery.md "Submitting mail"): options, headers it adds, exit codes, -bs and -bp, how it
finds its config, the binary called as sendmail/mailq, and mail(1) on top of it.

Each case runs with no daemon (sendmail, run by the spool's owner, starts a delivery in the background) and,
where it matters, with a daemon running (sendmail queues, signals it, and the daemon delivers).
"""

import email
import os
import pwd
import re
import shutil
import subprocess
import time

import pytest

from helpers import HOSTNAME, POSTEL_BIN, SmtpConn, free_port, postel, spool_free, wait_until, write_config
from mboxutil import deliver, message_ids, messages, queue_list, sent_lines, strip_trace, trace_headers
from relayutil import FakeSmtp

USERS = ["alice", "bob", "carol"]
LOGIN = pwd.getpwuid(os.getuid()).pw_name


class Setup:
    """A config (and mailboxes) for sendmail, with or without a daemon on it."""

    def __init__(self, config, mailboxes, daemon=None):
        self.config = config
        self.mailboxes = mailboxes
        self.daemon = daemon

    def sendmail(self, args, data, env=None, **kw):
        return postel(["sendmail", *args], self.config, input=data, env=env, **kw)

    def wait(self, user, count=1, timeout=20):
        path = self.mailboxes / user
        if self.daemon:
            ok = wait_until(lambda: len(sent_lines(self.daemon.log(), to=user)) >= count, timeout)
        else:
            ok = wait_until(lambda: len(message_ids(path)) >= count, 20)  # delivered by the process sendmail started
        got = messages(path)
        log = self.daemon.log()[-2000:] if self.daemon else ""
        assert ok and len(got) == count, f"{user}: {len(got)} messages, expected {count}\n{log}"
        return got


@pytest.fixture(params=["no daemon", "daemon"])
def setup(request, make_postel, tmp_path):
    if request.param == "daemon":
        daemon = make_postel(**deliver(local_users=USERS))
        return Setup(daemon.config_path, daemon.mailboxes, daemon)
    folder = tmp_path / "alone"
    folder.mkdir()
    config = write_config(folder, **deliver(local_users=USERS))
    return Setup(config, folder / "mailboxes")


@pytest.fixture
def alone(tmp_path):
    folder = tmp_path / "alone"
    folder.mkdir()
    return Setup(write_config(folder, **deliver(local_users=USERS)), folder / "mailboxes")


def parse(raw):
    return email.message_from_bytes(strip_trace(raw))


def test_t_takes_to_cc_bcc_and_removes_bcc(setup):
    data = (b"From: Sender <sender@example.org>\nTo: alice\nCc: Bob <bob@localhost>\nBcc: carol@localhost\n"
            b"Subject: three ways\nMessage-ID: <three@sendmail.test>\nDate: Tue, 24 Nov 2026 13:49:21 +0000\n\n"
            b"Hello all.\n")
    run = setup.sendmail(["-t", "-f", "sender@example.org"], data, env={"RUST_LOG": None})
    assert run.returncode == 0, run.stderr
    assert run.stdout == b"" and run.stderr == b"", f"sendmail printed on success: {run.stdout!r} {run.stderr!r}"
    for user in USERS:
        ((from_line, raw),) = setup.wait(user)
        assert from_line.startswith(b"From sender@example.org "), from_line
        assert dict(trace_headers(raw))["return-path"] == "<sender@example.org>"
        m = parse(raw)
        assert m["Message-ID"] == "<three@sendmail.test>"
        assert m["Bcc"] is None, f"{user} got the Bcc header"
        assert b"carol@localhost" not in strip_trace(raw).split(b"\n\n")[0], f"{user}'s copy names the Bcc recipient"
        assert m["To"] == "alice" and m["Cc"] == "Bob <bob@localhost>"
        assert m.get_payload() == "Hello all.\n"
    if setup.daemon:
        # The daemon delivered (its log has the deliveries, just after the appends), handed over by sendmail.
        wait_until(lambda: sent_lines(setup.daemon.log(), to="carol"), 10)
        assert len(sent_lines(setup.daemon.log(), to="carol")) == 1


def test_missing_from_date_message_id_are_added(setup):
    run = setup.sendmail(["-F", "Jane Doe", "alice@localhost"], b"Subject: bare\n\nNo headers but this.\n")
    assert run.returncode == 0, run.stderr
    ((from_line, raw),) = setup.wait("alice")
    m = parse(raw)
    assert from_line.startswith(f"From {LOGIN}@{HOSTNAME} ".encode()), from_line
    assert dict(trace_headers(raw))["return-path"] == f"<{LOGIN}@{HOSTNAME}>"
    assert m["From"] == f"Jane Doe <{LOGIN}@{HOSTNAME}>", m["From"]
    assert m["Date"] and email.utils.parsedate_to_datetime(m["Date"]), m["Date"]
    assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", m["Message-ID"] or ""), m["Message-ID"]
    assert m["Subject"] == "bare"
    # Headers already there are kept, not doubled.
    data = b"From: x@example.org\nDate: Tue, 24 Nov 2026 13:49:21 +0000\nMessage-ID: <kept@test>\nSubject: full\n\nb\n"
    assert setup.sendmail(["bob"], data).returncode == 0
    ((_, raw),) = setup.wait("bob")
    head = strip_trace(raw).split(b"\n\n")[0]
    assert head.count(b"\nFrom: ") + head.startswith(b"From: ") == 1 and head.count(b"Date: ") == 1, head
    assert parse(raw)["Message-ID"] == "<kept@test>"


def test_f_sets_the_envelope_sender(alone):
    assert alone.sendmail(["-f", "bounces@lists.example", "alice"], b"Subject: f\n\nx\n").returncode == 0
    ((from_line, raw),) = alone.wait("alice")
    assert from_line.startswith(b"From bounces@lists.example ")
    assert dict(trace_headers(raw))["return-path"] == "<bounces@lists.example>"
    assert alone.sendmail(["-f", "<>", "bob"], b"Subject: null\n\nx\n").returncode == 0
    ((from_line, raw),) = alone.wait("bob")
    assert from_line.startswith(b"From MAILER-DAEMON "), from_line
    assert dict(trace_headers(raw))["return-path"] == "<>"


@pytest.mark.parametrize("flag", [None, "-i", "-oi"])
def test_a_lone_dot_line(alone, flag):
    data = b"Subject: dots\n\nbefore\n.\nafter\n..\nend\n"
    run = alone.sendmail(([flag] if flag else []) + ["alice"], data)
    assert run.returncode == 0, run.stderr
    ((_, raw),) = alone.wait("alice")
    body = strip_trace(raw).split(b"\n\n", 1)[1]
    if flag:
        assert body == b"before\n.\nafter\n..\nend\n", body
    else:
        assert body == b"before\n", body


def test_message_without_final_newline(alone):
    assert alone.sendmail(["-i", "alice"], b"Subject: cut\n\nno newline at the end").returncode == 0
    assert alone.sendmail(["-i", "alice"], b"Subject: next\nMessage-ID: <next@test>\n\nx\n").returncode == 0
    got = alone.wait("alice", 2)  # delivered in the background, in either order
    (cut,) = [raw for _, raw in got if b"Subject: cut" in raw]
    assert strip_trace(cut).endswith(b"\n\nno newline at the end\n"), cut
    assert "<next@test>" in message_ids(alone.mailboxes / "alice")


def test_exit_codes(alone):
    run = alone.sendmail([], b"Subject: nobody\n\nx\n")
    assert run.returncode == 64, (run.returncode, run.stderr)
    run = alone.sendmail(["-t"], b"Subject: no recipient headers\n\nx\n")
    assert run.returncode == 64, (run.returncode, run.stderr)
    run = alone.sendmail(["-x-no-such-option"], b"")
    assert run.returncode == 64, (run.returncode, run.stderr)
    run = alone.sendmail(["<not an address"], b"Subject: bad\n\nx\n")
    assert run.returncode == 65, (run.returncode, run.stderr)
    bad = alone.config.parent / "bad.toml"
    bad.write_text("delivery_workers = \"many\"\n")
    run = postel(["sendmail", "alice"], bad, input=b"x\n")
    assert run.returncode == 78, (run.returncode, run.stderr)
    assert not (alone.mailboxes / "alice").exists()


def test_bs_is_an_smtp_session_on_stdin_and_stdout(setup):
    env = dict(os.environ, RUST_LOG="off")
    proc = subprocess.Popen([str(POSTEL_BIN), "sendmail", "--config", str(setup.config), "-bs"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        conn = SmtpConn(rfd=proc.stdout.fileno(), wfd=proc.stdin.fileno(), close_write=proc.stdin.close)
        conn.greet()
        conn.expect("MAIL FROM:<sender@example.org>", 250)
        conn.expect("RCPT TO:<alice@localhost>", 250)
        conn.expect("RCPT TO:<someone@remote.test>", 250)  # a local program may relay
        conn.expect("DATA", 354)
        conn.send(b"Subject: over bs\r\nMessage-ID: <bs@test>\r\n\r\n..stuffed\r\n.\r\n")
        r = conn.reply()
        assert r.code == 250 and r.queue_id, r
        conn.expect("QUIT", 221)
        assert proc.wait(20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ((_, raw),) = setup.wait("alice")
    assert strip_trace(raw) == b"Subject: over bs\nMessage-ID: <bs@test>\n\n.stuffed\n"
    assert r.queue_id in queue_list(setup.config)  # the remote recipient waits (its host refuses connections)


def test_bp_and_mailq_list_a_held_message(make_postel, tmp_path):
    daemon = make_postel(local_users=USERS, delivery_workers=0)
    run = postel(["sendmail", "alice", "bob@localhost"], daemon.config_path, input=b"Subject: held\n\nx\n")
    assert run.returncode == 0, run.stderr
    assert wait_until(lambda: re.search(r"[0-9A-F]{20}", queue_list(daemon.config_path)), 10)
    listing = postel(["sendmail", "-bp"], daemon.config_path, check=True).stdout.decode()
    (qid,) = set(re.findall(r"\b[0-9A-F]{20}\b", listing))
    assert f"<{LOGIN}@{HOSTNAME}>" in listing and "alice@" in listing and "bob@localhost" in listing, listing
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mailq").symlink_to(POSTEL_BIN)
    env = dict(os.environ, POSTEL_CONFIG=str(daemon.config_path), RUST_LOG="off")
    run = subprocess.run([str(bin_dir / "mailq")], capture_output=True, env=env, timeout=30)
    assert run.returncode == 0, run.stderr
    assert qid in run.stdout.decode() and "alice@" in run.stdout.decode(), run.stdout
    assert not (daemon.mailboxes / "alice").exists()


def test_config_from_postel_config_and_dash_c(alone, tmp_path):
    env = {"POSTEL_CONFIG": str(alone.config)}
    run = postel(["sendmail", "alice"], None, input=b"Subject: env\nMessage-ID: <env@test>\n\nx\n", env=env)
    assert run.returncode == 0, run.stderr
    run = postel(["sendmail", "-C", str(alone.config), "alice"], None,
                 input=b"Subject: dash C\nMessage-ID: <dashc@test>\n\nx\n")
    assert run.returncode == 0, run.stderr
    # --config wins over -C and $POSTEL_CONFIG; -C wins over $POSTEL_CONFIG.
    other = tmp_path / "other"
    other.mkdir()
    other_config = write_config(other, **deliver(local_users=USERS))
    run = postel(["sendmail", "-C", str(alone.config), "alice"], other_config,
                 input=b"Subject: both\nMessage-ID: <both@test>\n\nx\n", env={"POSTEL_CONFIG": str(alone.config)})
    assert run.returncode == 0, run.stderr
    run = postel(["sendmail", "-C", str(other_config), "alice"], None,
                 input=b"Subject: C over env\nMessage-ID: <c-over-env@test>\n\nx\n", env=env)
    assert run.returncode == 0, run.stderr
    alone.wait("alice", 2)
    assert sorted(message_ids(alone.mailboxes / "alice")) == ["<dashc@test>", "<env@test>"]
    assert wait_until(lambda: len(message_ids(other / "mailboxes" / "alice")) == 2, 20)
    assert sorted(message_ids(other / "mailboxes" / "alice")) == ["<both@test>", "<c-over-env@test>"]


def test_the_binary_called_sendmail(setup, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sendmail").symlink_to(POSTEL_BIN)
    env = dict(os.environ, POSTEL_CONFIG=str(setup.config), RUST_LOG="off")
    run = subprocess.run([str(bin_dir / "sendmail"), "-oi", "-t"],
                         input=b"To: bob\nSubject: as sendmail\nMessage-ID: <argv0@test>\n\nhi\n.\nstill here\n",
                         capture_output=True, env=env, timeout=30)
    assert run.returncode == 0, run.stderr
    ((_, raw),) = setup.wait("bob")
    assert parse(raw)["Message-ID"] == "<argv0@test>"
    assert strip_trace(raw).endswith(b"\n\nhi\n.\nstill here\n")


def test_mail_from_bsd_mailx(setup, tmp_path):
    mail = shutil.which("bsd-mailx")
    if not mail:
        pytest.skip("bsd-mailx is not installed (tests/setup-tools.sh installs it)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sendmail = bin_dir / "sendmail"
    sendmail.symlink_to(POSTEL_BIN)
    rc = tmp_path / "mailrc"
    rc.write_text(f"set sendmail={sendmail}\n")
    env = dict(os.environ, POSTEL_CONFIG=str(setup.config), MAILRC=str(rc), HOME=str(tmp_path), RUST_LOG="off")
    env.pop("MAIL", None)
    run = subprocess.run([mail, "-s", "test from mail(1)", "alice"], input=b"Written with mail(1).\n.\n",
                         capture_output=True, env=env, timeout=30, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout, run.stderr)
    ((from_line, raw),) = setup.wait("alice")
    m = parse(raw)
    assert m["Subject"] == "test from mail(1)"
    assert m["To"] and "alice" in m["To"]
    assert m.get_payload().startswith("Written with mail(1).\n")
    assert from_line.startswith(f"From {LOGIN}@{HOSTNAME} ".encode()), from_line


def test_local_parts_from_sendmail_never_leave_the_mailbox_folder(tmp_path):
    folder = tmp_path / "any"
    folder.mkdir()
    config = write_config(folder, **deliver(local_users="any"))
    before = sorted(p for p in tmp_path.rglob("*"))
    queued = 0
    for local in ["../escape", "a/b", ".hidden", '"../x"', '"x/y"', "..", '"/abs"']:
        run = postel(["sendmail", "-f", "carol@localhost", f"{local}@localhost"], config,
                     input=b"Subject: escape\n\nx\n")
        assert run.returncode in (0, 65), (local, run.returncode, run.stderr)
        queued += run.returncode == 0
    # Each one queued failed for good: carol, the sender, has one notification for each.
    assert wait_until(lambda: len(message_ids(folder / "mailboxes" / "carol")) >= queued, 20)
    assert wait_until(lambda: spool_free(folder / "spool"), 20), "the background deliveries did not finish"
    reports = messages(folder / "mailboxes" / "carol")
    assert len(reports) == queued, f"{queued} queued, {len(reports)} notifications"
    for _, raw in reports:
        assert b"Status: 5." in raw, raw[-1500:]
    after = sorted(p for p in tmp_path.rglob("*"))
    new = [str(p.relative_to(tmp_path)) for p in after if p not in before]
    stray = [p for p in new if not p.startswith(("any/spool", "any/mailboxes/carol"))]
    assert stray == [], f"files created: {stray}"
    assert sorted(os.listdir(folder / "mailboxes")) in ([], ["carol"])


def test_daemon_is_handed_the_message(make_postel):
    """With a daemon running, sendmail only queues: the daemon delivers (its log shows it)."""
    daemon = make_postel(**deliver(local_users=USERS))
    start = time.monotonic()
    run = postel(["sendmail", "-v", "alice"], daemon.config_path, input=b"Subject: handed\n\nx\n")
    assert run.returncode == 0, run.stderr
    assert wait_until(lambda: sent_lines(daemon.log(), to="alice"), 20), daemon.log()[-2000:]
    assert "status=sent" not in run.stderr.decode(), f"sendmail delivered although a daemon runs:\n{run.stderr}"
    assert len(message_ids(daemon.mailboxes / "alice")) == 1
    print(f"handed over and delivered in {time.monotonic() - start:.2f}s")


def test_mail_queued_while_a_background_delivery_runs_is_delivered_by_it(tmp_path):
    """No daemon: the first sendmail's background delivery waits on a slow smarthost while holding the spool. A
    second sendmail sees the spool held and leaves its message to that process (ringing it, which must not kill
    it), and the process delivers that message too before it exits."""
    smarthost = FakeSmtp("127.0.0.1", free_port(), greeting_delay=2.0)
    try:
        folder = tmp_path / "alone"
        folder.mkdir()
        config = write_config(folder, **deliver(local_users=USERS, smarthost=f"127.0.0.1:{smarthost.port}",
                                                smarthost_tls="none"))
        spool = folder / "spool"
        first = postel(["sendmail", "-v", "x@remote.test"], config, input=b"Subject: slow\n\nvia the smarthost\n")
        assert first.returncode == 0 and "delivering in the background" in first.stderr.decode(), first.stderr
        assert wait_until(lambda: not spool_free(spool), 5), "the background delivery never took the spool"
        second = postel(["sendmail", "-v", "alice"], config,
                        input=b"Subject: meanwhile\nMessage-ID: <meanwhile@test>\n\nx\n")
        assert second.returncode == 0 and "handed to" in second.stderr.decode(), second.stderr
        smarthost.wait_delivered(1)
        assert wait_until(lambda: message_ids(folder / "mailboxes" / "alice") == ["<meanwhile@test>"], 20)
        assert wait_until(lambda: spool_free(spool), 20)
        assert "Mail queue is empty" in queue_list(config)
    finally:
        smarthost.close()
