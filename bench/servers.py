"""The servers a benchmark case measures: Postel, the reference Postfix, smtp-sink (the ceiling), and the floor of
Postel's design (bench/floor.rs) without and with a sync before each 250 (the durable floor).

Each one offers the same few things to the cases: `addr` ("ip:port"), `cpu_ticks()` and `memory_kib()` summed over
its processes, `peak_kib()` when the kernel knows the peak exactly, `busy()` while mail is still queued,
`mailbox(user)` and `stop()`.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import procstat
import reference
from net import free_port, greeting

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def build_tool(repo, name):
    """Builds the bench/ program `name` (a `[[bench]]` target) with the release profile; returns its path."""
    done = subprocess.run(["cargo", "bench", "--bench", name, "--no-run", "--quiet", "--message-format=json"],
                          cwd=repo, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message["target"]["name"] == name:
            if message.get("executable"):
                return Path(message["executable"])
    raise SystemExit(f"bench: building bench/{name}.rs failed: {done.stderr.strip()[-500:]}")


def wait_listening(ip, port, proc, what, log, timeout=10):
    deadline = time.monotonic() + timeout
    while not greeting((ip, port), 1).startswith("220"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{what} did not answer on {ip}:{port}; see {log}")
        time.sleep(0.05)


def stop_process(proc, wait=30):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class OneProcess:
    """The measures of a server that is one process, `self.proc`: its CPU time, its memory now and at its peak."""

    def cpu_ticks(self):
        return procstat.cpu_ticks(self.proc.pid)

    def memory_kib(self):
        return procstat.status_kib(self.proc.pid, "VmRSS")

    def peak_kib(self):
        return procstat.status_kib(self.proc.pid, "VmHWM")


class Postel(OneProcess):
    """`postel serve` on a free port of 127.0.0.1 with a spool and mailboxes of its own, removed by stop()."""

    name = "postel"
    panicked = False  # set by stop(); its folder is kept then
    # What Postel warns of because the benchmark runs it as root in a scratch folder: not a problem of a case.
    EXPECTED_WARNINGS = ("running as root", "was open to other users")

    def __init__(self, binary, base, **settings):
        self.binary = binary
        self.folder = Path(tempfile.mkdtemp(prefix="postel-", dir=base))
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        (self.folder / "spool").mkdir()
        (self.folder / "mailboxes").mkdir()
        settings = {
            "listen": [self.addr],
            "hostname": reference.DOMAIN,
            "local_domains": ["localhost", reference.DOMAIN],
            "local_users": "any",
            "spool_dir": str(self.folder / "spool"),
            "mailbox_dir": str(self.folder / "mailboxes"),
            **settings,
        }
        self.config = self.folder / "postel.toml"
        self.config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
        self.log_path = self.folder / "postel.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(binary), "serve", "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, RUST_LOG="info"))
        wait_listening("127.0.0.1", self.port, self.proc, "postel", self.log_path)

    def busy(self):
        listing = subprocess.run([str(self.binary), "queue", "list", "--config", str(self.config)],
                                 capture_output=True, text=True, timeout=30, env=dict(os.environ, RUST_LOG="off"))
        return "Mail queue is empty" not in listing.stdout

    def mailbox(self, user):
        return self.folder / "mailboxes" / user

    def stop(self):
        """Stops the server; returns what its log says went wrong (panics first), keeping the folder if it panicked."""
        stop_process(self.proc)
        log = self.log_path.read_text(errors="replace")
        found = set(re.findall(r"(?:WARN|ERROR) +(?:\S+: )?(.*)", log))
        problems = sorted(p for p in found if not any(e in p for e in self.EXPECTED_WARNINGS))[:3]
        if "panicked" in log:
            self.panicked = True
            return [f"postel panicked; its log is kept in {self.log_path}"] + problems
        shutil.rmtree(self.folder, ignore_errors=True)
        return problems


class Reference:
    """The reference Postfix of bench/reference.py: the master process of its instance and all its children."""

    name = "postfix"
    addr = f"{reference.ADDR[0]}:{reference.ADDR[1]}"

    @classmethod
    def find(cls):
        """(Reference, None) when the bench's Postfix answers on 127.0.0.1:2525, else (None, why not)."""
        text = greeting(reference.ADDR)
        if not text:
            return None, f"no reference Postfix answers on {cls.addr} (make bench-reference sets one up)"
        pid_file = reference.QUEUE_DIR / "pid" / "master.pid"
        try:
            master = int(pid_file.read_text().split()[0])
            alive = os.readlink(f"/proc/{master}/exe").endswith("/master")
        except (OSError, ValueError, IndexError):
            alive = False
        if not text.startswith("220") or "Postfix" not in text or not alive:
            return None, f"what answers on {cls.addr} is not the reference of make bench-reference ({text!r})"
        if os.geteuid() != 0:
            return None, "the reference Postfix is measured as root only (its mailboxes and memory maps are)"
        return cls(master), None

    def __init__(self, master):
        self.master = master

    def cpu_ticks(self):
        # Daemons that exited since start-up are in the master's cutime and cstime.
        return sum(procstat.cpu_ticks(pid, children=(pid == self.master)) for pid in procstat.family(self.master))

    def memory_kib(self):
        # Many processes share the same pages; RSS would count them once per process.
        return sum(procstat.pss_kib(pid) for pid in procstat.family(self.master))

    def peak_kib(self):
        return 0  # no exact peak of a sum over processes: the meter's samples are all there is

    def busy(self):
        # Deferred mail waits for a retry: nothing is being done with it.
        return any(files for queue in ("maildrop", "incoming", "active")
                   for _, _, files in os.walk(reference.QUEUE_DIR / queue))

    def mailbox(self, user):
        return reference.MAIL_SPOOL / user

    def empty_mailboxes(self):
        for user in reference.USERS:
            with open(self.mailbox(user), "r+b") as box:
                box.truncate(0)

    def stop(self):
        return []  # the reference keeps running between cases


