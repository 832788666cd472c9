"""What the integration tests share: the scripted SMTP client, config files, a running server.

`SmtpConn` reads whole replies (multi-line included) with a deadline, so no
test can hang; `Postel` is one `postel serve` on a free 127.0.0.1 port with
its own config, spool and mailboxes in a folder; `postel(args, config)` runs
one command of the binary; `wait_until(pred, timeout)` polls a condition with
a deadline. The binary is $POSTEL_BIN, or target/debug/postel in the
repository. Servers log at $POSTEL_TEST_RUST_LOG (debug by default), commands
at $POSTEL_TEST_RUST_LOG (info by default).
"""

import fcntl
import functools
import json
import os
import re
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import spool

REPO = Path(__file__).resolve().parent.parent
POSTEL_BIN = Path(os.environ.get("POSTEL_BIN", REPO / "target" / "debug" / "postel")).resolve()
HOSTNAME = "postel.test"
START_TIMEOUT = 10.0
REPLY_TIMEOUT = 10.0
BIND_ATTEMPTS = 5
ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
QUEUED = re.compile(r"queued as ([0-9A-F]{20})")


def wait_until(predicate, timeout=20.0, step=0.05):
    """True once `predicate()` is true; False when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def postel(args, config=None, input=None, env=None, timeout=30, check=False):
    """Runs the postel binary with `args` (the config goes right after the subcommand when given)."""
    argv = [str(POSTEL_BIN)] + list(args)
    if config is not None:
        argv[2:2] = ["--config", str(config)]
    full_env = dict(os.environ)
    full_env.pop("POSTEL_CONFIG", None)
    full_env["RUST_LOG"] = full_env.get("POSTEL_TEST_RUST_LOG", "info")
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    run = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, env=full_env)
    if check:
        assert run.returncode == 0, f"{argv} exited {run.returncode}: {run.stderr.decode(errors='replace')}"
    return run


def spool_free(spool_dir):
    """Whether no program holds the spool's lock (flock on <spool>/lock): no daemon, and no other program delivering."""
    try:
        with open(Path(spool_dir) / "lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
    except FileNotFoundError:
        return True
    except BlockingIOError:
        return False


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port):
    """Whether something accepts connections on 127.0.0.1:`port` now."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _socket_inodes(pid):
    """The inodes of the sockets process `pid` and its children hold open."""
    pids = [str(pid)]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                pids += children.read().split()
    except OSError:
        pass
    inodes = set()
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    return inodes


def listens(pid, port):
    """Whether process `pid` (or a child of it) listens on TCP `port`: not just anyone who answers there."""
    inodes = _socket_inodes(pid)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                return True
    return False


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


@functools.lru_cache(maxsize=None)
def hold_keys():
    """Config keys that keep accepted messages in queue/ (no delivery), if this binary has them.

    The tests read what was stored from the spool; a message that delivery has already taken out
    of it cannot be checked. `delivery_workers = 0` asks for no delivery at all.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hold.toml"
        path.write_text("delivery_workers = 0\n")
        run = subprocess.run([str(POSTEL_BIN), "check", "--config", str(path)], capture_output=True, timeout=10)
    return {"delivery_workers": 0} if run.returncode == 0 else {}


def write_config(folder, port=None, **keys):
    """Writes <folder>/postel.toml: the test defaults, then `keys` (None drops a key)."""
    folder = Path(folder)
    (folder / "spool").mkdir(exist_ok=True)
    (folder / "mailboxes").mkdir(exist_ok=True)
    config = {
        "listen": [f"127.0.0.1:{port or free_port()}"],
        "hostname": HOSTNAME,
        "spool_dir": str(folder / "spool"),
        "mailbox_dir": str(folder / "mailboxes"),
        "local_users": ["alice", "bob"],
        **hold_keys(),
    }
    config.update(keys)
    path = folder / "postel.toml"
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in config.items() if v is not None))
    return path


class Reply:
    """One SMTP reply: `code`, the text `lines` (after "250-"/"250 "), `raw`."""

    def __init__(self, raw_lines):
        self.raw = raw_lines
        self.code = int(raw_lines[0][:3])
        self.lines = [line[4:] for line in raw_lines]

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def enhanced(self):
        """The RFC 3463 status code that starts the last line, or None."""
        first = self.lines[-1].split(" ", 1)[0]
        return first if ENHANCED.match(first) else None

    @property
    def queue_id(self):
        m = QUEUED.search(self.text)
        return m[1] if m else None

    def __repr__(self):
        return "<" + " / ".join(self.raw) + ">"


