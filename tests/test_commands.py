"""Every command gets a deliberate answer; bad input gets an error and never breaks the session."""

import pytest

from helpers import HOSTNAME


def test_greeting_and_ehlo(postel):
    conn = postel.connect()
    greeting = conn.reply()
    assert greeting.code == 220 and HOSTNAME in greeting.text, greeting
    ehlo = conn.expect("EHLO client.test", 250)
    assert ehlo.lines[0].startswith(HOSTNAME), ehlo
    keywords = {line.split()[0].upper() for line in ehlo.lines[1:]}
    assert {"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "HELP"} <= keywords, ehlo
    assert f"SIZE {50 * 1024 * 1024}" in ehlo.lines, ehlo


@pytest.mark.parametrize("line, code, enhanced", [
    ("NOOP", 250, "2.0.0"),
    ("NOOP anything at all", 250, "2.0.0"),
    ("RSET", 250, "2.0.0"),
    ("VERB", 250, "2.0.0"),
    ("TURN", 502, "5.5.1"),
    ("SEND FROM:<carol@example.org>", 502, "5.5.1"),
    ("SOML FROM:<carol@example.org>", 502, "5.5.1"),
    ("SAML FROM:<carol@example.org>", 502, "5.5.1"),
    ("FROB", 500, "5.5.2"),
    ("RCPT TO:<alice@localhost>", 503, "5.5.1"),
    ("DATA", 503, "5.5.1"),
])
def test_command_answers(postel, line, code, enhanced):
    conn = postel.session()
    conn.expect(line, code, enhanced)
    conn.expect("NOOP", 250, "2.0.0")


def test_etrn_is_not_offered_yet(postel):
    conn = postel.session()
    r = conn.cmd("ETRN example.org")
    assert r.code == 458 and r.enhanced and r.enhanced.startswith("4."), r


def test_help(postel):
    conn = postel.session()
    r = conn.cmd("HELP")
    assert r.code == 214 and r.enhanced == "2.0.0", r
    r = conn.cmd("HELP MAIL")
    assert r.code == 214 and "MAIL" in r.text.upper(), r


def test_vrfy_and_expn_get_deliberate_answers(postel):
    conn = postel.session()
    for line in ["VRFY alice", "VRFY <nobody@localhost>", "EXPN staff"]:
        r = conn.cmd(line)
        # RFC 5321 3.5.3: 250/251/252 answer, 550/553 refuse, 502 when not offered.
        assert r.code in (250, 251, 252, 502, 550, 553), (line, r)
        assert r.enhanced and r.enhanced[0] == str(r.code)[0], (line, r)
    conn.expect("NOOP", 250)


def test_rset_ends_the_transaction(postel):
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("RSET", 250, "2.0.0")
    conn.expect("DATA", 503, "5.5.1")
    conn.expect("RCPT TO:<alice@localhost>", 503, "5.5.1")
    conn.expect("MAIL FROM:<carol@example.org>", 250)


def test_sequencing_errors(postel):
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    conn.expect("MAIL FROM:<carol@example.org>", 503, "5.5.1")
    r = conn.cmd("DATA")  # no recipient yet: RFC 5321 3.3 allows 503 or 554
    assert r.code in (503, 554) and r.enhanced == "5.5.1", r
    conn.expect("RCPT TO:<alice@localhost>", 250)
    conn.expect("QUIT", 221, "2.0.0")
    assert conn.closed()
    postel.assert_nothing_queued()


def test_unknown_mail_parameter(postel):
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@example.org> FROBNICATE=yes", 555, "5.5.4")
    conn.expect("MAIL FROM:<carol@example.org>", 250)


def test_nul_bytes_and_garbage(postel):
    conn = postel.session()
    for junk in [b"NO\x00OP", b"\x00\x00\x00", b"\xff\xfe\xfd garbage", b"MAIL FROM:<ca\x00rol@example.org>",
                 b"\x1b[31mEHLO\x1b[0m", b"   ", b"", b"RCPT", b"EHLO"]:
        r = conn.cmd(junk)
        assert 500 <= r.code < 600, (junk, r)
        assert r.enhanced and r.enhanced.startswith("5."), (junk, r)
    conn.expect("NOOP", 250)
    conn.expect("EHLO client.test", 250)
    conn.expect("MAIL FROM:<carol@example.org>", 250)
    assert postel.proc.poll() is None


def test_overlong_command_line(postel):
    conn = postel.session()
    for size in [513, 2000, 100_000]:
        conn.send(b"NOOP " + b"x" * size + b"\r\n")
        r = conn.reply()
        assert (r.code, r.enhanced) == (500, "5.5.2"), (size, r)
        # One reply for the whole line: the next command gets its own answer.
        conn.expect("NOOP", 250, "2.0.0")
    conn.send(b"RCPT TO:<" + b"a" * 600 + b"@localhost>\r\n")
    assert conn.reply().code == 500
    conn.expect("MAIL FROM:<carol@example.org>", 250)


def test_line_at_the_limit_is_accepted(postel):
    conn = postel.session()
    line = b"NOOP " + b"x" * (512 - len(b"NOOP \r\n"))
    assert len(line) + 2 == 512
    conn.send(line + b"\r\n")
    assert conn.reply().code == 250


def test_a_configured_long_line_limit_holds_past_the_input_buffer(make_postel):
    # The input buffer is at least 16 KiB and twice max_line_length: a longer limit gets a longer buffer.
    postel = make_postel(max_line_length=32_768)
    conn = postel.session()
    line = b"NOOP " + b"x" * (32_768 - len(b"NOOP \r\n"))
    conn.send(line + b"\r\n")
    assert conn.reply().code == 250
    conn.send(line + b"x\r\n")
    r = conn.reply()
    assert (r.code, r.enhanced) == (500, "5.5.2"), r
    conn.expect("NOOP", 250, "2.0.0")


def test_too_many_errors_closes_with_421(make_postel):
    postel = make_postel(max_errors=5)
    conn = postel.session()
    for n in range(1, 5):
        r = conn.cmd(f"BOGUS{n}")
        assert r.code == 500, (n, r)
    # The fifth error reaches the limit: its error reply may be followed by 421, or be 421.
    r = conn.cmd("BOGUS5")
    if r.code != 421:
        assert r.code == 500, r
        r = conn.reply()
    assert r.code == 421, r
    assert conn.closed(), "the server keeps the connection open after 421"
    fresh = postel.session()
    fresh.expect("NOOP", 250)
