#!/usr/bin/env python3
"""The soak test: mixed load against one `postel serve` for a while, then an account of every message.

    python3 bench/soak.py [--minutes 30] [--clients 12] [--kill-every 150] [--fill-every 240] [--keep]

The server under test (release build, as root: it mounts a tmpfs) has its spool on a 48 MiB tmpfs
and its mailboxes on disk. Clients send small and large messages, one to three recipients each, to
local users and to four remote domains that dnsmasq (on 127.0.0.1) points at loopback addresses:

    good.test   a second `postel serve` that delivers into mailboxes of its own
    temp.test   a server that answers 451 to every RCPT (the message bounces after queue_lifetime)
    perm.test   a server that answers 550 to every RCPT (the message bounces at once)
    hang.test   a server that takes the connection and says nothing for 40 s

Slow clients trickle a message at about 1000 bytes a second (above min_data_rate) or a command a
byte every few seconds (cut off at command_timeout). Every --kill-every seconds the server gets
SIGKILL and is started again; every --fill-every seconds a file fills the spool's file system for
20 s (the server answers 452 meanwhile). Then the load stops and the queue drains (at most
queue_lifetime plus two minutes).

Every message carries an X-Soak-Id. At the end the script prints how many were sent, accepted
(250), delivered (into every recipient's mailbox), bounced (a delivery report to the sender names
the message), still queued, lost (accepted, but neither delivered nor bounced nor queued: must be
0) and duplicated (one message twice in one mailbox: must be 0; a relayed copy sent again because
the server was killed between the remote's 250 and recording it is counted apart, since no SMTP
client can rule that out, RFC 1047), the server's peak RSS, and its RSS and open file descriptors
minute by minute (they must stay flat). Exit status 1 when a message was lost or duplicated or the
server panicked.
"""

import argparse
import email
import email.policy
import mailbox
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTEL = ROOT / "target" / "release" / "postel"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
LOCAL_USERS = ["alice", "bob", "carol"]
SENDER = "soak@localhost"
REMOTES = {"good.test": "127.0.0.2", "temp.test": "127.0.0.3", "perm.test": "127.0.0.4", "hang.test": "127.0.0.5"}
QUEUE_LIFETIME = 120  # seconds


def free_port(ips=("127.0.0.1",)):
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for ip in ips:
                with socket.socket() as s:
                    s.bind((ip, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Server:
    """A `postel serve` with a folder of its own; restartable after a SIGKILL."""

    def __init__(self, folder, spool, listen, **keys):
        self.folder = folder
        self.mailboxes = folder / "mailboxes"
        self.mailboxes.mkdir(parents=True, exist_ok=True)
        spool.mkdir(parents=True, exist_ok=True)
        self.host, port = listen[0].rsplit(":", 1)
        self.port = int(port)
        self.config = folder / "postel.toml"
        settings = {"listen": listen, "spool_dir": str(spool), "mailbox_dir": str(self.mailboxes), **keys}
        self.config.write_text("".join(f"{k} = {toml(v)}\n" for k, v in settings.items()))
        self.log_path = folder / "postel.log"
        self.proc = None
        self.starts = self.failed_starts = 0
        self.start()

    def start(self):
        """Starts the server; one that exits at start (it cannot write its spool on a full disk) is started again
        every second, for at most 60 s."""
        deadline = time.monotonic() + 60
        while True:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([str(POSTEL), "serve", "--config", str(self.config)],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             env=dict(os.environ, RUST_LOG="info"))
            self.starts += 1
            while self.proc.poll() is None:
                try:
                    socket.create_connection((self.host, self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.05)
            self.failed_starts += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"postel did not start within 60 s; see {self.log_path}")
            time.sleep(1)

    def keep_running(self):
        """Starts the server again if it exited by itself (it may have begun listening and then found it cannot
        write its spool); returns 1 if it had, else 0."""
        if self.proc.poll() is None:
            return 0
        self.start()
        return 1

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def queued(self):
        """The queue ids `postel queue list` shows."""
        run = subprocess.run([str(POSTEL), "queue", "list", "--config", str(self.config)], capture_output=True,
                             text=True, timeout=60, env=dict(os.environ, RUST_LOG="off"))
        return set(re.findall(r"^([0-9A-F]{16,})\b", run.stdout, re.M))

    def usage(self):
        """(RSS in KiB, open file descriptors) of the running server, or None."""
        try:
            pid = self.proc.pid
            rss = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))
            return rss, len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            return None


