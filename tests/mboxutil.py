"""What the delivery tests share: config for a delivering server, polling, reading mailboxes, mutt, the CLI.

    DELIVER                       config keys that turn delivery on, with short retries
    messages(path)                the raw messages of an mbox file, checked for the mboxrd shape
    python_mbox(path)             every message through Python's mailbox.mbox (the bytes after the From_ line)
    mbox_messages(path)           the same, parsed into email.message.EmailMessage objects
    message_ids(path)             the Message-ID of each of them
    strip_trace(raw)              a delivered message without the Return-Path/Delivered-To/Received lines
    mutt_message_ids(path)        what mutt sees in a mailbox: one Message-ID (or None) per message
    sent_lines(log, qid, to)      the log's `status=sent` lines, of one message or to one recipient
    queue_list(config)            `postel queue list`
"""

import email
import email.policy
import mailbox
import os
import pty
import re
import select
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import free_port, postel

# A loopback port nothing listens on: mail for other hosts goes there (connection refused: deferred, 4.4.1), and so
# do DNS queries, so nothing leaves 127.0.0.0/8.
NOWHERE = f"127.0.0.1:{free_port()}"

# Delivery on (the other test files hold mail in the queue), retries fast enough for a test.
DELIVER = {
    "delivery_workers": 4,
    "retry_first": "1s",
    "retry_max": "2s",
    "mailbox_lock_timeout": "1s",
    "smarthost": NOWHERE,
    "nameservers": [NOWHERE],
}



def deliver(**keys):
    """DELIVER with some keys replaced or added."""
    return {**DELIVER, **keys}


FROM_LINE = re.compile(rb"^From (\S+) (\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4})$")
TRACE = (b"return-path:", b"delivered-to:", b"received:")


def messages(path):
    """The messages of an mbox file as [(from_line, content)], content as stored (quoted, LF, no trailing empty line).

    Checks the shape doc/delivery.md gives: the file starts with a From_ line; every message ends with one empty line
    before the next From_ line or the end; every line that starts with "From " is a separator (mboxrd quotes the rest).
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if not data:
        return []
    assert data.startswith(b"From "), f"{path}: does not start with a From_ line: {data[:80]!r}"
    assert data.endswith(b"\n\n"), f"{path}: does not end with an empty line: {data[-80:]!r}"
    lines = data.split(b"\n")[:-1]  # the file ends with "\n"
    result = []
    for line in lines:
        if line.startswith(b"From "):
            assert FROM_LINE.match(line), f"{path}: malformed From_ line {line!r}"
            if result:
                prev = result[-1][1]
                assert prev and prev[-1] == b"", f"{path}: no empty line before {line!r} (after {prev[-3:]!r})"
            result.append((line, []))
        else:
            result[-1][1].append(line)
    out = []
    for from_line, body in result:
        assert body and body[-1] == b"", f"{path}: message {from_line!r} does not end with an empty line"
        out.append((from_line, b"".join(l + b"\n" for l in body[:-1])))
    return out


def unquote(content):
    """Undoes mboxrd quoting: one '>' off every line matching ^>+From ."""
    return re.sub(rb"(?m)^>(>*From )", rb"\1", content)


def strip_trace(raw):
    """The message without the trace header lines delivery prepends (Return-Path, Delivered-To, Received)."""
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and lines[i].lower().startswith(TRACE):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    return b"\n".join(lines[i:])


def trace_headers(raw):
    """The trace header lines delivery prepended, unfolded: [(name lower-case, value)]."""
    lines = raw.split(b"\n")
    out = []
    i = 0
    while i < len(lines) and lines[i].lower().startswith(TRACE):
        name, _, value = lines[i].partition(b":")
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            value += b" " + lines[i].strip()
            i += 1
        out.append((name.decode().lower(), value.strip().decode("utf-8", "replace")))
    return out


def lf(data):
    return data.replace(b"\r\n", b"\n")


def as_delivered(sent):
    """What a message sent with CRLF line ends looks like in the mbox: LF, a final newline, mboxrd quoting."""
    data = lf(sent)
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return re.sub(rb"(?m)^(>*From )", rb">\1", data)


def python_mbox(path, lock=False):
    """Every message of the mbox as Python's mailbox.mbox reads it: [(from_line, bytes after it)]; [] without a file."""
    if not Path(path).exists():
        return []
    box = mailbox.mbox(str(path), create=False)
    try:
        if lock:
            box.lock()
        try:
            return [(box.get_message(k).get_from(), box.get_bytes(k)) for k in box.keys()]
        finally:
            if lock:
                box.unlock()
    finally:
        box.close()


