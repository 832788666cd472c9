"""The server's life: clients that vanish, shutdown on SIGTERM, and `postel check`."""

import signal
import socket
import struct
import subprocess
import time
import tomllib

import pytest

from helpers import POSTEL_BIN, message, transaction, wait_until, write_config


@pytest.mark.parametrize("size, reset", [(1_000, False), (300_000, False), (300_000, True)],
                         ids=["small-fin", "large-fin", "large-rst"])
def test_client_vanishes_during_data(postel, size, reset):
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)
    conn.send(b"Subject: cut short\r\n\r\n" + (b"y" * 98 + b"\r\n") * (size // 100))
    if size > 128 * 1024:
        # doc/spool.md: a message over 128 KiB is streamed into its own file in tmp/.
        assert wait_until(lambda: postel.tmp_files() != [], 2), "no file in tmp/ for a large message"
    else:
        time.sleep(0.2)
    if reset:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    postel.wait_disconnects(2)  # the start-up probe, then this session
    assert wait_until(lambda: postel.tmp_files() == []), f"left in tmp/: {postel.tmp_files()}"
    postel.assert_nothing_queued()
    # The worker is back in the pool.
    fresh = postel.session()
    assert transaction(fresh, "carol@example.org", ["alice@localhost"], message("after")).code == 250
    assert len(postel.queued_ids()) == 1


def test_sigterm_lets_the_session_in_flight_finish(make_postel):
    postel = make_postel(shutdown_grace="10s")
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)
    msg = message("in flight", "first half\r\n")
    conn.send(msg)
    time.sleep(0.2)
    postel.signal(signal.SIGTERM)
    postel.wait_log(r"received signal \d+: no longer accepting connections")
    # No new sessions once SIGTERM arrived: refused, or closed without a 220.
    try:
        late = socket.create_connection(("127.0.0.1", postel.port), timeout=2)
        try:
            greeting = late.recv(100)
        except (socket.timeout, ConnectionResetError):
            greeting = b""
        late.close()
        assert not greeting.startswith(b"220"), f"a new connection was greeted after SIGTERM: {greeting!r}"
    except ConnectionRefusedError:
        pass
    assert postel.proc.poll() is None, "exited before the session in flight finished"
    conn.send(b"second half\r\n.\r\n")
    done = conn.reply()
    assert done.code == 250 and done.queue_id, done
    r = conn.cmd("QUIT")
    assert r.code in (221, 421), r
    assert postel.wait_exit(15) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", postel.port), timeout=2)
    _, stored = postel.record(done.queue_id)
    assert stored == msg + b"second half\r\n"


def test_sigterm_on_an_idle_server_exits_0(postel):
    postel.signal(signal.SIGTERM)
    assert postel.wait_exit(10) == 0
    assert "panicked" not in postel.log()


def check(tmp_path, text):
    path = tmp_path / "postel.toml"
    path.write_text(text)
    return subprocess.run([str(POSTEL_BIN), "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("text, line, words", [
    ('hostname = "mx.test"\nworkers = 4\nlisten_backlogg = 5\n', 3, "unknown key 'listen_backlogg'"),
    ('workers = "many"\n', 1, "workers"),
    ('\n\nmax_line_length = 100\n', 3, "max_line_length"),
    ('command_timeout = "soon"\n', 1, "command_timeout"),
    ('listen = ["localhost"]\n', 1, "listen"),
    ('bare_lf = "sometimes"\n', 1, "bare_lf"),
    ('trusted_networks = ["10.0.0.0/33"]\n', 1, "trusted_networks"),
    ('workers = 4\nworkers = 5\n', 2, ""),
    ('workers = [\n', 1, ""),
])
def test_check_reports_bad_config_with_file_and_line(tmp_path, text, line, words):
    run = check(tmp_path, text)
    assert run.returncode != 0, run
    assert f"postel.toml:{line}:" in run.stderr, run.stderr
    assert words in run.stderr, run.stderr
    assert "panicked" not in run.stderr


def test_check_prints_the_effective_config(tmp_path):
    run = check(tmp_path, 'workers = 7\nlocal_users = ["alice"]\ncommand_timeout = "2m"\n')
    assert run.returncode == 0, run.stderr
    config = tomllib.loads(run.stdout)
    assert config["workers"] == 7
    assert config["accept_queue"] == 7
    assert config["local_users"] == ["alice"]
    assert config["command_timeout"] == "2m"
    assert config["listen"] == ["127.0.0.1:2525"]
    assert config["max_message_size"] == 50 * 1024 * 1024
    assert config["max_recipients"] == 1000
    assert config["max_line_length"] == 512
    assert config["max_errors"] == 20
    assert config["max_connections_per_client"] == 20
    assert config["trusted_networks"] == ["127.0.0.0/8", "::1/128"]
    assert config["bare_lf"] == "normalize"
    for key in ["hostname", "local_domains", "spool_dir", "mailbox_dir", "data_timeout", "shutdown_grace"]:
        assert key in config, key


def test_serve_refuses_a_bad_config(tmp_path):
    path = write_config(tmp_path, listen_backlogg=5)
    run = subprocess.run([str(POSTEL_BIN), "serve", "--config", str(path)],
                         capture_output=True, text=True, timeout=10)
    assert run.returncode != 0
    assert "postel.toml:" in run.stderr and "listen_backlogg" in run.stderr, run.stderr
