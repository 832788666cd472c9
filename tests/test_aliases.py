"""Aliases (doc/delivery.md "Aliases"): lists, nesting, loops, :include:, EXPN/VRFY, |command targets, and
newaliases with the daemon reading the file again on SIGHUP."""

import collections
import email
import os
import re
import signal
import subprocess

import pytest

from helpers import POSTEL_BIN, REPO, wait_until
from mboxutil import deliver, message_ids, messages, queue_empty, strip_trace

USERS = ["alice", "bob", "carol"]


@pytest.fixture
def aliases(tmp_path):
    """Writes an aliases file (and an :include: list); returns (path, file the pipe alias writes)."""
    members = tmp_path / "members.txt"
    members.write_text("# the list\nalice\nbob, carol\n")
    out = tmp_path / "pipe-out.txt"
    path = tmp_path / "aliases"
    path.write_text(
        "# test aliases\n"
        "staff: alice, bob\n"
        "team: staff,\n"
        "# a comment between a line and its continuation\n"
        "    carol\n"
        "everyone: team, staff, alice\n"
        "loop1: loop2\n"
        "loop2: loop1\n"
        "half: loop1, carol\n"
        f"listed: :include:{members}\n"
        "Mixed-Case: bob\n"
        f'pipe: "|cat > {out}"\n'
    )
    return path, out


def send(postel, sender, rcpts, subject):
    conn = postel.session()
    conn.expect(f"MAIL FROM:<{sender}>", 250)
    for r in rcpts:
        conn.expect(f"RCPT TO:<{r}>", 250)
    conn.expect("DATA", 354)
    conn.send(f"Subject: {subject}\r\nMessage-ID: <{subject}@alias.test>\r\n\r\nTo the list.\r\n.\r\n".encode())
    r = conn.reply()
    assert r.code == 250, r
    conn.cmd("QUIT")
    return r.queue_id


def mailbox_counts(postel):
    counts = {}
    for user in USERS + ["root"]:
        counts[user] = collections.Counter(message_ids(postel.mailboxes / user))
    return counts


def settle(postel):
    assert wait_until(lambda: queue_empty(postel.config_path), 15), postel.log()[-3000:]


def test_lists_nested_aliases_and_includes_reach_each_member_once(make_postel, aliases):
    path, _ = aliases
    postel = make_postel(**deliver(local_users=USERS, aliases=str(path)))
    send(postel, "carol@example.org", ["staff@localhost"], "staff")
    send(postel, "carol@example.org", ["everyone@localhost"], "everyone")
    send(postel, "carol@example.org", ["team@localhost", "staff@localhost", "alice@localhost"], "overlap")
    send(postel, "carol@example.org", ["listed@localhost"], "listed")
    send(postel, "carol@example.org", ["MIXED-case@localhost"], "mixed")
    settle(postel)
    counts = mailbox_counts(postel)
    assert counts["alice"] == {"<staff@alias.test>": 1, "<everyone@alias.test>": 1, "<overlap@alias.test>": 1,
                               "<listed@alias.test>": 1}, counts
    assert counts["bob"] == {"<staff@alias.test>": 1, "<everyone@alias.test>": 1, "<overlap@alias.test>": 1,
                             "<listed@alias.test>": 1, "<mixed@alias.test>": 1}, counts
    assert counts["carol"] == {"<everyone@alias.test>": 1, "<overlap@alias.test>": 1, "<listed@alias.test>": 1}, counts
    for _, raw in messages(postel.mailboxes / "bob"):
        assert raw.split(b"\n")[1].startswith(b"Delivered-To: "), raw[:200]


def dsn_statuses(report):
    """The Status of each recipient a delivery status notification (RFC 3464) reports on."""
    return [block["Status"].strip() for part in report.get_payload()
            if part.get_content_type() == "message/delivery-status" for block in part.get_payload()[1:]]