def mbox_messages(path):
    """The messages of an mbox file as email.message.EmailMessage objects ([] when there is no file)."""
    return [email.message_from_bytes(raw, policy=email.policy.default) for _, raw in python_mbox(path)]


def message_ids(path):
    """The Message-ID of every message in the mbox (None for a message without one), by Python's email parser."""
    return [email.message_from_bytes(raw)["Message-ID"] for _, raw in python_mbox(path)]


def mutt_message_ids(path, timeout=15.0):
    """Opens the mailbox read-only in mutt (under a pseudo-terminal) and pipes every message, one by one, to a script.

    mutt has no batch mode for reading: it needs a terminal. This pushes the keys
    `<tag-pattern>~A<enter><tag-prefix><pipe-message>SCRIPT<enter><quit>` with pipe_split set, so SCRIPT runs once per
    message mutt parsed. Returns one entry per message: its Message-ID header value, or None.
    """
    with tempfile.TemporaryDirectory(prefix="mutt-") as folder:
        folder = Path(folder)
        out = folder / "out"
        script = folder / "each.sh"
        # One line per message: "M" then the Message-ID header value if it has one.
        script.write_text(
            "#!/bin/sh\n"
            # Read the whole message first: a reader that stops early makes mutt stop piping the rest (EPIPE).
            f"cat > '{folder}/msg'\n"
            f"id=$(sed -n '/^$/q; s/^[Mm][Ee][Ss][Ss][Aa][Gg][Ee]-[Ii][Dd]:[ \\t]*//p' '{folder}/msg' | head -n 1)\n"
            f"printf 'M %s\\n' \"$id\" >> '{out}'\n"
            "exit 0\n")
        script.chmod(0o755)
        out.write_text("")
        (folder / "Mail").mkdir()  # else mutt first asks whether to create ~/Mail, and that eats the pushed keys
        keys = f"<tag-pattern>~A<enter><tag-prefix><pipe-message>{script}<enter><quit>"
        master, slave = pty.openpty()
        env = dict(os.environ, TERM="vt100", HOME=str(folder), LINES="24", COLUMNS="80")
        env.pop("MAIL", None)
        proc = subprocess.Popen(
            ["mutt", "-n", "-F", "/dev/null", "-R", "-f", str(path),
             "-e", "set pipe_split=yes wait_key=no pipe_decode=no sort=mailbox-order",
             "-e", f'push "{keys}"'],
            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True, cwd=folder)
        os.close(slave)
        screen = b""
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        screen += os.read(master, 65536)
                    except OSError:
                        break
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
                os.close(master)
                raise AssertionError(f"mutt did not finish within {timeout}s; screen: {screen[-800:]!r}")
            os.close(master)
        assert proc.returncode == 0, f"mutt exited with {proc.returncode}; screen: {screen[-800:]!r}"
        lines = out.read_text().splitlines()
        return [line[2:] or None for line in lines]


def queue_list(config, **kw):
    """`postel queue list` output (text); asserts exit 0."""
    run = postel(["queue", "list"], config, check=True, **kw)
    return run.stdout.decode(errors="replace")


def queue_empty(config):
    return "Mail queue is empty" in queue_list(config)


def sent_lines(log, queue_id=None, to=None):
    """The log's `status=sent` lines, of one queue id and to one recipient when given. `to` is a user or an address;
    a delivery into a local mailbox is logged as to=<user> (via <address>), so an address also matches its user."""
    qid = queue_id or "[0-9A-F]{20}"
    if to is None:
        return re.findall(rf"^.*{qid}: to=.*status=sent.*$", log, re.M)
    user = to.split("@")[0].lower()
    rcpt = f"(?:{re.escape(to)}|{re.escape(user)})"
    return re.findall(rf"^.*{qid}: to=<{rcpt}>.*status=sent.*$", log, re.M)
