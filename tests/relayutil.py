"""What the relay tests (test_relay.py, doc/relay.md) share: real peers on 127.0.0.0/8 and a fixture that owns them.

    lab (fixture)                 a Lab: starts DNS, receiving servers and the sending Postel, kills them all at teardown
    lab.dns(*records, ttl=None)   dnsmasq on 127.0.0.1:<free port> answering for *.test only (the rest is NXDOMAIN);
                                  with `ttl`, authoritatively: answers with that TTL, negative ones with an SOA
    lab.fake(ip, ...)             FakeSmtp: a scripted Python SMTP server on ip:REMOTE that records every transaction
    lab.sink(ip, ...)             Postfix's smtp-sink on ip:REMOTE, dumping each transaction to a file
    lab.receiver(ip, ...)         a second `postel serve` listening on ip:REMOTE (and 127.0.0.1:<probe port>)
    lab.sender(**config)          the sending `postel serve` (delivery on, relaying through lab's DNS and REMOTE port)
    dsns(server, user, count)     waits for `count` messages in a user's mailbox and parses the delivery reports

Every remote server listens on the same port (`lab.remote_port`) on its own loopback address, as the sending server
reaches every MX host on `remote_port`. Nothing here sends a packet off 127.0.0.0/8, and every wait is bounded.
"""

import email
import email.policy
import os
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from helpers import Postel, finish_servers, free_port, wait_until, write_config
from mboxutil import mbox_messages, sent_lines

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
REMOTE_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]

# The DNS data most tests use: example.test has two MX hosts, nullmx.test a null MX, the rest of .test does not exist.
EXAMPLE_ZONE = [
    "--mx-host=example.test,mx1.example.test,10",
    "--mx-host=example.test,mx2.example.test,20",
    "--host-record=mx1.example.test,127.0.0.2",
    "--host-record=mx2.example.test,127.0.0.3",
    "--mx-host=nullmx.test,.,0",
    "--mx-host=backup.test,mx1.example.test,10",
    "--mx-host=slow.test,mx3.example.test,10",
    "--host-record=mx3.example.test,127.0.0.4",
    "--host-record=implicit.test,127.0.0.2",
    "--mx-host=loop.test,postel.test,10",
    "--mx-host=loop2.test,postel.test,10",
    "--mx-host=loop2.test,mx2.example.test,20",
]


def port_free_everywhere(port, ips):
    for ip in ips:
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def common_free_port(ips=REMOTE_IPS):
    """A TCP port that nothing uses on any of `ips` (all the remote servers of a test listen on it)."""
    for _ in range(50):
        port = free_port()
        if port_free_everywhere(port, ips):
            return port
    raise AssertionError("no port free on all of " + ", ".join(ips))


def free_udp_tcp_port():
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free UDP+TCP port on 127.0.0.1")


def kill_proc(proc):
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


# --------------------------------------------------------------------------------------------------------------------
# DNS


def dns_query(name, qtype=15):
    """A DNS query packet (MX by default), recursion desired."""
    qid = random.randrange(65536)
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        packet += bytes([len(label)]) + label.encode()
    return qid, packet + b"\x00" + struct.pack(">HH", qtype, 1)


def dns_rcode(port, name, qtype=15, timeout=0.3):
    """The response code of one query to 127.0.0.1:port, or None without an answer in `timeout`."""
    qid, packet = dns_query(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, ("127.0.0.1", port))
        try:
            data = s.recv(4096)
        except OSError:
            return None
    if len(data) < 12 or struct.unpack(">H", data[:2])[0] != qid:
        return None
    return data[3] & 0x0F


