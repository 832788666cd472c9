#!/usr/bin/env python3
"""bench/relay.py -- how fast Postel relays: smtp-source -> postel serve -> smtp-sink.

Starts `target/release/postel serve` on a free port of 127.0.0.1 (trusted, so it
relays), dnsmasq on 127.0.0.1 with MX records for d1.test .. d10.test that all
name mx.bench.test = 127.0.0.2, and Postfix's smtp-sink on 127.0.0.2 (the
server's `remote_port`). Postfix's smtp-source sends N messages of 1 KiB over
10 sessions, one connection each:

  1 domain      every message to user@d1.test (so remote_concurrency, default 2,
                connections carry everything)
  10 domains    10 smtp-source runs at once, one session each, to user@dK.test

For each case it prints

  accept msg/s   messages smtp-source got 250 for, per second of its run
  relay msg/s    messages smtp-sink received, per second from the first
                 message sent until the last one arrived (end to end)
  drain s        how long after smtp-source finished the last message arrived
  peak RSS MiB   the server's VmHWM during the case (a fresh server per case)
  cpu ms/msg     the server's CPU time (all threads) per message

Benchmarks print numbers; they never fail on a timing. Takes well under 2
minutes. Environment: BENCH_SCALE (default 1.0) multiplies N (2000);
BENCH_DIR (default /var/tmp) holds the temporary spool; POSTEL_BENCH_BIN skips
the build and uses that binary. Nothing leaves 127.0.0.0/8.
"""

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
MESSAGES = max(10, int(2000 * SCALE))
SINK_IP = "127.0.0.2"
CASE_TIMEOUT = 50  # seconds for one case, sending and relaying
TICK = os.sysconf("SC_CLK_TCK")


def free_port(ip="127.0.0.1"):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def port_free(ip, port, kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


def build():
    if os.environ.get("POSTEL_BENCH_BIN"):
        return Path(os.environ["POSTEL_BENCH_BIN"]).resolve()
    if subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO).returncode != 0:
        sys.exit("bench: cargo build --release failed")
    return REPO / "target" / "release" / "postel"


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def stop(proc, sig=signal.SIGTERM, wait=20):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def dns_answers(port):
    query = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x02d1\x04test\x00" + struct.pack(">HH", 15, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        s.sendto(query, ("127.0.0.1", port))
        try:
            return len(s.recv(512)) > 12
        except OSError:
            return False


