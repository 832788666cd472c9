"""The client side: smtp-source traffic in rounds, and counting what arrived in mbox files."""

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

import reference

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
ROUND_TIMEOUT = 300  # seconds; a round that takes longer than this is a hung server


@dataclass
class Stream:
    """One smtp-source command, run in rounds: `sessions` in parallel send `per_round` messages per round, a new
    connection per message unless `reuse` (then each session's connection carries about per_round / sessions)."""

    sessions: int
    per_round: int
    to: str = f"load@{reference.DOMAIN}"
    recipients: int = 1
    length: int = 1024
    reuse: bool = False

    def argv(self, addr):
        return [SMTP_SOURCE, *(["-d"] if self.reuse else []), "-s", str(self.sessions), "-m", str(self.per_round),
                "-r", str(self.recipients), "-l", str(self.length), "-M", "client.bench.local",
                "-f", f"bench@{reference.DOMAIN}", "-t", self.to, addr]


def send(addr, streams, duration):
    """Runs every stream at once, each repeating whole rounds until `duration` seconds have passed (at least one).
    Returns (messages sent, seconds from the start until the last round ended, error or None)."""
    start = time.monotonic()
    deadline = start + duration
    sent, errors = [0] * len(streams), []

    def rounds(i, stream):
        while True:
            try:
                done = subprocess.run(stream.argv(addr), capture_output=True, text=True, timeout=ROUND_TIMEOUT)
            except subprocess.TimeoutExpired:
                errors.append(f"smtp-source did not finish a round in {ROUND_TIMEOUT} s")
                return
            if done.returncode != 0:
                lines = (done.stderr or done.stdout or f"exit {done.returncode}").strip().splitlines()
                errors.append(f"smtp-source: {lines[-1]}")
                return
            sent[i] += stream.per_round
            if time.monotonic() >= deadline:
                return

    threads = [threading.Thread(target=rounds, args=(i, s)) for i, s in enumerate(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sent), time.monotonic() - start, errors[0] if errors else None


class MboxCounter:
    """Messages in a set of mbox files, counted by their From_ lines; reads only what was appended since the last
    count. The files must be empty or absent when it is made."""

    SEPARATOR = b"\n\nFrom "

    def __init__(self, paths):
        self.state = {path: [0, b"", 0] for path in paths}  # offset, last bytes read, messages

    def count(self):
        total = 0
        for path, state in self.state.items():
            offset, carry, found = state
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            if data:
                if offset == 0 and data.startswith(b"From "):
                    found += 1
                # The carry is shorter than the separator, so no match is counted twice.
                found += (carry + data).count(self.SEPARATOR)
                state[:] = [offset + len(data), (carry + data)[-(len(self.SEPARATOR) - 1):], found]
            total += found
        return total


def wait_until(condition, timeout, step=0.02):
    """Polls `condition` until it holds; returns the time it was first seen to hold, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        time.sleep(step)