class Dns:
    """dnsmasq on 127.0.0.1:<port>, authoritative-ish for .test only (`--local=/test/`: unknown names NXDOMAIN).

    Its own answers have TTL 0 unless `ttl` is given; then it is authoritative for .test, answers with that TTL
    and puts an SOA (MINIMUM `ttl`) in negative answers, as a real zone's server does (RFC 2308)."""

    def __init__(self, folder, records, ttl=None):
        self.port = free_udp_tcp_port()
        self.log_path = Path(folder) / "dnsmasq.log"
        argv = [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--log-queries",
                "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.port}", "--local=/test/",
                "--cache-size=0", "--host-record=dns-ready.test,127.0.0.9", *records]
        if ttl is not None:
            argv += ["--auth-server=ns.test,127.0.0.1", "--auth-zone=test", f"--auth-ttl={ttl}",
                     f"--auth-soa=1,hostmaster.test,1200,120,604800,{ttl}"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while dns_rcode(self.port, "dns-ready.test", 1) != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"dnsmasq did not answer on port {self.port}:\n{self.log()}")
            time.sleep(0.05)

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queries(self):
        """Every query it got but the readiness probes, as "TYPE name" strings, in order."""
        found = re.findall(r"(?:query|auth)\[(\w+)\] (\S+) from", self.log())
        return [f"{qtype} {name}" for qtype, name in found if name != "dns-ready.test"]

    def close(self):
        kill_proc(self.proc)