def start_dns(folder):
    for _ in range(20):
        port = free_port()
        if port_free("127.0.0.1", port, socket.SOCK_DGRAM):
            break
    records = ["--host-record=mx.bench.test,127.0.0.2"]
    records += [f"--mx-host=d{k}.test,mx.bench.test,10" for k in range(1, 11)]
    proc = subprocess.Popen([DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                             "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}", "--local=/test/",
                             *records], stdin=subprocess.DEVNULL, stdout=open(folder / "dnsmasq.log", "wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not dns_answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            sys.exit(f"dnsmasq did not answer; see {folder / 'dnsmasq.log'}")
        time.sleep(0.05)
    return proc, port


class Sink:
    """smtp-sink on SINK_IP:port with running counters (-c) in a file; messages are thrown away."""

    def __init__(self, folder, port):
        self.out = folder / f"sink-{time.monotonic_ns()}.out"
        argv = [SMTP_SINK, "-c", "-h", "mx.bench.test", f"{SINK_IP}:{port}", "256"]
        if os.geteuid() == 0:
            argv[1:1] = ["-u", "nobody"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(self.out, "wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((SINK_IP, port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"smtp-sink did not start: {self.out.read_text(errors='replace')}")
                time.sleep(0.05)

    def counters(self):
        found = re.findall(r"sess=(\d+) quit=(\d+) mesg=(\d+)", self.out.read_text(errors="replace"))
        return tuple(map(int, found[-1])) if found else (0, 0, 0)

    def stop(self):
        stop(self.proc)


class Postel:
    def __init__(self, binary, folder, dns_port, remote_port):
        self.folder = folder
        self.port = free_port()
        (folder / "spool").mkdir()
        (folder / "mailboxes").mkdir()
        config = folder / "postel.toml"
        config.write_text(
            f'listen = ["127.0.0.1:{self.port}"]\n'
            f'hostname = "relay.bench.local"\n'
            f'local_users = "any"\n'
            f'spool_dir = "{folder / "spool"}"\n'
            f'mailbox_dir = "{folder / "mailboxes"}"\n'
            f'nameservers = ["127.0.0.1:{dns_port}"]\n'
            f'remote_port = {remote_port}\n'
        )
        self.log_path = folder / "postel.log"
        self.proc = subprocess.Popen([str(binary), "serve", "--config", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
                                     env=dict(os.environ, RUST_LOG="info"))
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"postel exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(512).startswith(b"220"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                stop(self.proc)
                sys.exit("postel did not answer within 10 s")
            time.sleep(0.05)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        stop(self.proc)


def run_case(binary, base, dns_port, remote_port, domains):
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=base))
    sink = Sink(base, remote_port)
    postel = Postel(binary, folder, dns_port, remote_port)
    try:
        pid = postel.proc.pid
        ticks0 = cpu_ticks(pid)
        per = MESSAGES // domains
        total = per * domains
        sessions = 10 // domains
        runs = []
        t0 = time.monotonic()
        for k in range(1, domains + 1):
            argv = [SMTP_SOURCE, "-d", "-l", "1024", "-m", str(per), "-s", str(sessions), "-f", "bench@client.bench",
                    "-t", f"user{k}@d{k}.test", f"127.0.0.1:{postel.port}"]
            runs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        failed = []
        for run in runs:
            try:
                out, _ = run.communicate(timeout=CASE_TIMEOUT)
            except subprocess.TimeoutExpired:
                run.kill()
                out, _ = run.communicate()
                failed.append("timeout")
            if run.returncode:
                failed.append(out.decode(errors="replace").strip()[-200:])
        t_accept = time.monotonic()
        deadline = t0 + CASE_TIMEOUT
        while sink.counters()[2] < total and time.monotonic() < deadline and postel.proc.poll() is None:
            time.sleep(0.01)
        t_done = time.monotonic()
        got = sink.counters()[2]
        ticks = cpu_ticks(pid) - ticks0
        peak = status_kib(pid, "VmHWM")
        log = postel.log()
        return {
            "domains": domains, "total": total, "received": got, "failed": failed,
            "accept": total / (t_accept - t0), "relay": got / (t_done - t0), "drain": t_done - t_accept,
            "peak": peak / 1024, "cpu": ticks * 1000 / TICK / max(got, 1),
            "deferred": len(re.findall(r"status=deferred", log)), "panicked": "panicked" in log,
            "warnings": sorted(set(re.findall(r"(?:WARN|ERROR) +(?:\S+: )?(.*)", log)))[:3],
        }
    finally:
        postel.stop()
        sink.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main():
    for tool in (SMTP_SOURCE, SMTP_SINK, DNSMASQ):
        if not os.access(tool, os.X_OK):
            sys.exit(f"{tool} is missing: run tests/setup-tools.sh as root")
    binary = build()
    base = Path(tempfile.mkdtemp(prefix="postel-relay-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    os.chmod(base, 0o755)
    for _ in range(50):
        remote_port = free_port(SINK_IP)
        if port_free("127.0.0.1", remote_port):
            break
    dns, dns_port = start_dns(base)
    print(f"\nrelay: smtp-source (10 sessions, -l 1024) -> postel {binary} on 127.0.0.1 -> smtp-sink on "
          f"{SINK_IP}:{remote_port}; {MESSAGES} messages per case, {os.cpu_count()} CPUs, default delivery_workers "
          f"and remote_concurrency\n")
    header = (f"{'case':<12} {'msgs':>6} {'arrived':>8} {'accept msg/s':>13} {'relay msg/s':>12} {'drain s':>8} "
              f"{'cpu ms/msg':>11} {'peak RSS MiB':>13}")
    print(header)
    print("-" * len(header))
    try:
        for domains in (1, 10):
            r = run_case(binary, base, dns_port, remote_port, domains)
            label = f"{domains} domain" + ("s" if domains > 1 else "")
            print(f"{label:<12} {r['total']:>6} {r['received']:>8} {r['accept']:>13.0f} {r['relay']:>12.0f} "
                  f"{r['drain']:>8.2f} {r['cpu']:>11.3f} {r['peak']:>13.1f}")
            if r["failed"]:
                print(f"  smtp-source: {r['failed'][:2]}")
            if r["received"] < r["total"]:
                print(f"  only {r['received']} of {r['total']} arrived within {CASE_TIMEOUT} s")
            if r["deferred"]:
                print(f"  {r['deferred']} deferrals in the log")
            if r["panicked"]:
                print("  NOTE: postel panicked")
            for w in r["warnings"]:
                print(f"  postel log: {w}")
            sys.stdout.flush()
    finally:
        stop(dns)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