class Scripted(socketserver.ThreadingTCPServer):
    """A remote SMTP server on ip:port that greets and then refuses every RCPT with `rcpt_reply`, or (hang) says
    nothing for `hang` seconds and closes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ip, port, rcpt_reply=None, hang=0):
        self.rcpt_reply, self.hang = rcpt_reply, hang
        super().__init__((ip, port), ScriptedHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class ScriptedHandler(socketserver.StreamRequestHandler):
    def handle(self):
        server = self.server
        if server.hang:
            time.sleep(server.hang)
            return
        self.wfile.write(b"220 scripted ESMTP\r\n")
        for line in self.rfile:
            verb = line[:4].upper()
            if verb == b"RCPT":
                self.wfile.write(server.rcpt_reply)
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            elif verb == b"DATA":
                self.wfile.write(b"554 no valid recipients\r\n")
            else:
                self.wfile.write(b"250 ok\r\n")


def dnsmasq(port, log):
    records = []
    for k, (domain, ip) in enumerate(REMOTES.items()):
        records += [f"--mx-host={domain},mx{k}.soak.test,10", f"--host-record=mx{k}.soak.test,{ip}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                                 "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}", "--local=/test/",
                                 *records], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    if proc.poll() is not None:
        raise RuntimeError(f"dnsmasq did not start; see {log}")
    return proc


class Ledger:
    """What the clients sent and what the server answered, by soak id."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}  # soak id -> recipients
        self.accepted = {}  # soak id -> queue id
        self.replies = Counter()
        self.next = 0

    def new(self, recipients):
        with self.lock:
            self.next += 1
            soak_id = f"soak-{self.next}"
            self.sent[soak_id] = recipients
            return soak_id

    def answer(self, soak_id, code, text=""):
        with self.lock:
            self.replies[code] += 1
            if code == 250:
                match = re.search(r"queued as (\S+)", text)
                self.accepted[soak_id] = match.group(1) if match else "?"


def recipients(rng):
    choices = [f"{u}@localhost" for u in LOCAL_USERS] + ["u1@good.test", "u2@good.test", "x@temp.test",
                                                          "y@perm.test", "z@hang.test"]
    weights = [6, 6, 6, 6, 6, 1, 1, 1]
    return sorted(set(rng.choices(choices, weights, k=rng.choice([1, 1, 2, 3]))))


