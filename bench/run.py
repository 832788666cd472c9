#!/usr/bin/env python3
"""bench/run.py -- how many messages a second Postel takes in, and at what cost.

Builds the release binary, starts `target/release/postel serve` on a free port
of 127.0.0.1 with a temporary spool (`local_users = "any"`), and drives it
with Postfix's smtp-source: 1, 10 and 50 parallel sessions, a new connection
per message and several messages per connection, plus one case with 10
recipients per message. For each case it prints

  msg/s          messages accepted per second of wall time (smtp-source's run)
  cpu ms/msg     the server's CPU time (user + system, all threads, from
                 /proc/<pid>/stat) per message, counted until the server is
                 idle again, so work done after the 250 (delivery) is included
  peak mem MiB   Postel's peak resident memory during the case (VmHWM, reset
                 before each case); for Postfix see below

When a Postfix answers on 127.0.0.1:2525 (shared/bench/setup_postfix.sh sets
one up: domain bench.local, recipients load@ and 1bench@..50bench@), every case
runs against it too, alternating which server goes first, and the last table
gives Postel/Postfix per case. Postfix's numbers add up all its processes
(smtpd, cleanup, qmgr, local, ... and, through the master's cutime/cstime,
those that exited); its memory is the largest sum of their PSS seen (shared
pages divided among the processes that map them), sampled every 50 ms.

Benchmarks print numbers; they never fail on a timing. A whole run takes
about 2-4 minutes. Environment: BENCH_SCALE (default 1.0) multiplies the
message counts; BENCH_DIR (default /var/tmp) holds the temporary spool;
POSTEL_BENCH_BIN skips the build and uses that binary.
"""

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
POSTFIX_ADDR = ("127.0.0.1", 2525)
DOMAIN = "bench.local"
TICK = os.sysconf("SC_CLK_TCK")
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
RUN_TIMEOUT = 120  # seconds for one smtp-source run

# (label, sessions, messages, extra smtp-source options, recipient)
CASES = [
    ("1 session, new connection per message", 1, 500, [], "load"),
    ("1 session, one connection", 1, 1000, ["-d"], "load"),
    ("10 sessions, new connection per message", 10, 2000, [], "load"),
    ("10 sessions, one connection each", 10, 3000, ["-d"], "load"),
    ("50 sessions, new connection per message", 50, 3000, [], "load"),
    ("50 sessions, one connection each", 50, 5000, ["-d"], "load"),
    ("10 sessions, 10 recipients per message", 10, 1000, ["-d", "-r", "10"], "bench"),
]


