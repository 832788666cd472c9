"""What /proc says about a server's processes: CPU time, memory, children."""

import os
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name; index 0 is the state (field 3 of proc(5))."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_ticks(pid, children=False):
    """utime + stime of a process (all its threads), plus cutime + cstime of its reaped children when `children`."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def status_kib(pid, field):
    """A kB field of /proc/PID/status (VmRSS, VmHWM), 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid):
    """Proportional set size: each shared page divided among the processes that map it."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def family(root):
    """`root` and all its descendants that are alive now."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(_stat_fields(entry)[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


class Meter:
    """Server-side cost of one measurement: CPU ticks used, and memory sampled every `interval` seconds."""

    def __init__(self, server, interval):
        self.server = server
        self.interval = interval
        self.cpu_start = server.cpu_ticks()
        self.base_kib = server.memory_kib()
        self.peak_kib = self.base_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, self.server.memory_kib())

    def stop(self):
        """(CPU seconds used, peak memory KiB, memory KiB at the start)."""
        self._stop.set()
        self._thread.join()
        peak = max(self.peak_kib, self.server.peak_kib())
        return (self.server.cpu_ticks() - self.cpu_start) / TICK, peak, self.base_kib


def wait_idle(server, quiet_steps=3, step=0.1, timeout=60):
    """Waits until the server has nothing queued any more and has used no CPU for `quiet_steps` steps in a row;
    False when it is still busy after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last, still = server.cpu_ticks(), 0
    while time.monotonic() < deadline:
        time.sleep(step)
        now = server.cpu_ticks()
        still = still + 1 if now == last else 0
        last = now
        if still >= quiet_steps and not server.busy():
            return True
    return False
