"""SEND, SOML and SAML (RFC 821 §3.5) with terminal_delivery: the test opens pseudo-terminals, writes a utmp file
naming users on them, and reads what the server writes from the terminals' master side."""

import os
import re
import select
import struct
import time
import tty

import pytest

from mboxutil import DELIVER
from helpers import wait_until

UTMP_RECORD = 384
USER_PROCESS = 7


def utmp_record(user, line):
    record = bytearray(UTMP_RECORD)
    struct.pack_into("hxxi", record, 0, USER_PROCESS, os.getpid())
    record[8:8 + len(line)] = line.encode()
    record[44:44 + len(user)] = user.encode()
    return bytes(record)


class Terminal:
    """A pseudo-terminal in raw mode; `mode` sets its permissions (0o620 is `mesg y`, 0o600 `mesg n`)."""

    def __init__(self, mode=0o620):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        os.chmod(self.path, mode)
        self.line = self.path.removeprefix("/dev/")

    def read(self, until=b"EOF\r\n", timeout=5.0):
        got, deadline = b"", time.monotonic() + timeout
        while until not in got and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], max(deadline - time.monotonic(), 0))
            if ready:
                got += os.read(self.master, 65536)
        return got

    def close(self):
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminals():
    opened = []

    def open_one(mode=0o620):
        terminal = Terminal(mode)
        opened.append(terminal)
        return terminal

    yield open_one
    for terminal in opened:
        terminal.close()


def server_with(make_postel, tmp_path, sessions):
    utmp = tmp_path / "utmp"
    utmp.write_bytes(b"".join(utmp_record(user, terminal.line) for user, terminal in sessions))
    return make_postel(**DELIVER, terminal_delivery=True, utmp_file=str(utmp))


def reaches_mailbox(server, user, text):
    """Whether `text` arrives in `user`'s mailbox within 10 s."""
    box = server.mailboxes / user
    return wait_until(lambda: box.exists() and text in box.read_bytes(), timeout=10)


def message_to(conn, command, recipients, body):
    conn.expect(f"{command} FROM:<carol@example.org>", 250)
    for to in recipients:
        conn.expect(f"RCPT TO:<{to}>", 250)
    conn.expect("DATA", 354)
    conn.send(body + b".\r\n")
    return conn.reply(timeout=15)


def test_send_writes_to_the_terminal_of_a_logged_in_user_and_not_to_the_mailbox(make_postel, tmp_path, terminals):
    alice = terminals()
    server = server_with(make_postel, tmp_path, [("alice", alice)])
    conn = server.session()
    reply = message_to(conn, "SEND", ["alice@localhost"], b"Subject: now\r\n\r\nLook up.\r\n")
    assert reply.code == 250, reply
    assert "<alice@localhost>: written to 1 terminal(s)" in reply.text
    shown = alice.read()
    assert b"Message from carol@example.org at " in shown, shown
    assert b"Look up.\r\n" in shown and shown.endswith(b"EOF\r\n"), shown
    conn.expect("QUIT", 221)
    time.sleep(0.5)
    assert not (server.mailboxes / "alice").exists(), "SEND goes to the terminal only"


def test_send_to_a_user_not_logged_in_or_refusing_messages_gets_450(make_postel, tmp_path, terminals):
    refusing = terminals(mode=0o600)
    server = server_with(make_postel, tmp_path, [("alice", refusing)])
    conn = server.session()
    conn.expect("SEND FROM:<carol@example.org>", 250)
    reply = conn.expect("RCPT TO:<bob@localhost>", 450)
    assert "not logged in" in reply.text
    reply = conn.expect("RCPT TO:<alice@localhost>", 450)
    assert "mesg n" in reply.text
    conn.expect("RCPT TO:<carol@example.org>", 550)
    assert refusing.read(timeout=0.3) == b""


def test_an_unreadable_utmp_file_is_logged_not_only_answered_450(make_postel, tmp_path):
    missing = tmp_path / "no-such-utmp"
    server = make_postel(**DELIVER, terminal_delivery=True, utmp_file=str(missing))
    conn = server.session()
    conn.expect("SEND FROM:<carol@example.org>", 250)
    conn.expect("RCPT TO:<alice@localhost>", 450)
    server.wait_log(rf"WARN .*utmp_file {re.escape(str(missing))}: No such file or directory")


def test_soml_to_a_logged_out_user_lands_in_the_mailbox(make_postel, tmp_path, terminals):
    server = server_with(make_postel, tmp_path, [])
    conn = server.session()
    reply = message_to(conn, "SOML", ["bob@localhost"], b"Subject: later\r\n\r\nRead this later.\r\n")
    assert reply.code == 250 and "<bob@localhost>: not at a terminal; queued for the mailbox" in reply.text, reply
    assert reaches_mailbox(server, "bob", b"Read this later."), server.log()[-2000:]


def test_saml_writes_to_the_terminal_and_the_mailbox(make_postel, tmp_path, terminals):
    alice = terminals()
    server = server_with(make_postel, tmp_path, [("alice", alice)])
    conn = server.session()
    reply = message_to(conn, "SAML", ["alice@localhost"], b"Subject: both\r\n\r\nIn both places.\r\n")
    assert reply.code == 250 and "written to 1 terminal(s), and queued for the mailbox" in reply.text, reply
    assert b"In both places." in alice.read()
    assert reaches_mailbox(server, "alice", b"In both places."), server.log()[-2000:]


def test_escape_sequences_arrive_made_visible_and_long_messages_are_cut(make_postel, tmp_path, terminals):
    alice = terminals()
    server = server_with(make_postel, tmp_path, [("alice", alice)])
    conn = server.session()
    lines = b"".join(b"line %d\r\n" % n for n in range(30))
    reply = message_to(conn, "SEND", ["alice@localhost"], b"Subject: \x1b[2Jgotcha\x07\r\n\r\n" + lines)
    assert reply.code == 250, reply
    shown = alice.read()
    assert b"\x1b" not in shown, shown
    assert b"Subject: ^[[2Jgotcha^G" in shown, shown
    assert b"[12 more lines not shown]" in shown, shown


def test_send_is_refused_while_terminal_delivery_is_off(postel):
    conn = postel.session()
    reply = conn.expect("SEND FROM:<carol@example.org>", 502)
    assert "not offered" in reply.text
    commands = conn.expect("HELP", 214).text.split()
    assert "MAIL" in commands and not {"SEND", "SOML", "SAML"} & set(commands), commands


def test_help_lists_send_soml_and_saml_while_terminal_delivery_is_on(make_postel, tmp_path):
    conn = server_with(make_postel, tmp_path, []).session()
    commands = conn.expect("HELP", 214).text.split()
    assert {"MAIL", "SEND", "SOML", "SAML"} <= set(commands), commands
