"""SMTP smuggling: only CRLF.CRLF ends a message.

Each sequence below ends the message for some server somewhere. Here the
text after it, including a smuggled second transaction, must stay part of the
one message, and only one message may be queued.
"""

import time

import pytest

from helpers import transaction

SEQUENCES = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-cr": b"\r\n.\r",
    "crlf-dot-lf": b"\r\n.\n",
}
HEAD = b"From: carol@example.org\r\nSubject: smuggling\r\n\r\nfirst part"
SMUGGLED = (b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nsmuggled text\r\n")


@pytest.mark.parametrize("sequence", SEQUENCES.values(), ids=SEQUENCES.keys())
def test_smuggled_end_of_data_does_not_end_the_message(postel, sequence):
    conn = postel.session()
    done = transaction(conn, "carol@example.org", ["alice@localhost"], HEAD + sequence + SMUGGLED)
    assert done.code == 250 and done.queue_id, done
    # Exactly one reply for the message: the next command gets its own answer.
    conn.expect("NOOP", 250, "2.0.0")
    conn.expect("QUIT", 221)
    assert conn.closed()
    assert postel.queued_ids() == [done.queue_id]
    envelope, stored = postel.record(done.queue_id)
    assert envelope["sender"] == "<carol@example.org>"
    assert envelope["rcpt"] == ["<alice@localhost>"]
    assert stored.startswith(b"From: carol@example.org\r\nSubject: smuggling\r\n\r\nfirst part")
    assert b"MAIL FROM:<evil@example.org>" in stored
    assert stored.endswith(b"smuggled text\r\n")


@pytest.mark.parametrize("sequence", [b"\n.\n", b"\n.\r\n", b"\r\n.\n"], ids=["lf-dot-lf", "lf-dot-crlf", "crlf-dot-lf"])
def test_smuggling_with_bare_lf_rejected(make_postel, sequence):
    postel = make_postel(bare_lf="reject")
    conn = postel.session()
    done = transaction(conn, "carol@example.org", ["alice@localhost"], HEAD + sequence + SMUGGLED)
    assert (done.code, done.enhanced) == (550, "5.6.0"), done
    conn.expect("NOOP", 250)
    postel.assert_nothing_queued()


def test_smuggling_split_across_writes(postel):
    # The same bytes arriving in pieces, split inside the sequence, change nothing.
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("DATA", 354)
    for piece in [HEAD + b"\r", b"\n", b".", b"\n" + SMUGGLED[:10], SMUGGLED[10:] + b".", b"\r", b"\n"]:
        conn.send(piece)
        time.sleep(0.05)
    done = conn.reply()
    assert done.code == 250, done
    conn.expect("NOOP", 250)
    assert postel.queued_ids() == [done.queue_id]
    assert b"smuggled text" in postel.record(done.queue_id)[1]