class SmtpConn:
    """A scripted SMTP client over raw bytes, for tests that need exact bytes on the wire."""

    def __init__(self, sock=None, rfd=None, wfd=None, close_write=None):
        """Over a socket, or over two file descriptors; `close_write` closes the writing side of those."""
        self.sock = sock
        self.rfd = sock.fileno() if sock else rfd
        self.wfd = wfd
        self.close_write = close_write
        self.buf = b""
        self.eof = False

    @classmethod
    def connect(cls, port, source=None, timeout=REPLY_TIMEOUT):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        return cls(sock)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        if self.sock:
            self.sock.sendall(data)
        else:
            view = memoryview(data)
            while view:
                view = view[os.write(self.wfd, view):]

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete reply in time; got so far: {self.buf[:300]!r}")
        ready, _, _ = select.select([self.rfd], [], [], left)
        if not ready:
            raise TimeoutError(f"no complete reply in time; got so far: {self.buf[:300]!r}")
        chunk = self.sock.recv(65536) if self.sock else os.read(self.rfd, 65536)
        if not chunk:
            self.eof = True
            raise EOFError(f"connection closed; unread: {self.buf[:300]!r}")
        self.buf += chunk

    def read_line(self, timeout=REPLY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self, timeout=REPLY_TIMEOUT):
        """Reads one whole reply (all its lines)."""
        deadline = time.monotonic() + timeout
        lines = []
        while True:
            line = self.read_line(max(deadline - time.monotonic(), 0.001))
            if not re.match(r"^\d{3}[ -]", line) and not re.fullmatch(r"\d{3}", line):
                raise AssertionError(f"not an SMTP reply line: {line!r} (after {lines})")
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def cmd(self, line, timeout=REPLY_TIMEOUT):
        """Sends one command line (CRLF added) and returns its reply."""
        self.send(line.encode() + b"\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply(timeout)

    def expect(self, line, code, enhanced=None):
        r = self.cmd(line)
        assert r.code == code, f"{line!r} -> {r}, expected {code}"
        if enhanced:
            assert r.enhanced == enhanced, f"{line!r} -> {r}, expected {code} {enhanced}"
        return r

    def greet(self, helo="client.test", ehlo=True):
        """Reads the greeting and says EHLO (or HELO); returns the EHLO reply."""
        g = self.reply()
        assert g.code == 220, f"greeting {g}"
        return self.expect(f"{'EHLO' if ehlo else 'HELO'} {helo}", 250)

    def closed(self, timeout=5.0):
        """True when the peer closes the connection within `timeout` (unread data is dropped)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except EOFError:
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def shutdown_write(self):
        """Ends what the client sends: the server reads end of file."""
        if self.sock:
            self.sock.shutdown(socket.SHUT_WR)
        else:
            self.close_write()

    def close(self):
        if self.sock:
            self.sock.close()


def finish_servers(servers, failed, name="postel", tail_lines=80):
    """Kills the `servers` (Postel) a test started. Prints the end of a server's log when the test `failed` or the
    server died or panicked; returns what went wrong with them (a panic, an exit on its own), for the test to fail on.
    """
    problems = []
    for server in servers:
        died = server.proc.poll() is not None and not server.stopped
        server.kill()
        log = server.log()
        if failed or died or "panicked" in log:
            tail = "\n".join(log.splitlines()[-tail_lines:])
            print(f"----- {name} log ({server.log_path}), last lines -----\n{tail}")
        if "panicked" in log:
            problems.append(f"{name} panicked (see {server.log_path})")
        if died:
            problems.append(f"{name} exited on its own with code {server.proc.returncode}")
    return problems


class InetdLauncher:
    """A program that listens on a loopback port and runs `postel inetd` per connection (openbsd-inetd, socat,
    systemd-socket-activate), in a process group of its own, logging at debug to `log_path`. It is ready once a
    whole probe session (greeting, QUIT) went through it, so the launcher and postel are both known to work."""

    def __init__(self, argv, port, log_path):
        self.port = port
        self.log_path = log_path
        env = dict(os.environ, RUST_LOG="debug")
        env.pop("POSTEL_CONFIG", None)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, f"{argv[0]} exited: {self.log()}"
            try:
                conn = SmtpConn.connect(port, timeout=5)
                try:
                    greeting = conn.reply(timeout=5)
                    assert greeting.code == 220, greeting
                    conn.expect("QUIT", 221)
                finally:
                    conn.close()
                return
            except (ConnectionRefusedError, ConnectionResetError, EOFError):
                assert time.monotonic() < deadline, f"{argv[0]} not serving on {port}: {self.log()}"
                time.sleep(0.1)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        """Ends the launcher and every process it started."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def transaction(conn, sender, rcpts, body, end=b".\r\n"):
    """MAIL, RCPT..., DATA, the body (dot-stuffed, ending in CRLF) and `end`; returns the final reply."""
    conn.expect(f"MAIL FROM:<{sender}>", 250, "2.1.0")
    for r in rcpts:
        conn.expect(f"RCPT TO:<{r}>", 250, "2.1.5")
    conn.expect("DATA", 354)
    conn.send(body + end)
    return conn.reply()


def find_record(spool_dir, queue_id, log=""):
    """The one record with this queue id in <spool_dir>/queue/, as (envelope, body)."""
    found = [(e, b) for e, b in spool.read_queue(spool_dir) if e["id"] == queue_id]
    if not found and re.search(rf"^.*{queue_id}: (removed|.*status=sent).*$", log, re.M):
        raise AssertionError(
            f"{queue_id} was delivered and left the spool before the test could read it; the tests need "
            f"accepted mail to stay queued (`delivery_workers = 0`, see hold_keys() in tests/helpers.py)")
    assert len(found) == 1, f"queue id {queue_id}: {len(found)} records in {spool_dir}/queue"
    return found[0]


class Postel:
    """A running `postel serve`: its port, folders, process and log."""

    def __init__(self, folder, serve_args=(), **config):
        """`serve_args`: more arguments for `postel serve` (`["--explain"]`)."""
        self.dir = Path(folder)
        self.serve_args = list(serve_args)
        self.config_keys = config
        self._configure()
        self.spool = self.dir / "spool"
        self.mailboxes = self.dir / "mailboxes"
        self.log_path = self.dir / "postel.log"
        self.conns = []
        self.stopped = False
        self._start("wb")

    def _configure(self):
        """Picks a free port and writes the config that listens on it."""
        self.port = free_port()
        self.config_path = write_config(self.dir, self.port, **self.config_keys)

    def _start(self, mode):
        env = dict(os.environ)
        env["RUST_LOG"] = os.environ.get("POSTEL_TEST_RUST_LOG", "debug")
        env.pop("RUST_BACKTRACE", None)
        env.pop("POSTEL_CONFIG", None)
        for _ in range(BIND_ATTEMPTS):
            started_at = self.log_path.stat().st_size if mode == "ab" and self.log_path.exists() else 0
            with open(self.log_path, mode) as log:
                self.proc = subprocess.Popen(
                    [str(POSTEL_BIN), "serve", "--config", str(self.config_path), *self.serve_args],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.dir, env=env,
                )
            if self._wait_ready(started_at):
                return
            # free_port() only says the port was free a moment ago: another program (or an outgoing
            # connection's ephemeral port) took it before the server could bind it. Another port, then.
            mode = "ab"
            self._configure()
        raise AssertionError(f"postel found its port taken {BIND_ATTEMPTS} times:\n{self.log()}")

    def restart(self):
        """Starts `postel serve` again on the same config, spool and port (after kill() or an exit); the log goes on.

        Should another program have taken the port meanwhile, the server gets another one (`self.port`).
        """
        assert self.proc.poll() is not None, "restart() of a server that still runs"
        self.stopped = False
        self._start("ab")

    def _wait_ready(self, started_at):
        """True once this server listens on its port and has answered a probe; False when it exited because the
        port was taken. A connection alone proves nothing: another program may listen on the port."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                if "Address already in use" in self.log()[started_at:]:
                    return False
                raise AssertionError(f"postel exited with {self.proc.returncode} at start:\n{self.log()}")
            if listens(self.proc.pid, self.port):
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return True
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"postel did not accept on port {self.port} within {START_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=5.0):
        """Waits until the log matches `pattern` (a regex); returns the match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log(), re.M)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"log never matched {pattern!r}; log tail:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def wait_disconnects(self, count, timeout=5.0):
        """Waits until the log shows `count` ended sessions (the start-up probe is the first)."""
        deadline = time.monotonic() + timeout
        while self.log().count(": disconnect from ") < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} disconnects logged; log tail:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def connect(self, source=None, timeout=REPLY_TIMEOUT):
        conn = SmtpConn.connect(self.port, source, timeout)
        self.conns.append(conn)
        return conn

    def session(self, helo="client.test", source=None):
        """A connection that has read the greeting and said EHLO."""
        conn = self.connect(source)
        conn.greet(helo)
        return conn

    def records(self):
        return spool.read_queue(self.spool)

    def queued_ids(self):
        """Queue ids of the messages the log says were accepted (it holds them whether or not delivered)."""
        return re.findall(r"([0-9A-F]{20}): from=.*\(queued\)$", self.log(), re.M)

    def assert_nothing_queued(self):
        assert self.records() == [], f"queue/ holds {[e for e, _ in self.records()]}"
        assert self.queued_ids() == [], f"the log shows messages queued: {self.queued_ids()}"

    def record(self, queue_id):
        """The one queue record with this id."""
        return find_record(self.spool, queue_id, self.log())

    def tmp_files(self):
        return spool.tmp_files(self.spool)

    def status(self, field):
        """A field of /proc/<pid>/status in KiB (VmHWM, VmRSS, ...)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def signal(self, sig):
        self.stopped = True
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=15.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"postel still running {timeout}s later; log tail:\n{self.log()[-3000:]}") from None

    def kill(self):
        for conn in self.conns:
            conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def message(subject="test", body="Hello.\r\n", headers=""):
    """A small message with CRLF line ends, as bytes."""
    text = (
        f"From: Carol <carol@example.org>\r\n"
        f"To: Alice <alice@localhost>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@client.test>\r\n"
        f"{headers}"
        f"\r\n"
        f"{body}"
    )
    return text.encode()
