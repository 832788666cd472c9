"""`postel inetd`: one SMTP session on stdin/stdout, over a pipe and behind real socket launchers."""

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import time

import pytest

import spool
from helpers import POSTEL_BIN, InetdLauncher, SmtpConn, find_record, free_port, message, transaction, write_config


@pytest.fixture
def config(tmp_path):
    if not POSTEL_BIN.is_file():
        pytest.fail(f"no postel binary at {POSTEL_BIN}: run 'cargo build' (or set POSTEL_BIN)")
    return write_config(tmp_path)


def run_inetd_over_pipes(config, env_extra, script):
    """Runs `postel inetd` on two pipes; `script(conn)` talks to it. Returns (exit code, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TCPREMOTEIP", "REMOTE_ADDR")}
    env.update(env_extra)
    env["RUST_LOG"] = "debug"
    log = config.parent / "inetd.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(POSTEL_BIN), "inetd", "--config", str(config)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env)
    conn = SmtpConn(rfd=proc.stdout.fileno(), wfd=proc.stdin.fileno(), close_write=proc.stdin.close)
    try:
        script(conn)
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdin.close()  # a second close of a file object does nothing
        proc.stdout.close()
    text = log.read_text(errors="replace")
    assert "panicked" not in text, text
    return code, text


@pytest.mark.parametrize("env, client", [({"TCPREMOTEIP": "127.0.0.1"}, "127.0.0.1"),
                                         ({"REMOTE_ADDR": "127.0.0.9"}, "127.0.0.9"),
                                         ({}, "unknown")])
def test_inetd_over_a_pipe(config, env, client):
    msg = message("inetd pipe", ".dotted\r\nplain\r\n")
    replies = {}

    def script(conn):
        conn.greet("pipe.test")
        replies["done"] = transaction(conn, "carol@example.org", ["alice@localhost"],
                                      msg.replace(b"\r\n.", b"\r\n.."))
        conn.expect("QUIT", 221)
        assert conn.closed(), "postel inetd did not close stdout after QUIT"

    code, log = run_inetd_over_pipes(config, env, script)
    done = replies["done"]
    assert done.code == 250 and done.queue_id, done
    assert code == 0, log
    envelope, stored = find_record(config.parent / "spool", done.queue_id, log)
    assert stored == msg
    assert envelope["client"] == client
    assert envelope["helo"] == "pipe.test"
    assert len(spool.read_queue(config.parent / "spool")) == 1


def test_inetd_client_going_away_leaves_nothing(config):
    def script(conn):
        conn.greet()
        conn.expect("MAIL FROM:<carol@example.org>", 250)
        conn.expect("RCPT TO:<alice@localhost>", 250)
        conn.expect("DATA", 354)
        conn.send(b"Subject: unfinished\r\n\r\n" + b"z" * 200_000)
        conn.shutdown_write()  # end of file in the middle of the message

    code, log = run_inetd_over_pipes(config, {"TCPREMOTEIP": "127.0.0.1"}, script)
    assert "(queued)" not in log, log
    assert spool.read_queue(config.parent / "spool") == []
    assert spool.tmp_files(config.parent / "spool") == []


def launchers(port, config):
    inetd = f"{POSTEL_BIN} inetd --config {config}"
    return {
        "socat": ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"EXEC:{inetd},nofork"],
        "systemd-socket-activate": ["systemd-socket-activate", "--accept", "--inetd", "-l", f"127.0.0.1:{port}",
                                    str(POSTEL_BIN), "inetd", "--config", str(config)],
    }


@pytest.mark.parametrize("name", ["socat", "systemd-socket-activate"])
def test_inetd_behind_a_socket_launcher(config, name):
    if not shutil.which(name):
        pytest.skip(f"{name} is not installed (tests/setup-tools.sh installs it)")
    port = free_port()
    launcher = InetdLauncher(launchers(port, config)[name], port, config.parent / "launcher.log")
    try:
        msg = message(f"via {name}")
        with smtplib.SMTP("127.0.0.1", port, local_hostname="launched.test", timeout=10) as s:
            s.ehlo()
            assert s.has_extn("pipelining") and s.has_extn("chunking"), s.esmtp_features
            refused = s.sendmail("carol@example.org", ["alice@localhost", "bob@localhost"], msg)
            assert refused == {}
        # Several sessions at once, each its own postel process.
        conns = [SmtpConn.connect(port) for _ in range(3)]
        ids = []
        for n, conn in enumerate(conns):
            conn.greet(f"parallel{n}.test")
        for n, conn in enumerate(conns):
            done = transaction(conn, "carol@example.org", ["bob@localhost"], message(f"parallel {n}"))
            assert done.code == 250, done
            ids.append(done.queue_id)
            conn.expect("QUIT", 221)
            conn.close()
        log = launcher.log()
        for queue_id in ids:
            find_record(config.parent / "spool", queue_id, log)
        records = spool.read_queue(config.parent / "spool")
        by_helo = {e["helo"]: (e, b) for e, b in records}
        assert len(records) == 4, [e for e, _ in records]
        envelope, stored = by_helo["launched.test"]
        assert stored == msg
        assert envelope["rcpt"] == ["<alice@localhost>", "<bob@localhost>"]
        # The session's socket is postel's stdin: getpeername gives the client's address.
        assert envelope["client"] == "127.0.0.1"
        assert sorted(ids) == sorted(by_helo[f"parallel{n}.test"][0]["id"] for n in range(3))
        assert "panicked" not in log, log
    finally:
        launcher.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