class Listener(OneProcess):
    """A server that is one program listening on `ip`:`port` (a free port unless given), its output in a file under
    `base`; it stores nothing, so it is never busy after a case."""

    def __init__(self, base, argv_for, ip="127.0.0.1", port=None):
        self.port = port or free_port(ip)
        self.addr = f"{ip}:{self.port}"
        self.out = Path(base) / f"{self.name}-{ip}-{self.port}.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(argv_for(self.addr), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        wait_listening(ip, self.port, self.proc, self.name, self.out)

    def busy(self):
        return False

    def stop(self):
        stop_process(self.proc)
        self.out.unlink(missing_ok=True)
        return []


class Floor(Listener):
    """bench/floor.rs: Postel's shape (a mio accept loop, 100 session threads fed over a crossbeam channel, blocking
    I/O) answering SMTP and storing nothing."""

    name = "floor"

    def __init__(self, binary, base, options=()):
        super().__init__(base, lambda addr: [str(binary), addr, *options])


class DurableFloor(Floor):
    """The floor with `--sync`: each message is on disk (one write and one fdatasync for all those waiting, in a
    file under `base`, on the disk Postel's spool is on) before its 250. The least a server that keeps the promise
    of its 250 does."""

    name = "durable"

    def __init__(self, binary, base):
        self.sync_file = Path(base) / "durable-floor.sync"
        super().__init__(binary, base, ["--sync", str(self.sync_file)])

    def stop(self):
        found = super().stop()
        self.sync_file.unlink(missing_ok=True)
        return found


class Sink(Listener):
    """Postfix's smtp-sink on `ip`:`port`: answers like a server and stores nothing. `counting` keeps its running
    counters (-c) in a file, for relay cases that wait for the messages to arrive."""

    name = "smtp-sink"

    def __init__(self, base, ip="127.0.0.1", port=None, counting=False):
        def argv(addr):
            found = [SMTP_SINK, *(["-c"] if counting else []), "-h", "sink.bench.test", addr, "256"]
            if os.geteuid() == 0:
                found[1:1] = ["-u", "nobody"]  # smtp-sink will not run as root
            return found

        super().__init__(base, argv, ip, port)

    def received(self):
        """Messages received so far (the last of the running counters)."""
        with open(self.out, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 200))
            found = re.findall(rb"mesg=(\d+)", f.read())
        return int(found[-1]) if found else 0
