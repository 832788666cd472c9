"""Limits: message size, memory, recipients, relay, connections."""

import hashlib
import time

from helpers import REPLY_TIMEOUT, message, transaction

MIB = 1024 * 1024


def send_big_body(conn, total):
    """Sends a `total`-byte message (a header, then 1000-byte lines) in ~1 MiB writes; returns its sha256."""
    head = b"Subject: big\r\n\r\n"
    line = b"x" * 998 + b"\r\n"
    lines, rem = divmod(total - len(head), len(line))
    if rem == 1:  # no line is one byte long: end with 999 + 2 bytes instead
        lines, tail = lines - 1, [b"x" * 997 + b"\r\n", b"\r\n"]
    else:
        tail = [b"y" * (rem - 2) + b"\r\n"] if rem else []
    digest = hashlib.sha256()
    for piece in [head] + [line * min(1048, lines - n) for n in range(0, lines, 1048)] + tail:
        conn.send(piece)
        digest.update(piece)
    return digest.hexdigest()


def send_big_message(conn, total, mail="MAIL FROM:<carol@example.org>", timeout=REPLY_TIMEOUT):
    """MAIL (`mail`), RCPT to alice, DATA and a `total`-byte message (send_big_body); returns (end-of-data reply,
    the message's sha256)."""
    conn.expect(mail, 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)
    sent = send_big_body(conn, total)
    conn.send(b".\r\n")
    return conn.reply(timeout=timeout), sent


def test_20_mib_message_keeps_memory_flat(postel):
    size = 20 * MIB
    conn = postel.session()
    # Warm up: one small message, so the pool and spool have started before measuring.
    assert transaction(conn, "carol@example.org", ["alice@localhost"], message("warm")).code == 250
    before = postel.status("VmHWM")
    done, sent = send_big_message(conn, size, "MAIL FROM:<carol@example.org> SIZE=%d" % size, timeout=60)
    assert done.code == 250 and done.queue_id, done
    growth = postel.status("VmHWM") - before
    assert growth < 8 * 1024, f"peak RSS grew by {growth} KiB for a 20 MiB message"
    envelope, stored = postel.record(done.queue_id)
    assert len(stored) == size
    assert hashlib.sha256(stored).hexdigest() == sent
    assert envelope["size"] == str(size)


def test_size_parameter_over_the_limit_refused_at_mail(make_postel):
    postel = make_postel(max_message_size=100_000)
    conn = postel.session()
    assert "SIZE 100000" in conn.cmd("EHLO client.test").lines
    conn.expect("MAIL FROM:<carol@example.org> SIZE=100001", 552, "5.3.4")
    conn.expect("MAIL FROM:<carol@example.org> SIZE=100000", 250)
    conn.expect("QUIT", 221)
    postel.assert_nothing_queued()


def test_message_over_the_limit_refused_at_end_of_data(make_postel):
    postel = make_postel(max_message_size=100_000)
    conn = postel.session()
    r, _ = send_big_message(conn, 300_000)
    assert (r.code, r.enhanced) == (552, "5.3.4"), r
    # The rest of the message was drained: the session goes on.
    conn.expect("NOOP", 250)
    postel.assert_nothing_queued()
    assert postel.tmp_files() == []
    ok = transaction(conn, "carol@example.org", ["alice@localhost"], message("small"))
    assert ok.code == 250, ok
    assert len(postel.queued_ids()) == 1


def test_message_of_exactly_the_limit_is_accepted(make_postel):
    postel = make_postel(max_message_size=100_000)
    conn = postel.session()
    done, _ = send_big_message(conn, 100_000)
    assert done.code == 250, done
    assert len(postel.record(done.queue_id)[1]) == 100_000