def test_an_alias_loop_is_logged_delivers_nothing_twice_and_bounces_when_nothing_is_left(make_postel, aliases):
    path, _ = aliases
    postel = make_postel(**deliver(local_users=USERS, aliases=str(path)))
    send(postel, "alice@localhost", ["half@localhost"], "half")
    settle(postel)
    assert "alias loop: half -> loop1 -> loop2 -> loop1" in postel.log(), "the alias loop is not logged"
    counts = mailbox_counts(postel)
    assert counts["carol"] == {"<half@alias.test>": 1}, counts
    assert counts["bob"] == {} and counts["root"] == {}, counts
    assert messages(postel.mailboxes / "alice") == [], "half reached carol: nothing to bounce"
    # An alias that leads only back to itself: the message is bounced, once, not lost (as Postfix does).
    send(postel, "alice@localhost", ["loop1@localhost"], "pure-loop")
    settle(postel)
    counts = mailbox_counts(postel)
    assert all(c["<pure-loop@alias.test>"] == 0 for c in counts.values()), counts
    (notification,) = messages(postel.mailboxes / "alice")
    report = email.message_from_bytes(strip_trace(notification[1]))
    assert report.get_content_type() == "multipart/report"
    assert dsn_statuses(report) == ["5.4.6"], report
    assert b"mail forwarding loop: the alias loop1 leads only back to itself" in notification[1], notification[1]


def test_expn_and_vrfy(make_postel, aliases):
    path, _ = aliases
    postel = make_postel(**deliver(local_users=USERS, aliases=str(path)))
    conn = postel.session()
    r = conn.expect("EXPN staff", 250)
    assert len(r.lines) == 2, r
    assert any("alice@" in line for line in r.lines) and any("bob@" in line for line in r.lines), r
    assert [line[:1] for line in r.raw] == ["2", "2"] and r.raw[0][3] == "-", r
    r = conn.expect("EXPN listed", 250)
    assert len(r.lines) == 3, r
    for name in ("staff", "alice"):
        conn.expect(f"VRFY {name}", 250)
    conn.expect("VRFY nobody", 550, "5.1.1")
    r = conn.cmd("VRFY someone@example.org")
    assert r.code == 252, r

    off = make_postel(**deliver(local_users=USERS, aliases=str(path), expn=False))
    conn = off.session()
    conn.expect("EXPN staff", 502, "5.7.0")
    conn.expect("VRFY staff", 250)


def test_command_alias_is_refused_by_default(make_postel, aliases):
    path, out = aliases
    postel = make_postel(**deliver(local_users=USERS, aliases=str(path)))
    send(postel, "alice@localhost", ["pipe@localhost"], "piped")
    settle(postel)
    assert not out.exists(), "a |command alias ran with alias_commands = false"
    got = messages(postel.mailboxes / "alice")
    assert len(got) == 1, f"alice (the sender) should have one notification, has {len(got)}"
    report = email.message_from_bytes(strip_trace(got[0][1]))
    assert report.get_content_type() == "multipart/report"
    assert dsn_statuses(report) == ["5.7.1"], report
    assert "pipe" in postel.log(), "the log does not name the alias"


def test_command_alias_runs_when_allowed(make_postel, aliases):
    path, out = aliases
    postel = make_postel(**deliver(local_users=USERS, aliases=str(path), alias_commands=True))
    send(postel, "alice@localhost", ["pipe@localhost", "bob@localhost"], "piped")
    settle(postel)
    assert out.exists(), f"the command did not run:\n{postel.log()[-2000:]}"
    text = out.read_bytes()
    assert b"Subject: piped" in text and b"To the list." in text, text
    assert message_ids(postel.mailboxes / "bob") == ["<piped@alias.test>"]
    assert not (postel.mailboxes / "alice").exists(), "a notification was sent although the command succeeded"


def test_a_pipe_command_that_never_reads_is_killed_at_the_deadline(make_postel, tmp_path):
    """The command's pipe fills long before the message is written: the deadline still ends the delivery, the
    command and what it started are killed, the message waits for a retry, and the worker goes on."""
    started = tmp_path / "started"
    path = tmp_path / "aliases"
    path.write_text(f'stuck: "|touch {started}; sleep 300"\n')
    postel = make_postel(**deliver(local_users=USERS, aliases=str(path), alias_commands=True, delivery_workers=1,
                                   pipe_timeout="1s", retry_first="1h", retry_max="1h"))
    conn = postel.session()
    conn.expect("MAIL FROM:<alice@localhost>", 250)
    conn.expect("RCPT TO:<stuck@localhost>", 250)
    conn.expect("DATA", 354)
    conn.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 2000 + b".\r\n")
    stuck = conn.reply()
    assert stuck.code == 250, stuck
    conn.cmd("QUIT")
    postel.wait_log(rf"{stuck.queue_id}: to=<[^>]*sleep 300>.*status=deferred.*took longer than 1s and was killed", 20)
    assert started.exists()
    sleeping = subprocess.run(["pgrep", "-f", f"touch {started}"], capture_output=True, text=True)
    assert sleeping.stdout == "", f"the command was left running: {sleeping.stdout}"
    send(postel, "carol@localhost", ["bob@localhost"], "after")
    assert wait_until(lambda: message_ids(postel.mailboxes / "bob") == ["<after@alias.test>"]), postel.log()[-2000:]


