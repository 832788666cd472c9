#!/usr/bin/env python3
"""bench/delivery.py -- end to end: messages in over SMTP, out into the mailboxes.

Starts `target/release/postel serve` (delivery on, `local_users = "any"`) on a free port of 127.0.0.1 with a fresh
temporary spool for each case, and sends N messages (default 2000, 1 KiB each) with Postfix's smtp-source over 1, 10
and 50 parallel sessions (one connection per session, -d). The recipients are spread over four users: the sessions
are shared among up to four smtp-source processes, each sending to its own user. A case ends when every message is in
a mailbox (counted by the mbox From_ lines) and `postel queue list` says the queue is empty. For each case it prints

  msg/s        messages delivered per second of wall time, from the first connection to the last delivery
  p50/p90/p99  per-message latency, arrival to delivery, from the server's log: the queue id's `(queued)` line and
               its `status=sent` line (millisecond timestamps)
  peak RSS     the server's VmHWM at the end of the case
  queue/       files left in <spool>/queue at the end (finished segments go when full or at the next start-up)

Benchmarks print numbers; they never fail on a timing. A run takes well under 2 minutes. Environment: BENCH_SCALE
(default 1.0) multiplies the message count; BENCH_DIR (default /var/tmp) holds the temporary spool; POSTEL_BENCH_BIN
skips the build and uses that binary.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
DOMAIN = "bench.local"
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
MESSAGES = max(50, int(2000 * SCALE))
SESSIONS = [1, 10, 50]
USERS = 4
CASE_TIMEOUT = 35  # seconds for one case, sending and delivering


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def build():
    if os.environ.get("POSTEL_BENCH_BIN"):
        return Path(os.environ["POSTEL_BENCH_BIN"]).resolve()
    if subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO).returncode != 0:
        sys.exit("bench: cargo build --release failed")
    return REPO / "target" / "release" / "postel"


class Server:
    def __init__(self, binary, folder):
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        nowhere = f"127.0.0.1:{free_port()}"  # nothing leaves 127.0.0.0/8, whatever happens
        self.config = folder / "postel.toml"
        self.config.write_text(
            f'listen = ["127.0.0.1:{self.port}"]\n'
            f'hostname = "{DOMAIN}"\n'
            f'local_domains = ["localhost", "{DOMAIN}"]\n'
            f'local_users = "any"\n'
            f'spool_dir = "{folder / "spool"}"\n'
            f'mailbox_dir = "{folder / "mailboxes"}"\n'
            f'smarthost = "{nowhere}"\n'
            f'nameservers = ["{nowhere}"]\n'
        )
        (folder / "spool").mkdir()
        (folder / "mailboxes").mkdir()
        self.log_path = folder / "postel.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(binary), "serve", "--config", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, RUST_LOG="info"))
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"postel exited with {self.proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    sys.exit("postel did not answer within 10 s")
                time.sleep(0.05)

    def delivered(self):
        """Messages in the mailboxes, counted by From_ lines."""
        total = 0
        for box in (self.folder / "mailboxes").iterdir():
            if ".lock" in box.name:  # dot-locks, and the files they are made from
                continue
            with open(box, "rb") as f:
                data = f.read()
            total += data.startswith(b"From ") + data.count(b"\n\nFrom ")
        return total

    def queue_empty(self):
        run = subprocess.run([str(self.binary), "queue", "list", "--config", str(self.config)], capture_output=True,
                             text=True, timeout=30, env=dict(os.environ, RUST_LOG="off"))
        return "Mail queue is empty" in run.stdout

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def split(total, parts):
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def latencies(log):
    """Arrival-to-delivery times in ms, one per delivered message (the last status=sent of its recipients)."""
    stamp = r"^(\S+) +INFO +([0-9A-F]{20}): "
    queued = {m[2]: m[1] for m in re.finditer(stamp + r"from=.*\(queued\)$", log, re.M)}
    sent = {}
    for m in re.finditer(stamp + r"to=.*status=sent", log, re.M):
        sent[m[2]] = m[1]

    def ts(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    return sorted((ts(sent[i]) - ts(queued[i])) * 1000 for i in sent if i in queued)


def percentile(values, p):
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def run_case(binary, base, sessions):
    folder = Path(tempfile.mkdtemp(prefix=f"postel-delivery-{sessions}-", dir=base))
    server = Server(binary, folder)
    try:
        procs = []
        groups = min(USERS, sessions)
        start = time.monotonic()
        for g, (s, m) in enumerate(zip(split(sessions, groups), split(MESSAGES, groups))):
            argv = [SMTP_SOURCE, "-d", "-l", "1024", "-m", str(m), "-s", str(s), "-M", "client.bench.local",
                    "-f", f"bench@{DOMAIN}", "-t", f"user{g}@{DOMAIN}", f"127.0.0.1:{server.port}"]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        deadline = start + CASE_TIMEOUT
        failed = None
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
                if p.returncode != 0:
                    failed = f"smtp-source exited {p.returncode}: {p.stderr.read().decode(errors='replace')[-300:]}"
            except subprocess.TimeoutExpired:
                failed = "smtp-source did not finish in time"
        sent_at = time.monotonic()
        done = None
        while time.monotonic() < deadline:
            if server.delivered() >= MESSAGES and server.queue_empty():
                done = time.monotonic()
                break
            time.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        peak = status_kib(server.proc.pid, "VmHWM") / 1024
        count = server.delivered()
        left = sorted(os.listdir(folder / "spool" / "queue"))
        log = server.log_path.read_text(errors="replace")
        lat = latencies(log)
        if failed or done is None:
            print(f"{sessions:>8} {'failed':>9}  ({failed or f'{count} of {MESSAGES} delivered in {CASE_TIMEOUT} s'})")
            return
        extra = "" if count == MESSAGES else f"  ({count} in the mailboxes: duplicates!)"
        print(f"{sessions:>8} {MESSAGES / (done - start):>9.0f} {MESSAGES / (sent_at - start):>10.0f} "
              f"{percentile(lat, 50):>8.1f} {percentile(lat, 90):>8.1f} {percentile(lat, 99):>8.1f} "
              f"{peak:>9.1f} {len(left):>7}{extra}")
        sys.stdout.flush()
    finally:
        server.stop()
        log = server.log_path.read_text(errors="replace")
        if "panicked" in log:
            print(f"  NOTE: postel panicked; its log is kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def main():
    if not os.access(SMTP_SOURCE, os.X_OK):
        sys.exit("smtp-source (Debian package postfix) is missing: run tests/setup-tools.sh as root")
    binary = build()
    base = Path(os.environ.get("BENCH_DIR", "/var/tmp"))
    print(f"end-to-end delivery: {MESSAGES} messages of 1 KiB to {USERS} local users, smtp-source -d, "
          f"postel {binary}, spool in {base}, {os.cpu_count()} CPUs\n")
    header = (f"{'sessions':>8} {'msg/s':>9} {'accept/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
              f"{'peak MiB':>9} {'queue/':>7}")
    print(header)
    print("-" * len(header))
    for sessions in SESSIONS:
        run_case(binary, base, sessions)
    print("\nmsg/s: delivered into the mailboxes per second; accept/s: smtp-source's own rate (until its last 250);"
          "\nlatency: arrival to delivery per message, from the log; queue/: files left there (segments go when full"
          "\nor at the next start-up).")


if __name__ == "__main__":
    main()
