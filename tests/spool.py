"""A reader of Postel's spool (doc/spool.md): every record in <spool>/queue/.

    records = read_queue(spool_dir)          # [(envelope, body), ...]
    envelope["id"], envelope["sender"], envelope["rcpt"]   # rcpt is a list

A record is a 43-byte header line, `POSTEL1 <envlen:8 hex> <bodylen:16 hex>
<crc32:8 hex>\\n`, then the envelope (`key value` lines, the first `version N`
in every format after version 1; `mbox_size` and `headers`, when there, are checked against the body) and the
body, exactly
as stored. Several records may share one segment file. A record erased by
`postel queue remove` has `POSTEL1-` for `POSTEL1 `, and its envelope and body
are zero bytes (its checksum no longer counts): it is skipped. A segment ends in
zero bytes, its room for more records (up to 256 KiB). Anything else that does not
follow the format raises SpoolError naming the file and byte offset: a test
reads the queue only after the server acknowledged, so there is no torn tail
to forgive.
"""

import os
import re
import sys
import zlib

HEADER_LEN = 43
HEADER = re.compile(rb"POSTEL1([ -])([0-9a-f]{8}) ([0-9a-f]{16}) ([0-9a-f]{8})\n")
# Keys in the order doc/spool.md gives them; the ones every record has.
KEY_ORDER = ["version", "id", "arrival", "client", "helo", "protocol", "tls", "auth", "sender", "body", "smtputf8", "size",
             "mbox_size", "headers", "rcpt"]
REQUIRED = {"id", "arrival", "client", "helo", "protocol", "sender", "rcpt"}
QUEUE_ID = re.compile(r"[0-9A-F]{20}")


class SpoolError(Exception):
    pass


def parse_envelope(text, where):
    """`key value` lines -> dict; `rcpt` becomes a list in the order given."""
    if not text.endswith("\n"):
        raise SpoolError(f"{where}: envelope does not end with a newline")
    envelope = {"rcpt": []}
    last = -1
    for line in text[:-1].split("\n"):
        key, sep, value = line.partition(" ")
        if not sep:
            raise SpoolError(f"{where}: envelope line without a value: {line!r}")
        if key not in KEY_ORDER:
            raise SpoolError(f"{where}: unknown envelope key {key!r}")
        order = KEY_ORDER.index(key)
        if order < last or (order == last and key != "rcpt"):
            raise SpoolError(f"{where}: envelope key {key!r} out of order or repeated")
        last = order
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise SpoolError(f"{where}: control character in {key}: {value!r}")
        if key == "rcpt":
            envelope["rcpt"].append(value)
        else:
            envelope[key] = value
    missing = REQUIRED - {k for k, v in envelope.items() if v}
    if missing:
        raise SpoolError(f"{where}: envelope lacks {sorted(missing)}")
    if not QUEUE_ID.fullmatch(envelope["id"]):
        raise SpoolError(f"{where}: bad queue id {envelope['id']!r}")
    return envelope


FROM_LINE = re.compile(rb"^>*From ", re.M)


def mbox_size(body):
    """The bytes `body` takes in an mbox file (doc/delivery.md): LF line ends, one more ">" on every line that matches
    ^>*From , and a line end after a last line without one."""
    text = body.replace(b"\r\n", b"\n")
    size = len(text) + len(FROM_LINE.findall(text))
    return size + 1 if text and not text.endswith(b"\n") else size


def header_summary(body):
    """The `headers` value doc/spool.md gives for `body`: the header section's length (its fields, up to the empty
    line, or the whole body when there is none), and how many Received and Delivered-To fields it holds."""
    *complete, _ = body.split(b"\n")
    length = 0
    for line in complete:
        if line in (b"", b"\r"):
            break
        length += len(line) + 1
    else:
        length = len(body)
    names = [line.split(b":", 1)[0].lower() for line in body[:length].split(b"\n")
             if b":" in line and line[:1] not in (b" ", b"\t")]
    return f"{length} received {names.count(b'received')} delivered_to {names.count(b'delivered-to')}"


def read_file(path):
    """All records of one queue file, in file order."""
    with open(path, "rb") as f:
        data = f.read()
    records = []
    offset = 0
    while offset < len(data):
        where = f"{path}:{offset}"
        if data[offset] == 0 and len(data.rstrip(b"\0")) <= offset:
            break  # the segment's room: zeros to the end
        m = HEADER.fullmatch(data, offset, offset + HEADER_LEN)
        if not m:
            raise SpoolError(f"{where}: bad record header {data[offset:offset + HEADER_LEN]!r}")
        envlen, bodylen, crc = int(m[2], 16), int(m[3], 16), int(m[4], 16)
        start = offset + HEADER_LEN
        end = start + envlen + bodylen
        if end > len(data):
            raise SpoolError(f"{where}: record runs past the end of the file ({end} > {len(data)})")
        if m[1] == b"-":
            if data[start:end].strip(b"\0"):
                raise SpoolError(f"{where}: an erased record that still holds something")
            offset = end
            continue
        if zlib.crc32(data[start:end]) != crc:
            raise SpoolError(f"{where}: checksum mismatch")
        try:
            text = data[start:start + envlen].decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpoolError(f"{where}: envelope is not UTF-8: {e}") from None
        envelope, body = parse_envelope(text, where), data[start + envlen:end]
        if "mbox_size" in envelope and int(envelope["mbox_size"]) != mbox_size(body):
            raise SpoolError(f"{where}: mbox_size {envelope['mbox_size']}, but the body takes {mbox_size(body)} bytes "
                             "in an mbox file")
        if "headers" in envelope and envelope["headers"] != header_summary(body):
            raise SpoolError(f"{where}: headers {envelope['headers']!r}, but the body has {header_summary(body)!r}")
        records.append((envelope, body))
        offset = end
    return records


def queue_files(spool_dir):
    queue = os.path.join(spool_dir, "queue")
    if not os.path.isdir(queue):
        return []
    return sorted(os.path.join(queue, n) for n in os.listdir(queue) if not n.startswith("."))


def read_queue(spool_dir):
    """Every record in <spool_dir>/queue/: a list of (envelope dict, body bytes)."""
    records = []
    for path in queue_files(spool_dir):
        if os.path.isfile(path):
            records.extend(read_file(path))
    return records


def tmp_files(spool_dir):
    """What is left in <spool_dir>/tmp/ (in-progress files)."""
    tmp = os.path.join(spool_dir, "tmp")
    return sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []


if __name__ == "__main__":
    # python3 tests/spool.py SPOOL_DIR: list what the queue holds.
    for env, body in read_queue(sys.argv[1] if len(sys.argv) > 1 else "spool"):
        print(env["id"], env["sender"], ",".join(env["rcpt"]), f"{len(body)} bytes")
