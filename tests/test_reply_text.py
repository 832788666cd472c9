"""Replies never echo raw client bytes: a command line with a bare CR gets 500 5.5.2, and client text shown in a
reply (VRFY, EXPN, ETRN, HELP, MAIL parameters) is escaped and cut short. The cases are what two minutes of
fuzzing from outside drew from the server before."""

import re
import socket

REPLY_LINE = re.compile(rb"^[2-5][0-9][0-9][ -][\x20-\x7e]*$")


def dialogue(port, lines):
    """Sends EHLO, `lines` and QUIT in one go; returns every reply line the server wrote before it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(line + b"\r\n" for line in [b"EHLO fuzz.test", *lines, b"QUIT"]))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.endswith(b"\r\n"), received
    lines = received[:-2].split(b"\r\n")
    for line in lines:
        assert REPLY_LINE.match(line), f"not a printable reply line: {line!r}"
    return [line.decode() for line in lines]


def replies_after_ehlo(lines):
    """The last line of each reply after the greeting and EHLO's."""
    last_lines = [line for line in lines if line[3] == " "]
    return last_lines[2:]


def test_vrfy_x_cr_250_2_0_0_ok_reads_as_one_refused_command(postel):
    replies = replies_after_ehlo(dialogue(postel.port, [b"VRFY x\r250 2.0.0 Ok"]))
    assert replies == ["500 5.5.2 Error: bare CR in command line; SMTP lines end with CR LF", "221 2.0.0 Bye"]


def test_bare_cr_lines_found_by_fuzzing_get_500(postel):
    lines = [b"EXPN <localhost\rBDAT 3 LAST>", b"HELP localhost\rDATA", b"MAIL FROM:<carol@example.org> FOO=bar\rquit"]
    replies = replies_after_ehlo(dialogue(postel.port, lines))
    assert [r[:9] for r in replies] == ["500 5.5.2"] * 3 + ["221 2.0.0"], replies


def test_control_characters_in_echoed_text_are_escaped(postel):
    lines = [b"VRFY nobody\x13\x1b[0m", b"EXPN list\x7f\xc3\xa9", b"ETRN #queue\x13", b"HELP \x13",
             b"MAIL FROM:<carol@example.org> X=\x01y"]
    replies = replies_after_ehlo(dialogue(postel.port, lines))
    assert replies[:5] == [
        "550 5.1.1 <nobody\\x13\\x1b[0m>: no such user here",
        "550 5.1.1 <list\\x7f\\xc3\\xa9>: no such list here",
        "458 4.3.0 Unable to queue messages for #queue\\x13: queue names are not supported",
        "504 5.5.1 HELP: no such command '\\x13'",
        "501 5.5.4 Syntax: bad parameter 'X=\\x01y'",
    ], replies


def test_long_client_text_is_cut_short(postel):
    replies = replies_after_ehlo(dialogue(postel.port, [b"VRFY " + b"w" * 400]))
    assert replies[0] == "550 5.1.1 <" + "w" * 64 + "...>: no such user here", replies