def test_the_aliases_example_in_the_docs_loads(make_postel, tmp_path):
    """doc/delivery.md shows an aliases file: the server must start with it as written (its :include: made real)."""
    doc = (REPO / "doc" / "delivery.md").read_text()
    section = doc.split("## Aliases", 1)[1]
    example = re.search(r"```\n(.*?)```", section, re.S)[1]
    lists = tmp_path / "lists.txt"
    lists.write_text("alice\n")
    example = example.replace("/etc/mail/lists.txt", str(lists))
    path = tmp_path / "aliases"
    path.write_text(example)
    postel = make_postel(**deliver(aliases=str(path), local_users=["alice", "bob"], alias_files=True,
                                   alias_commands=True))
    conn = postel.session()
    r = conn.expect("EXPN staff", 250)
    assert len(r.lines) == 3, r
    conn.expect("VRFY nospam", 250)


def test_newaliases_checks_the_file_and_the_daemon_reads_it_again(make_postel, aliases, tmp_path):
    """newaliases (the binary by that name, and sendmail -bi) counts the aliases, reports an error with its file and
    line, and sends SIGHUP to the daemon, which takes up the new file or, if it has an error, keeps the old one."""
    path, _ = aliases
    postel = make_postel(**deliver(local_users=USERS, aliases=str(path)))
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@localhost>", 250)
    conn.expect("RCPT TO:<newlist@localhost>", 550)
    conn.cmd("QUIT")

    newaliases = tmp_path / "newaliases"
    newaliases.symlink_to(POSTEL_BIN)
    env = dict(os.environ, POSTEL_CONFIG=str(postel.config_path))
    path.write_text(path.read_text() + "newlist: bob\n")
    run = subprocess.run([str(newaliases)], capture_output=True, text=True, timeout=30, env=env)
    assert (run.returncode, run.stdout) == (0, f"{path}: 10 aliases\n"), run.stderr
    postel.wait_log(rf"reload: {re.escape(str(path))}: 10 aliases")
    send(postel, "carol@localhost", ["newlist@localhost"], "reloaded")
    assert wait_until(lambda: message_ids(postel.mailboxes / "bob") == ["<reloaded@alias.test>"])

    path.write_text(path.read_text() + "broken line\n")
    run = subprocess.run([str(POSTEL_BIN), "sendmail", "-bi"], capture_output=True, text=True, timeout=30, env=env)
    assert run.returncode == 78 and f"{path}:14: missing ':'" in run.stderr, run.stderr
    postel.proc.send_signal(signal.SIGHUP)
    postel.wait_log(r"reload: keeping the old aliases: .*:14: missing ':'")
    conn = postel.session()
    conn.expect("MAIL FROM:<carol@localhost>", 250)
    conn.expect("RCPT TO:<newlist@localhost>", 250)
    conn.cmd("QUIT")


def test_an_alias_target_in_a_local_domain_is_expanded_as_an_alias(make_postel, tmp_path):
    """doc/delivery.md: `postmaster: webmaster@localhost` with webmaster itself an alias reaches webmaster's members
    (not a 5.1.1 for a user webmaster who does not exist); a loop through such addresses is logged, not followed."""
    path = tmp_path / "aliases"
    path.write_text("postmaster: webmaster@localhost\n"
                    "webmaster: alice, bob@LOCALHOST\n"
                    "ping: pong@localhost\n"
                    "pong: ping@localhost, carol\n")
    postel = make_postel(**deliver(local_users=USERS, aliases=str(path)))
    send(postel, "carol@example.org", ["postmaster@localhost"], "to-postmaster")
    send(postel, "carol@example.org", ["ping@localhost"], "ping")
    settle(postel)
    counts = mailbox_counts(postel)
    assert counts["alice"] == {"<to-postmaster@alias.test>": 1}, counts
    assert counts["bob"] == {"<to-postmaster@alias.test>": 1}, counts
    assert counts["carol"] == {"<ping@alias.test>": 1}, counts
    assert not counts["root"], counts
    assert "alias loop: ping -> pong -> ping" in postel.log()