def body(soak_id, size, rng):
    head = f"From: {SENDER}\r\nSubject: {soak_id}\r\nX-Soak-Id: {soak_id}\r\nMessage-ID: <{soak_id}@soak.test>\r\n\r\n"
    line = f"{soak_id} " + "".join(rng.choice("abcdefghij .") for _ in range(70)) + "\r\n"
    lines = max(1, size // len(line))
    return (head + line * lines).encode()


def send_one(port, ledger, rng, size, timeout=60):
    rcpts = recipients(rng)
    soak_id = ledger.new(rcpts)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as smtp:
            smtp.ehlo("client.soak.test")
            smtp.mail(SENDER)
            for rcpt in rcpts:
                code, _ = smtp.rcpt(rcpt)
                if code != 250:
                    ledger.answer(soak_id, code)
                    return
            code, text = smtp.data(body(soak_id, size, rng))
            ledger.answer(soak_id, code, text.decode(errors="replace"))
    except (OSError, smtplib.SMTPException) as e:
        code = getattr(e, "smtp_code", 0)
        ledger.answer(soak_id, code if isinstance(code, int) else 0)
        if not code:
            time.sleep(0.5)  # the server is down (killed): try again in a moment


def client(port, ledger, stop, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        size = rng.choice([300, 2_000, 8_000, 40_000]) if rng.random() > 0.03 else rng.choice([1_000_000, 3_000_000])
        send_one(port, ledger, rng, size)
        time.sleep(rng.random() * 0.2)


def slow_client(port, ledger, stop, seed):
    """Alternates a message trickled at about 1000 bytes a second with a command trickled a byte every 3 s."""
    rng = random.Random(seed)
    while not stop.is_set():
        rcpts = [f"{rng.choice(LOCAL_USERS)}@localhost"]
        soak_id = ledger.new(rcpts)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                reader = sock.makefile("rb")

                def reply():
                    line = reader.readline()
                    while line[3:4] == b"-":
                        line = reader.readline()
                    return int(line[:3] or 0), line.decode(errors="replace")

                reply()
                for command in [b"EHLO slow.soak.test", b"MAIL FROM:<" + SENDER.encode() + b">",
                                b"RCPT TO:<" + rcpts[0].encode() + b">", b"DATA"]:
                    sock.sendall(command + b"\r\n")
                    code, _ = reply()
                data = body(soak_id, 12_000, rng) + b".\r\n"
                for at in range(0, len(data), 250):
                    if stop.is_set():
                        break
                    sock.sendall(data[at:at + 250])
                    time.sleep(0.25)
                code, text = reply()
                ledger.answer(soak_id, code, text)
                sock.sendall(b"N")
                for byte in b"OOP\r\n":
                    time.sleep(3)
                    sock.sendall(bytes([byte]))
                reply()
        except OSError:
            ledger.answer(soak_id, 0)
            time.sleep(0.5)


def fill(spool_root, seconds, stop):
    """Fills the spool's file system with one file, holds it for `seconds`, then removes it."""
    path = spool_root / "filler"
    try:
        with open(path, "wb") as f:
            chunk = b"\0" * (1 << 20)
            while True:
                f.write(chunk)
                f.flush()
    except OSError:
        pass
    stop.wait(seconds)
    path.unlink(missing_ok=True)


def mailbox_ids(path):
    """(X-Soak-Id, the queue id of the server that stored it) of each message in an mbox file, in order."""
    if not path.exists():
        return []
    box = mailbox.mbox(str(path), create=False)
    try:
        found = []
        for m in box:
            stored_as = re.search(r"with \S+ id ([0-9A-F]{20})", m.get("Received", ""))
            found.append((m.get("X-Soak-Id"), stored_as.group(1) if stored_as else None))
        return found
    finally:
        box.close()


def bounces(path):
    """(soak id, recipient) for each failed recipient a delivery report in the mbox names."""
    found = []
    if not path.exists():
        return found
    raw = path.read_bytes()
    for report in re.split(rb"\nFrom ", raw):
        soak = re.search(rb"X-Soak-Id: (soak-\d+)", report)
        if not soak:
            continue
        for rcpt in re.findall(rb"Final-Recipient: rfc822; ?<?([^\s>]+)", report):
            found.append((soak.group(1).decode(), rcpt.decode()))
    return found


RESENT = "relayed twice (killed between the remote's 250 and its record)"


def account(ledger, main, receiver, queued_ids):
    delivered = defaultdict(Counter)  # soak id -> Counter(recipient)
    for user in LOCAL_USERS:
        for soak_id, _ in mailbox_ids(main.mailboxes / user):
            delivered[soak_id][f"{user}@localhost"] += 1
    # A copy the receiver took whose 250 the main server never logged: it was killed after the remote's 250 and
    # before it recorded the delivery, so it sent the message again. No SMTP client can rule that out (RFC 1047).
    acknowledged = set(re.findall(r"queued as ([0-9A-F]{20})", main.log_path.read_text(errors="replace")))
    unrecorded = Counter()  # soak id -> copies at the receiver whose 250 was never recorded
    for user in ["u1", "u2"]:
        for soak_id, stored_as in mailbox_ids(receiver.mailboxes / user):
            delivered[soak_id][f"{user}@good.test"] += 1
            if stored_as not in acknowledged:
                unrecorded[soak_id] += 1
    bounced = defaultdict(set)
    for soak_id, rcpt in bounces(main.mailboxes / "soak"):
        bounced[soak_id].add(rcpt)
    counts = Counter()
    lost, duplicated = [], []
    for soak_id, rcpts in ledger.sent.items():
        got = delivered.get(soak_id, Counter())
        extra = sum(n - 1 for n in got.values() if n > 1)
        if extra and all(n == 1 for r, n in got.items() if not r.endswith("@good.test")) \
                and unrecorded[soak_id] >= extra:
            counts[RESENT] += 1
        elif extra:
            duplicated.append((soak_id, dict(got)))
        if soak_id not in ledger.accepted:
            if got:
                counts["delivered without a 250 (the reply was lost to a kill)"] += 1
            continue
        done = [r for r in rcpts if got[r] or r in bounced[soak_id]]
        if len(done) == len(rcpts):
            counts["bounced" if bounced[soak_id] else "delivered"] += 1
        elif ledger.accepted[soak_id] in queued_ids:
            counts["still queued"] += 1
        else:
            lost.append((soak_id, ledger.accepted[soak_id], rcpts, dict(got)))
    return counts, lost, duplicated


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--slow-clients", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=150, help="seconds between SIGKILLs of the server")
    parser.add_argument("--fill-every", type=float, default=240, help="seconds between spool disk fills")
    parser.add_argument("--keep", action="store_true", help="keep the folder with logs, spool and mailboxes")
    args = parser.parse_args()
    if not POSTEL.exists():
        sys.exit(f"{POSTEL} is missing: run `cargo build --release` first")

    base = Path(tempfile.mkdtemp(prefix="postel-soak-"))
    spool_root = base / "spool-fs"
    spool_root.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(spool_root)]).returncode:
        sys.exit("cannot mount a tmpfs for the spool (run as root)")
    procs, servers = [], []
    try:
        dns_port = free_port()
        procs.append(dnsmasq(dns_port, base / "dnsmasq.log"))
        remote_port = free_port(list(REMOTES.values()))
        # No mailbox size limit: 30 minutes of large messages pass the default, and a full mailbox's bounce to a
        # full sender's mailbox is dropped as a double bounce, which would count as lost.
        receiver = Server(base / "receiver", base / "receiver" / "spool", [f"127.0.0.2:{remote_port}"],
                          hostname="mx.good.test", local_domains=["good.test"], local_users=["u1", "u2"],
                          mailbox_size_limit=0)
        servers.append(receiver)
        Scripted(REMOTES["temp.test"], remote_port, rcpt_reply=b"451 4.3.0 try again later\r\n")
        Scripted(REMOTES["perm.test"], remote_port, rcpt_reply=b"550 5.1.1 no such user\r\n")
        Scripted(REMOTES["hang.test"], remote_port, hang=40)
        port = free_port()
        main_server = Server(base / "main", spool_root / "spool", [f"127.0.0.1:{port}"], hostname="soak.test",
                             local_domains=["localhost", "soak.test"], local_users=[*LOCAL_USERS, "soak"],
                             nameservers=[f"127.0.0.1:{dns_port}"], remote_port=remote_port,
                             trusted_networks=["127.0.0.0/8"], retry_first="5s", retry_max="20s",
                             queue_lifetime=f"{QUEUE_LIFETIME}s", command_timeout="20s", data_timeout="30s",
                             remote_connect_timeout="5s", remote_command_timeout="20s", mailbox_size_limit=0)
        servers.append(main_server)

        ledger, stop = Ledger(), threading.Event()
        threads = [threading.Thread(target=client, args=(port, ledger, stop, n), daemon=True)
                   for n in range(args.clients)]
        threads += [threading.Thread(target=slow_client, args=(port, ledger, stop, 1000 + n), daemon=True)
                    for n in range(args.slow_clients)]
        for thread in threads:
            thread.start()
        start = time.monotonic()
        end = start + args.minutes * 60
        next_kill, next_fill, next_sample = start + args.kill_every, start + args.fill_every / 2, start
        next_progress = start + 60
        samples, kills, fills, exits = [], 0, 0, 0
        filler = None
        while time.monotonic() < end:
            now = time.monotonic()
            exits += main_server.keep_running()
            if now >= next_sample:
                usage = main_server.usage()
                if usage:
                    samples.append((now - start, *usage))
                next_sample = now + 5
            if now >= next_progress:
                rss, fds = samples[-1][1:] if samples else (0, 0)
                print(f"soak: {(now - start) / 60:4.1f} min: sent {len(ledger.sent)}, accepted {len(ledger.accepted)}, "
                      f"RSS {rss / 1024:.1f} MiB, {fds} open fds, {kills} kills, {fills} fills", flush=True)
                next_progress = now + 60
            if now >= next_kill:
                main_server.kill()
                time.sleep(random.random() * 2)
                main_server.start()
                kills += 1
                next_kill = now + args.kill_every
            if now >= next_fill and (filler is None or not filler.is_alive()):
                filler = threading.Thread(target=fill, args=(spool_root, 20, stop), daemon=True)
                filler.start()
                fills += 1
                next_fill = now + args.fill_every
            time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(90)
        if filler:
            filler.join(30)
        load_seconds = time.monotonic() - start

        # Drain: temporary failures bounce after queue_lifetime; the hung remote takes its 40 s each time.
        drain_until = time.monotonic() + QUEUE_LIFETIME + 120
        queued = main_server.queued()
        while queued and time.monotonic() < drain_until:
            time.sleep(5)
            exits += main_server.keep_running()
            usage = main_server.usage()
            if usage:
                samples.append((time.monotonic() - start, *usage))
            queued = main_server.queued()
        time.sleep(2)
        counts, lost, duplicated = account(ledger, main_server, receiver, queued)

        log = (main_server.log_path.read_text(errors="replace") + receiver.log_path.read_text(errors="replace"))
        panics = log.count("panicked")
        print(f"soak: {load_seconds / 60:.1f} minutes of load, {args.clients} clients + {args.slow_clients} slow, "
              f"{kills} SIGKILLs and restarts ({main_server.failed_starts} starts refused and {exits} exits on a full "
              f"disk), "
              f"{fills} spool disk fills")
        print(f"sent                 {len(ledger.sent)}")
        print(f"accepted (250)       {len(ledger.accepted)}")
        print("replies              " + ", ".join(f"{code or 'none'}: {n}" for code, n in sorted(ledger.replies.items())))
        for what in ["delivered", "bounced", "still queued", "delivered without a 250 (the reply was lost to a kill)",
                     RESENT]:
            print(f"{what:<20} {counts[what]}")
        print(f"lost                 {len(lost)}")
        print(f"duplicated           {len(duplicated)}")
        print(f"panics in the logs   {panics}")
        print(f"usage samples        {len(samples)} (every 5 s)")
        if samples:
            print(f"peak RSS             {max(s[1] for s in samples) / 1024:.1f} MiB")
            print("minute  RSS MiB (min-max)  open fds (min-max)")
            by_minute = defaultdict(list)
            for at, rss, fds in samples:
                by_minute[int(at // 60)].append((rss, fds))
            for minute, values in sorted(by_minute.items()):
                rss = [v[0] / 1024 for v in values]
                fds = [v[1] for v in values]
                print(f"{minute:>6}  {min(rss):7.1f}-{max(rss):<7.1f}     {min(fds):>4}-{max(fds):<4}")
        for soak_id, queue_id, rcpts, got in lost[:20]:
            print(f"LOST {soak_id} queue id {queue_id} to {rcpts}, found in {got}")
        for soak_id, got in duplicated[:20]:
            print(f"DUPLICATED {soak_id}: {got}")
        failed = bool(lost or duplicated or panics)
    finally:
        for server in servers:
            server.stop()
        for proc in procs:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", str(spool_root)])
        if args.keep or "failed" not in locals() or failed:
            print(f"soak: logs, spools and mailboxes kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