def test_1000_recipients_then_452(make_postel):
    postel = make_postel(local_users="any")
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.send(b"".join(b"RCPT TO:<user%04d@localhost>\r\n" % n for n in range(1001)))
    replies = [conn.reply() for _ in range(1001)]
    refused = [(n, r) for n, r in enumerate(replies[:1000]) if r.code != 250]
    assert not refused, refused[:3]
    assert (replies[1000].code, replies[1000].enhanced) == (452, "4.5.3"), replies[1000]
    conn.expect("DATA", 354)
    conn.send(message("many") + b".\r\n")
    done = conn.reply()
    assert done.code == 250, done
    envelope, _ = postel.record(done.queue_id)
    assert envelope["rcpt"] == ["<user%04d@localhost>" % n for n in range(1000)]


def test_relay_denied_to_untrusted_client(make_postel):
    postel = make_postel(trusted_networks=["127.0.0.1/32"])
    outsider = postel.session(source="127.0.0.2")
    outsider.expect("MAIL FROM:<carol@example.org>", 250)
    outsider.expect("RCPT TO:<user@example.com>", 550, "5.7.1")
    outsider.expect("RCPT TO:<alice@localhost>", 250)  # local mail is fine from anywhere
    outsider.expect("QUIT", 221)
    insider = postel.session(source="127.0.0.1")
    insider.expect("MAIL FROM:<carol@example.org>", 250)
    insider.expect("RCPT TO:<user@example.com>", 250, "2.1.5")
    # No DATA: a queued remote message would make delivery reach outside this machine.
    insider.expect("RSET", 250)
    insider.expect("QUIT", 221)
    postel.assert_nothing_queued()


def test_per_client_connection_limit(make_postel):
    postel = make_postel(trusted_networks=["127.0.0.1/32"], max_connections_per_client=2)
    held = [postel.session(source="127.0.0.2") for _ in range(2)]
    extra = postel.connect(source="127.0.0.2")
    r = extra.reply()
    assert (r.code, r.enhanced) == (421, "4.3.2"), r
    assert extra.closed()
    # Trusted clients are not limited.
    trusted = [postel.session(source="127.0.0.1") for _ in range(3)]
    for conn in held + trusted:
        conn.expect("NOOP", 250)


def test_pool_full_gets_421(make_postel):
    postel = make_postel(workers=2, accept_queue=1)
    postel.wait_disconnects(1)  # the start-up probe is gone
    conns, verdict = [], None
    for n in range(8):
        conn = postel.connect()
        conns.append(conn)
        try:
            r = conn.reply(timeout=1)
        except TimeoutError:
            continue  # waiting in the accept queue
        if r.code == 421:
            verdict = (n, r)
            break
        assert r.code == 220, r
    assert verdict, "8 idle connections and no 421 from a server with 2 workers and a queue of 1"
    n, r = verdict
    assert r.enhanced == "4.3.2", r
    assert conns[-1].closed()
    postel.wait_log(r"refused 127\.0\.0\.1:\d+: all session workers are busy")
    for conn in conns:
        conn.close()
    # Once the idle clients are gone, the server serves again.
    deadline = time.monotonic() + 10
    while True:
        conn = postel.connect()
        try:
            if conn.reply(timeout=2).code == 220:
                break
        except (TimeoutError, EOFError):
            pass
        conn.close()
        assert time.monotonic() < deadline, "no 220 within 10 s after the idle clients left"
        time.sleep(0.2)
    conn.expect("EHLO client.test", 250)
    # 2 workers busy and 1 waiting: only the fourth connection may be refused.
    assert n == 3, f"421 on connection {n + 1}; expected on connection 4"


def test_burst_of_connections_within_the_pool_is_not_refused(make_postel):
    # As many clients as idle workers, all connecting at once: none may get 421.
    postel = make_postel(workers=8, accept_queue=1)
    postel.wait_disconnects(1)
    for round in range(5):
        conns = [postel.connect() for _ in range(8)]
        replies = [conn.reply(timeout=5) for conn in conns]
        assert all(r.code == 220 for r in replies), f"round {round}: {replies}"
        for conn in conns:
            conn.close()
        postel.wait_disconnects(1 + 8 * (round + 1))
