"""Slow clients cannot hold a session worker: a command line must arrive whole within command_timeout of its
first byte, and message content must keep min_data_rate after the first data_timeout (421 4.4.2 otherwise).

The timeouts are a second or two here, so that each trickling client is cut off quickly.
"""

import time

import pytest

TRICKLE_LIMIT = 15.0  # seconds a trickle may go on before the test gives up on a 421


def trickle(conn, chunks, interval):
    """Sends one chunk every `interval` seconds until the server replies; returns (reply, seconds taken)."""
    started = time.monotonic()
    for chunk in chunks:
        assert time.monotonic() - started < TRICKLE_LIMIT, "the server let the trickle go on"
        try:
            conn.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # cut off: the reply is waiting to be read
        try:
            return conn.reply(timeout=interval), time.monotonic() - started
        except TimeoutError:
            continue
    raise AssertionError("the trickle ended without a reply")


def endless(chunk):
    while True:
        yield chunk


@pytest.fixture
def slow_limits(make_postel):
    return make_postel(command_timeout="2s", data_timeout="1s", min_data_rate=1000)


def test_command_line_sent_a_byte_at_a_time_holds_a_worker_forever(slow_limits):
    """Each byte used to restart command_timeout; now the line must be whole 2 s after its first byte."""
    conn = slow_limits.session()
    reply, _ = trickle(conn, endless(b"N"), 0.3)
    assert (reply.code, reply.enhanced) == (421, "4.4.2"), reply
    assert "command line not received in time" in reply.text
    assert conn.closed()
    slow_limits.wait_log(r"disconnect from .*\(command line not received in time\)")


def test_complete_commands_a_second_apart_go_on(slow_limits):
    """Only an incomplete line is on the clock: a client that answers each reply within command_timeout stays."""
    conn = slow_limits.session()
    for _ in range(4):
        time.sleep(1)
        conn.expect("NOOP", 250)
    conn.expect("QUIT", 221)


def test_idle_client_is_closed_after_command_timeout(slow_limits):
    conn = slow_limits.session()
    reply = conn.reply(timeout=10)
    assert (reply.code, reply.enhanced) == (421, "4.4.2"), reply
    assert "timeout exceeded" in reply.text


def start_data(conn):
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)


def test_message_content_trickled_below_min_data_rate_holds_a_worker_forever(slow_limits):
    """100 bytes every 0.2 s is 500 bytes/s, under min_data_rate = 1000: cut off once data_timeout has passed."""
    conn = slow_limits.session()
    start_data(conn)
    conn.send(b"Subject: slow\r\n\r\n")
    reply, _ = trickle(conn, endless(b"x" * 98 + b"\r\n"), 0.2)
    assert (reply.code, reply.enhanced) == (421, "4.4.2"), reply
    assert "message content arriving too slowly" in reply.text
    assert conn.closed()
    slow_limits.wait_log(r"disconnect from .*\(message content arriving too slowly\)")
    slow_limits.assert_nothing_queued()


def test_bdat_chunk_trickled_below_min_data_rate_holds_a_worker_forever(slow_limits):
    conn = slow_limits.session()
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.send(b"BDAT 1000000 LAST\r\n")
    reply, _ = trickle(conn, endless(b"y" * 100), 0.2)
    assert (reply.code, reply.enhanced) == (421, "4.4.2"), reply
    assert "message content arriving too slowly" in reply.text
    slow_limits.assert_nothing_queued()


def test_message_content_at_a_good_rate_may_take_longer_than_data_timeout(slow_limits):
    """4000 bytes/s for 3 s: over data_timeout in all, above min_data_rate on average, and accepted."""
    conn = slow_limits.session()
    start_data(conn)
    conn.send(b"Subject: steady\r\n\r\n")
    for _ in range(15):
        conn.send(b"z" * 798 + b"\r\n")
        time.sleep(0.2)
    conn.send(b".\r\n")
    done = conn.reply()
    assert done.code == 250 and done.queue_id, done
