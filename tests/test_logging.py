"""Where log lines go: syslog (facility mail) or stderr, and never into the SMTP session.

Classic inetd hands `postel inetd` the client's socket as stdin, stdout and stderr; socat's `stderr`
option does the same. These tests run the real launchers on a loopback port, listen on their own
datagram socket as the syslog daemon, and check that every byte the client gets is an SMTP reply.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from helpers import POSTEL_BIN, InetdLauncher, SmtpConn, free_port, message, transaction, write_config
from mboxutil import DELIVER

REPLY_LINE = re.compile(rb"^[2-5][0-9][0-9][ -][\x20-\x7e]*\r\n$")
SYSLOG_LINE = re.compile(r"^<(\d+)>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d postel\[(\d+)\]: (.*)$", re.S)
MAIL = 2


class SyslogListener:
    """A datagram socket standing in for /dev/log, read as it fills like a syslog daemon does."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received = []
        self.running = True
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while self.running:
            try:
                self.received.append(self.sock.recv(65536).decode())
            except socket.timeout:
                pass

    def wait_for(self, text, timeout=10.0):
        """Waits until a line containing `text` arrived; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.received):
                if text in line:
                    return line
            assert time.monotonic() < deadline, f"no syslog line with {text!r}; got {self.received}"
            time.sleep(0.02)

    def lines(self):
        """(facility, severity, message) of every line so far; each must be in the syslog(3) format."""
        parsed = []
        for line in list(self.received):
            m = SYSLOG_LINE.match(line)
            assert m, f"not a syslog line: {line!r}"
            parsed.append((int(m[1]) >> 3, int(m[1]) & 7, m[3]))
        return parsed

    def close(self):
        self.running = False
        self.reader.join(5)
        self.sock.close()


@pytest.fixture
def syslog(tmp_path):
    listener = SyslogListener(tmp_path / "log.sock")
    yield listener
    listener.close()


def openbsd_inetd(port, config, folder):
    """Debian's openbsd-inetd in the foreground (-i), keeping the environment (-E), on a private config."""
    inetd = shutil.which("inetd") or "/usr/sbin/inetd"
    if not os.access(inetd, os.X_OK):
        pytest.fail("inetd is not installed (tests/setup-tools.sh installs openbsd-inetd)")
    conf = folder / "inetd.conf"
    conf.write_text(f"127.0.0.1:{port} stream tcp nowait root {POSTEL_BIN} postel inetd --config {config}\n")
    return [inetd, "-i", "-E", str(conf)]


def socat(port, config, stderr_option):
    if not shutil.which("socat"):
        pytest.fail("socat is not installed (tests/setup-tools.sh installs it)")
    options = ",stderr" if stderr_option else ""
    return ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
            f"EXEC:{POSTEL_BIN} inetd --config {config}{options}"]


def launch(kind, tmp_path, **keys):
    port = free_port()
    config = write_config(tmp_path, delivery_workers=1, syslog_socket=str(tmp_path / "log.sock"), **keys)
    argv = {
        "openbsd-inetd": lambda: openbsd_inetd(port, config, tmp_path),
        "socat-stderr": lambda: socat(port, config, True),
        "socat": lambda: socat(port, config, False),
    }[kind]()
    return InetdLauncher(argv, port, tmp_path / "launcher.log")


def assert_only_replies(raw):
    lines = raw.splitlines(keepends=True)
    assert lines, "the client received nothing"
    for line in lines:
        assert REPLY_LINE.match(line), f"the client received a line that is no SMTP reply: {line!r}"


class Recorder(SmtpConn):
    """An SmtpConn that keeps every byte it receives."""

    def __init__(self, sock):
        super().__init__(sock)
        self.raw = b""

    def _fill(self, deadline):
        before = len(self.buf)
        result = super()._fill(deadline)
        self.raw += self.buf[before:]
        return result

    def rest(self, timeout=15.0):
        """Reads until the server closes the connection; returns every byte received."""
        self.sock.settimeout(timeout)
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return self.raw
            self.raw += chunk


def dialogue(port, body):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = Recorder(sock)
    try:
        assert conn.reply().code == 220
        assert conn.cmd("EHLO logs.test").code == 250
        done = transaction(conn, "carol@example.org", ["alice@localhost"], body)
        assert done.code == 250, done
        assert conn.cmd("QUIT").code == 221
        return done, conn.rest()
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["openbsd-inetd", "socat-stderr"])
def test_inetd_log_lines_written_into_the_smtp_session(tmp_path, syslog, kind):
    """stderr is the client's socket: lines go to syslog although `log` says stderr (the default)."""
    launcher = launch(kind, tmp_path)
    try:
        done, raw = dialogue(launcher.port, message("logs under inetd"))
        assert_only_replies(raw)
        syslog.wait_for(f"{done.queue_id}: from=<carol@example.org>")
        syslog.wait_for(f"{done.queue_id}: to=<alice>")
        syslog.wait_for(f"{done.queue_id}: removed")
        lines = syslog.lines()
        assert {facility for facility, _, _ in lines} == {MAIL}, lines
        assert {s for _, s, t in lines if ": C: EHLO" in t} == {7}, lines  # the dialogue, at debug
        assert {s for _, s, t in lines if "(queued)" in t} == {6}, lines  # accepted messages, at info
        assert "(queued)" not in launcher.log()
    finally:
        launcher.stop()