class ServfailDns:
    """A UDP "name server" on 127.0.0.1 that answers every query with SERVFAIL (a DNS failure, not a missing name)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self.closing = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def _serve(self):
        while not self.closing:
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready:
                continue
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if len(data) < 12:
                continue
            self.queries += 1
            qid, flags = struct.unpack(">HH", data[:4])
            # QR, the query's opcode and RD, RA, rcode 2 (SERVFAIL); the question echoed, no answers.
            reply = struct.pack(">HHHHHH", qid, 0x8000 | (flags & 0x7900) | 0x0080 | 2, 1, 0, 0, 0) + data[12:]
            self.sock.sendto(reply, peer)

    def close(self):
        self.closing = True
        self.thread.join(5)
        self.sock.close()


# --------------------------------------------------------------------------------------------------------------------
# A scripted SMTP server


class Transaction:
    """One MAIL ... transaction a FakeSmtp saw: the MAIL line, the RCPTs and their replies, the content and reply."""

    def __init__(self, conn_no, mail_line):
        self.conn_no = conn_no
        self.mail_line = mail_line
        self.started = time.monotonic()  # when the MAIL command came
        m = re.match(r"(?i)MAIL FROM:\s*<([^>]*)>(.*)$", mail_line)
        self.sender = m[1] if m else None
        self.params = m[2].split() if m else []
        self.rcpts = []  # [(address, reply line)]
        self.data = None  # the content (dot-unstuffed, CRLF), once the final dot came
        self.data_reply = None  # what was answered after the content

    @property
    def accepted(self):
        return [a for a, r in self.rcpts if r.startswith("2")]

    @property
    def delivered(self):
        return self.data_reply is not None and self.data_reply.startswith("250")

    def header(self, name):
        if self.data is None:
            return None
        return email.message_from_bytes(self.data, policy=email.policy.compat32).get(name)

    def __repr__(self):
        return (f"<txn conn={self.conn_no} {self.mail_line!r} rcpts={self.rcpts} "
                f"data={None if self.data is None else len(self.data)} reply={self.data_reply!r}>")


class FakeSmtp:
    """A small threaded SMTP server on ip:port that answers by script and records what it saw.

    extensions: the EHLO keywords after the first line (PIPELINING, SIZE ..., 8BITMIME, ...).
    Script hooks, each returns a reply line (no CRLF) or None for the default 250:
        on_mail(server, txn)                  after MAIL
        on_rcpt(server, txn, address)         after each RCPT
        on_data_end(server, txn)              after the final dot (txn.data is set)
    `data_delay` seconds pass before the reply to the final dot, `greeting_delay` before the greeting, `rset_delay`
    before the reply to RSET; `greeting` and `ehlo_reply` replace those replies (e.g. "421 ..." or "502 ...").
    Each connection's thread reads with a 20 s timeout, and close() ends every connection.
    """

    def __init__(self, ip, port, name="fake.test", extensions=("PIPELINING", "SIZE 10240000", "8BITMIME",
                                                                    "ENHANCEDSTATUSCODES"),
                 on_mail=None, on_rcpt=None, on_data_end=None, data_delay=0.0, greeting_delay=0.0, rset_delay=0.0,
                 greeting=None, ehlo_reply=None):
        self.ip, self.port, self.name = ip, port, name
        self.extensions = list(extensions)
        self.on_mail, self.on_rcpt, self.on_data_end = on_mail, on_rcpt, on_data_end
        self.data_delay = data_delay
        self.greeting_delay, self.rset_delay = greeting_delay, rset_delay
        self.greeting, self.ehlo_reply = greeting, ehlo_reply
        self.lock = threading.Lock()
        self.connections = []  # [{"peer":..., "commands": [...], "open": bool}]
        self.transactions = []
        self.active = 0
        self.max_active = 0
        self.socks = set()
        self.threads = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((ip, port))
        self.listener.listen(64)
        self.closing = False
        self.stopped = threading.Event()  # set by close(): cuts every scripted delay short
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    # -- what was seen

    def delivered(self):
        with self.lock:
            return [t for t in self.transactions if t.delivered]

    def count_delivered(self):
        return len(self.delivered())

    def wait_delivered(self, count, timeout=20.0):
        ok = wait_until(lambda: self.count_delivered() >= count, timeout)
        assert ok, f"{self.ip}: {self.count_delivered()} messages accepted, expected {count}; saw {self.transactions}"
        return self.delivered()

    def commands(self):
        with self.lock:
            return [c for conn in self.connections for c in conn["commands"]]

    # -- the server

    def _accept(self):
        while not self.closing:
            try:
                ready, _, _ = select.select([self.listener], [], [], 0.2)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                sock, peer = self.listener.accept()
            except OSError:
                return
            with self.lock:
                conn = {"peer": peer, "commands": [], "open": True}
                self.connections.append(conn)
                number = len(self.connections) - 1
                self.socks.add(sock)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            t = threading.Thread(target=self._serve, args=(sock, conn, number), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, sock, conn, number):
        sock.settimeout(20)
        reader = sock.makefile("rb")

        def say(line):
            sock.sendall(line.encode() + b"\r\n")

        def note(line):
            with self.lock:
                conn["commands"].append(line)

        txn = None
        try:
            if self.greeting_delay:
                self.stopped.wait(self.greeting_delay)
            say(self.greeting or f"220 {self.name} ESMTP fake")
            if self.greeting and not self.greeting.startswith("2"):
                reader.readline(4096)  # the client's QUIT, if it sends one
                return
            while True:
                raw = reader.readline(4096)
                if not raw:
                    return
                line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                note(line)
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO" and self.ehlo_reply:
                    say(self.ehlo_reply)
                elif verb == "EHLO":
                    lines = [self.name] + self.extensions
                    for ext in lines[:-1]:
                        say("250-" + ext)
                    say("250 " + lines[-1])
                elif verb == "HELO":
                    say(f"250 {self.name}")
                elif verb == "MAIL":
                    txn = Transaction(number, line)
                    with self.lock:
                        self.transactions.append(txn)
                    reply = self.on_mail(self, txn) if self.on_mail else None
                    reply = reply or "250 2.1.0 Ok"
                    if not reply.startswith("2"):
                        txn = None
                    say(reply)
                elif verb == "RCPT":
                    if txn is None:
                        say("503 5.5.1 Error: need MAIL command")
                        continue
                    m = re.match(r"(?i)RCPT TO:\s*<([^>]*)>", line)
                    address = m[1] if m else line
                    reply = self.on_rcpt(self, txn, address) if self.on_rcpt else None
                    reply = reply or "250 2.1.5 Ok"
                    with self.lock:
                        txn.rcpts.append((address, reply))
                    say(reply)
                elif verb == "DATA":
                    if txn is None or not txn.accepted:
                        say("554 5.5.1 Error: no valid recipients")
                        continue
                    say("354 End data with <CR><LF>.<CR><LF>")
                    lines = []
                    while True:
                        raw = reader.readline(1 << 20)
                        if not raw:
                            return  # cut in the middle: no message
                        if raw == b".\r\n":
                            break
                        lines.append(raw[1:] if raw.startswith(b".") else raw)
                    txn.data = b"".join(lines)
                    if self.data_delay:
                        self.stopped.wait(self.data_delay)
                    reply = self.on_data_end(self, txn) if self.on_data_end else None
                    reply = reply or "250 2.0.0 Ok: queued"
                    say(reply)
                    with self.lock:
                        txn.data_reply = reply  # recorded once the reply is on its way
                    txn = None
                elif verb == "RSET":
                    txn = None
                    if self.rset_delay:
                        self.stopped.wait(self.rset_delay)
                    say("250 2.0.0 Ok")
                elif verb == "NOOP":
                    say("250 2.0.0 Ok")
                elif verb == "QUIT":
                    say("221 2.0.0 Bye")
                    return
                else:
                    say("502 5.5.2 Error: command not recognized")
        except OSError:
            return
        finally:
            with self.lock:
                conn["open"] = False
                self.active -= 1
                self.socks.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def close(self):
        self.closing = True
        self.stopped.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.accepter.join(5)
        for t in self.threads:
            t.join(5)


# --------------------------------------------------------------------------------------------------------------------
# smtp-sink


class Sink:
    """Postfix's smtp-sink on ip:port: one dump file per transaction in `dumps`, running counters (-c) in its output.

    It runs as `nobody` (smtp-sink insists on dropping root), so the dump folder belongs to nobody.
    """

    def __init__(self, folder, ip, port, options=()):
        self.ip, self.port = ip, port
        # A folder of its own under the system temp dir: pytest's tmp_path is not reachable for `nobody`.
        self.dumps = Path(tempfile.mkdtemp(prefix=f"postel-sink-{ip}-"))
        self.out_path = Path(folder) / f"sink-{ip}.out"
        argv = [SMTP_SINK, "-c", "-h", f"sink-{ip}", "-d", str(self.dumps) + "/%H%M%S.", *options,
                f"{ip}:{port}", "100"]
        if os.geteuid() == 0:
            shutil.chown(self.dumps, "nobody")
            argv[1:1] = ["-u", "nobody"]
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((ip, port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise AssertionError(f"smtp-sink did not listen on {ip}:{port}: {self.output()}")
                time.sleep(0.05)
        self.probe_sessions = 1  # the readiness probe above is one session

    def output(self):
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def counters(self):
        """The last of smtp-sink's counters: {"sess": n, "quit": n, "mesg": n} (zeros before the first)."""
        found = re.findall(r"sess=(\d+) quit=(\d+) mesg=(\d+)", self.output())
        if not found:
            return {"sess": 0, "quit": 0, "mesg": 0}
        return dict(zip(("sess", "quit", "mesg"), map(int, found[-1])))

    def wait_messages(self, count, timeout=20.0):
        ok = wait_until(lambda: self.counters()["mesg"] >= count, timeout)
        assert ok, f"smtp-sink on {self.ip}: {self.counters()} messages, expected {count}"
        return self.messages()

    def messages(self):
        """Every dumped transaction: {"mail": MAIL args, "rcpts": [RCPT args], "message": the bytes after them}."""
        out = []
        for path in sorted(self.dumps.iterdir()):
            data = path.read_bytes()
            head, _, rest = data.partition(b"\nReceived: ")
            fields = [line.split(": ", 1) for line in head.decode(errors="replace").split("\n") if ": " in line]
            out.append({
                "path": path,
                "mail": next((v for k, v in fields if k == "X-Mail-Args"), None),
                "rcpts": [v for k, v in fields if k == "X-Rcpt-Args"],
                "message": b"Received: " + rest,
            })
        return out

    def close(self):
        kill_proc(self.proc)
        shutil.rmtree(self.dumps, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------------
# Postel as the receiving server


class ListeningPostel(Postel):
    """A `postel serve` that also listens on other addresses (`extra_listen`); 127.0.0.1:<port> stays its probe."""

    def __init__(self, folder, extra_listen=(), **config):
        self.extra_listen = list(extra_listen)
        super().__init__(folder, **config)

    def _configure(self):
        self.port = free_port()
        self.config_path = write_config(self.dir, listen=[f"127.0.0.1:{self.port}", *self.extra_listen],
                                        **self.config_keys)


def wait_local(server, user, count, address=None, timeout=20.0):
    """Waits until `server` logged `count` deliveries to <user@...> and returns that mailbox's messages."""
    address = address or f"{user}@localhost"
    ok = wait_until(lambda: len(sent_lines(server.log(), to=address)) >= count, timeout)
    got = mbox_messages(server.mailboxes / user)
    assert ok and len(got) >= count, (
        f"{server.mailboxes / user}: {len(got)} messages, {len(sent_lines(server.log(), to=address))} logged, "
        f"expected {count}; log tail:\n{server.log()[-3000:]}")
    return got


def report_fields(msg):
    """The message/delivery-status part of a DSN as (per-message fields, [per-recipient fields]) of lower-case keys."""
    assert msg.get_content_type() == "multipart/report", f"not a multipart/report: {msg.get_content_type()}"
    assert msg.get_param("report-type") == "delivery-status", msg["Content-Type"]
    parts = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    assert len(parts) == 1, f"{len(parts)} message/delivery-status parts"
    payload = parts[0].get_payload()
    if isinstance(payload, list):  # the parser splits it into header blocks
        blocks = [{k.lower(): str(v) for k, v in block.items()} for block in payload]
    else:
        text = payload if isinstance(payload, str) else payload.decode()
        blocks = []
        for chunk in re.split(r"\r?\n\r?\n", text.strip()):
            fields = {}
            for line in re.sub(r"\r?\n[ \t]+", " ", chunk).splitlines():
                if ":" in line:
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
            blocks.append(fields)
    assert blocks, "an empty message/delivery-status part"
    return blocks[0], blocks[1:]


def dsns(server, user, count, timeout=20.0):
    """Waits for `count` messages in <user>'s mailbox on `server`; returns [(message, per-message, [per-recipient])]."""
    out = []
    for msg in wait_local(server, user, count, timeout=timeout):
        per_message, per_recipient = report_fields(msg)
        out.append((msg, per_message, per_recipient))
    return out


# --------------------------------------------------------------------------------------------------------------------
# The fixture


class Lab:
    """Owns every process and thread a relay test starts; `close()` ends them all."""

    def __init__(self, make_postel, folder):
        self.make_postel = make_postel
        self.folder = Path(folder)
        self.remote_port = common_free_port()
        self.things = []  # everything with close()
        self.receivers = []
        self.dns_server = None

    def dns(self, *records, ttl=None):
        records = records or EXAMPLE_ZONE
        d = Dns(self.folder, records, ttl)
        self.things.append(d)
        self.dns_server = d
        return d

    def servfail_dns(self):
        d = ServfailDns()
        self.things.append(d)
        return d

    def fake(self, ip, **kw):
        f = FakeSmtp(ip, self.remote_port, **kw)
        self.things.append(f)
        return f

    def sink(self, ip, options=()):
        s = Sink(self.folder, ip, self.remote_port, options)
        self.things.append(s)
        return s

    def receiver(self, ip, **config):
        folder = self.folder / f"receiver{len(self.receivers)}-{ip}"
        folder.mkdir()
        keys = {"hostname": f"mx-{ip}.example.test", "local_domains": ["example.test"], "local_users": "any",
                "delivery_workers": 2, "retry_first": "1s", "retry_max": "1s", **config}
        r = ListeningPostel(folder, [f"{ip}:{self.remote_port}"], **keys)
        self.receivers.append(r)
        return r

    def sender_config(self, **config):
        keys = {
            "delivery_workers": 4,
            "remote_port": self.remote_port,
            "retry_first": "1s",
            "retry_max": "2s",
            "remote_connect_timeout": "3s",
            "remote_command_timeout": "10s",
            "remote_data_timeout": "10s",
        }
        if self.dns_server is not None:
            keys["nameservers"] = [self.dns_server.address]
        keys.update(config)
        return keys

    def sender(self, **config):
        return self.make_postel(**self.sender_config(**config))

    def close(self, failed):
        problems = finish_servers(self.receivers, failed, "receiving postel", 60)
        for thing in reversed(self.things):
            thing.close()
        if failed:
            for thing in self.things:
                if isinstance(thing, Dns):
                    print(f"----- dnsmasq log -----\n{thing.log()[-2000:]}")
                elif isinstance(thing, Sink):
                    print(f"----- smtp-sink on {thing.ip} -----\n{thing.output()[-500:]}")
                elif isinstance(thing, FakeSmtp):
                    print(f"----- fake SMTP on {thing.ip}: {len(thing.connections)} connections -----")
                    for t in thing.transactions[-20:]:
                        print(f"  {t}")
        return problems


@pytest.fixture
def lab(make_postel, tmp_path, request):
    the_lab = Lab(make_postel, tmp_path)
    yield the_lab
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    problems = the_lab.close(failed)
    assert not problems, "; ".join(problems)