def stat_ticks(pid, children=False):
    """utime + stime of a process (all threads), plus cutime + cstime when `children`, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    # After the ")": state is field 3 of stat(5), so utime (14) is index 11 here.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def pss_kib(pid):
    """Proportional set size: shared pages divided among the processes that map them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class Postel:
    name = "postel"

    @staticmethod
    def memory_kib(pid):
        return status_kib(pid, "VmRSS")

    def __init__(self, binary, folder):
        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = folder / "postel.toml"
        config.write_text(
            f'listen = ["127.0.0.1:{self.port}"]\n'
            f'hostname = "{DOMAIN}"\n'
            f'local_domains = ["localhost", "{DOMAIN}"]\n'
            f'local_users = "any"\n'
            f'spool_dir = "{folder / "spool"}"\n'
            f'mailbox_dir = "{folder / "mailboxes"}"\n'
        )
        (folder / "spool").mkdir()
        (folder / "mailboxes").mkdir()
        self.log = open(folder / "postel.log", "wb")
        self.proc = subprocess.Popen([str(binary), "serve", "--config", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, RUST_LOG="info"))
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"postel exited with {self.proc.returncode}; see {folder / 'postel.log'}")
            try:
                greeting = smtp_greeting(("127.0.0.1", self.port))
                if greeting.startswith("220"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                sys.exit("postel did not answer within 10 s")
            time.sleep(0.05)

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def pids(self):
        return [self.proc.pid]

    def cpu_ticks(self):
        return stat_ticks(self.proc.pid)

    def reset_peak(self):
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass

    def peak_kib(self, sampled):
        return max(status_kib(self.proc.pid, "VmHWM"), sampled)

    def drain(self):
        pass  # Postel's own delivery, if any, is caught by waiting for its CPU to go quiet

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class Postfix:
    name = "postfix"
    addr = f"{POSTFIX_ADDR[0]}:{POSTFIX_ADDR[1]}"
    memory_kib = staticmethod(pss_kib)  # many processes sharing pages: RSS would count them many times

    def pids(self):
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    exe = os.readlink(f"/proc/{entry}/exe")
                except OSError:
                    continue
                if exe.startswith("/usr/lib/postfix/"):
                    pids.append(int(entry))
        return pids

    def master(self):
        for pid in self.pids():
            try:
                if os.readlink(f"/proc/{pid}/exe").endswith("/master"):
                    return pid
            except OSError:
                pass
        return None

    def cpu_ticks(self):
        master = self.master()
        return sum(stat_ticks(pid, children=(pid == master)) for pid in self.pids())

    def reset_peak(self):
        pass

    def peak_kib(self, sampled):
        return sampled

    def drain(self, timeout=60):
        """Waits until Postfix's queue is empty (local delivery done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True).stdout
            if not out.strip():
                return
            time.sleep(0.2)
        print(f"  (postfix queue not empty after {timeout} s)")

    def stop(self):
        pass


def smtp_greeting(addr, timeout=2):
    with socket.create_connection(addr, timeout=timeout) as s:
        s.settimeout(timeout)
        data = b""
        while b"\n" not in data:
            chunk = s.recv(512)
            if not chunk:
                break
            data += chunk
        try:
            s.sendall(b"QUIT\r\n")
        except OSError:
            pass
        return data.decode("latin-1").strip()


def find_postfix():
    try:
        greeting = smtp_greeting(POSTFIX_ADDR)
    except OSError:
        return None
    if not greeting.startswith("220"):
        return None
    configured = subprocess.run(["postconf", "-M"], capture_output=True, text=True).stdout if shutil.which("postconf") else ""
    if "Postfix" in greeting or "127.0.0.1:2525" in configured:
        return Postfix()
    print(f"something answers on 127.0.0.1:2525 that is not Postfix ({greeting!r}); not comparing")
    return None


def wait_idle(server, quiet=3, step=0.2, timeout=30):
    """Waits until the server has used no CPU for `quiet` steps in a row; returns its CPU ticks."""
    deadline = time.monotonic() + timeout
    last, still = server.cpu_ticks(), 0
    while still < quiet and time.monotonic() < deadline:
        time.sleep(step)
        now = server.cpu_ticks()
        still = still + 1 if now == last else 0
        last = now
    return last


def run_case(server, sessions, messages, options, rcpt):
    """One smtp-source run against `server`: (msg/s, cpu ms/msg, peak MiB) or None if it failed."""
    wait_idle(server)
    server.reset_peak()
    cpu0 = server.cpu_ticks()
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], sum(server.memory_kib(p) for p in server.pids()))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    argv = [SMTP_SOURCE, "-l", "1024", "-m", str(messages), "-s", str(sessions), *options,
            "-M", "client.bench.local", "-f", f"bench@{DOMAIN}", "-t", f"{rcpt}@{DOMAIN}", server.addr]
    start = time.monotonic()
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        failed = run.returncode != 0 and (run.stderr.strip() or f"exit {run.returncode}")
    except subprocess.TimeoutExpired:
        failed = f"did not finish in {RUN_TIMEOUT} s"
    wall = time.monotonic() - start
    server.drain()
    cpu1 = wait_idle(server)
    stop.set()
    sampler.join()
    if failed:
        print(f"  {server.name}: smtp-source failed: {failed.splitlines()[-1] if failed else ''}")
        return None
    return messages / wall, (cpu1 - cpu0) / TICK * 1000 / messages, server.peak_kib(peak[0]) / 1024


def fs_type(path):
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
    return out or "?"


def build():
    if os.environ.get("POSTEL_BENCH_BIN"):
        return Path(os.environ["POSTEL_BENCH_BIN"]).resolve()
    if subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO).returncode != 0:
        sys.exit("bench: cargo build --release failed")
    return REPO / "target" / "release" / "postel"


def big_message_growth(server, size=20 * 1024 * 1024):
    """How much the server's peak RSS grows while it takes in one `size`-byte message (KiB)."""
    wait_idle(server)
    server.reset_peak()
    before = status_kib(server.proc.pid, "VmHWM")
    line = b"x" * 998 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (size // len(line))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
        client.sendmail("bench@localhost", ["big@localhost"], body)
    wait_idle(server)
    return status_kib(server.proc.pid, "VmHWM") - before


def main():
    if not os.access(SMTP_SOURCE, os.X_OK):
        sys.exit("smtp-source (Debian package postfix) is missing: run tests/setup-tools.sh as root")
    binary = build()
    base = Path(os.environ.get("BENCH_DIR", "/var/tmp"))
    folder = Path(tempfile.mkdtemp(prefix="postel-bench-", dir=base))
    postfix = find_postfix()
    postel = Postel(binary, folder)
    servers = [postel] + ([postfix] if postfix else [])
    print(f"postel {binary} on {postel.addr}, spool {folder} ({fs_type(folder)})")
    if postfix:
        print(f"postfix on {postfix.addr}, queue /var/spool/postfix ({fs_type('/var/spool/postfix')})")
    else:
        print("no Postfix on 127.0.0.1:2525 (shared/bench/setup_postfix.sh starts one): Postel alone")
    print(f"smtp-source -l 1024 (1 KiB messages), {os.cpu_count()} CPUs, scale {SCALE}\n")
    results = {}
    try:
        for server in servers:  # warm-up, not reported
            run_case(server, 5, 100, ["-d"], "load")
        header = f"{'case':<44} {'server':<8} {'msgs':>6} {'msg/s':>9} {'cpu ms/msg':>11} {'peak mem MiB':>13}"
        print(header)
        print("-" * len(header))
        for n, (label, sessions, messages, options, rcpt) in enumerate(CASES):
            messages = max(sessions, int(messages * SCALE))
            order = servers if n % 2 == 0 else servers[::-1]
            for server in order:
                result = run_case(server, sessions, messages, options, rcpt)
                results[(label, server.name)] = result
                if result:
                    rate, cpu, rss = result
                    print(f"{label:<44} {server.name:<8} {messages:>6} {rate:>9.0f} {cpu:>11.3f} {rss:>13.1f}")
                else:
                    print(f"{label:<44} {server.name:<8} {messages:>6} {'failed':>9}")
                sys.stdout.flush()
        growth = big_message_growth(postel)
        print(f"\npostel: peak RSS grew by {growth / 1024:.2f} MiB while a 20 MiB message arrived")
        if postfix:
            print(f"\n{'Postel/Postfix':<44} {'msg/s':>9} {'cpu/msg':>9} {'peak mem':>9}")
            for label, *_ in CASES:
                a, b = results.get((label, "postel")), results.get((label, "postfix"))
                if a and b:
                    ratios = [a[0] / b[0], a[1] / b[1] if b[1] else float("nan"), a[2] / b[2] if b[2] else float("nan")]
                    print(f"{label:<44} " + " ".join(f"{r:>8.2f}x" for r in ratios))
                else:
                    print(f"{label:<44} {'n/a':>9}")
    finally:
        postel.stop()
        log = (folder / "postel.log").read_text(errors="replace")
        if "panicked" in log:
            print(f"\nNOTE: postel panicked during the run; its log is kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
        warnings = sorted(set(re.findall(r"(?:WARN|ERROR) +(.*)", log)))[:5]
        for w in warnings:
            print(f"postel log: {w}")


if __name__ == "__main__":
    main()