def test_inetd_syslog_unreachable_drops_lines_and_counts_them(tmp_path):
    """No syslog and stderr is the client's: lines are dropped, and the next one that gets out says how many."""
    launcher = launch("socat-stderr", tmp_path)
    try:
        sock = socket.create_connection(("127.0.0.1", launcher.port), timeout=10)
        conn = Recorder(sock)
        assert conn.reply().code == 220
        assert conn.cmd("EHLO logs.test").code == 250
        listener = SyslogListener(tmp_path / "log.sock")  # the syslog daemon comes up mid-session
        try:
            assert conn.cmd("NOOP").code == 250
            line = listener.wait_for("earlier log lines lost: syslog socket unreachable")
            assert re.search(r"\[\d+ earlier log lines lost", line), line
            assert conn.cmd("QUIT").code == 221
            raw = conn.rest()
        finally:
            listener.close()
            sock.close()
        assert_only_replies(raw)
        assert "postel" not in launcher.log()
    finally:
        launcher.stop()


def test_syslog_unreachable_falls_back_to_a_separate_stderr(tmp_path):
    """`log = "syslog"` with no syslog daemon, and stderr not the client's: lines go to stderr, with the reason."""
    launcher = launch("socat", tmp_path, log="syslog")
    try:
        done, raw = dialogue(launcher.port, message("fallback"))
        assert_only_replies(raw)
        deadline = time.monotonic() + 10
        while f"{done.queue_id}: to=<alice>" not in launcher.log():
            assert time.monotonic() < deadline, launcher.log()
            time.sleep(0.05)
        log = launcher.log()
        assert f"cannot reach the syslog socket {tmp_path / 'log.sock'}" in log, log
        assert f"{done.queue_id}: from=<carol@example.org>" in log
    finally:
        launcher.stop()


def test_daemon_logs_to_syslog_when_configured(make_postel, syslog):
    server = make_postel(log="syslog", syslog_socket=str(syslog.path))
    syslog.wait_for("postel ready: listening on")
    conn = server.session()
    conn.expect("QUIT", 221)
    syslog.wait_for("disconnect from 127.0.0.1")
    assert {facility for facility, _, _ in syslog.lines()} == {MAIL}
    assert "postel ready" not in server.log()


def test_inetd_stderr_on_a_local_socket_of_its_own_stays_stderr(tmp_path, syslog):
    """systemd's StandardError=journal makes stderr a Unix socket to the journal: not the client's, so kept."""
    config = write_config(tmp_path, syslog_socket=str(syslog.path))
    journal, theirs = socket.socketpair()
    env = {k: v for k, v in os.environ.items() if k != "POSTEL_CONFIG"}
    env.update(RUST_LOG="info", TCPREMOTEIP="127.0.0.1")
    with theirs:
        proc = subprocess.Popen([str(POSTEL_BIN), "inetd", "--config", str(config)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=theirs, env=env)
    try:
        out, _ = proc.communicate(b"QUIT\r\n", timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert_only_replies(out)
    journal.settimeout(5)
    logged = b""
    with journal:
        while chunk := journal.recv(65536):
            logged += chunk
    assert b"disconnect from 127.0.0.1" in logged, logged
    assert syslog.received == []


def test_rust_log_picks_the_dialogue_by_module_and_the_log_shows_client_bytes_escaped(make_postel, monkeypatch):
    """Events log under the module that emits them: postel::smtp=debug is the dialogue without the delivery's
    steps. A client's control bytes reach the log escaped, as replies show them, and its backslash doubled."""
    monkeypatch.setenv("POSTEL_TEST_RUST_LOG", "info,postel::smtp=debug")
    server = make_postel(**DELIVER)
    conn = server.session()
    conn.send(b"NOOP \x1b[2J\x07 \\x41 \xc3\xa9\r\n")
    assert conn.reply().code == 250
    done = transaction(conn, "carol@example.org", ["alice@localhost"], message("by module"))
    server.wait_log(rf"{done.queue_id}: to=<alice>")
    log = server.log_path.read_bytes()
    assert rb": C: NOOP \x1b[2J\x07 \\x41 \xc3\xa9" + b"\n" in log, log
    assert b"\x1b" not in log and b"\x07" not in log and b"\xc3" not in log, log
    assert b": C: MAIL FROM:<carol@example.org>" in log and b": S: 250 2.1.0 Ok" in log, log
    assert b": route: " not in log, "delivery steps log under postel::delivery"
