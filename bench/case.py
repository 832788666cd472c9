"""What every case kind shares: a case, its result, the servers it runs against, and the measuring itself."""

import time
from dataclasses import dataclass, field
from typing import Callable

import load
import procstat
import reference
import servers
from net import free_port

POSTEL, POSTFIX, SINK = servers.Postel.name, servers.Reference.name, servers.Sink.name
FLOOR, DURABLE = servers.Floor.name, servers.DurableFloor.name
ARRIVAL_TIMEOUT = 120  # seconds after the last message was sent for all of them to arrive


@dataclass
class Result:
    count: int  # messages (deliveries in a case counting deliveries) that make the rate
    seconds: float
    cpu_seconds: float  # the server's, user + system, all its processes and threads
    peak_kib: int
    base_kib: int  # memory when the case started
    notes: list = field(default_factory=list)

    @property
    def rate(self):
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms(self):
        return self.cpu_seconds * 1000 / self.count if self.count else float("nan")


@dataclass
class Case:
    key: str  # short name, for --only, the CSV and the chart
    label: str
    servers: tuple  # of POSTEL, POSTFIX, FLOOR, DURABLE, SINK
    measure: Callable  # (server, Context) -> Result
    # (Context) -> settings for Postel's configuration, besides or instead of those Context.start gives every Postel
    postel_settings: Callable = lambda ctx: {}
    unit: str = "msg"


class Context:
    """What a run has for its cases: the binary, the TLS load client and certificate (a tls.Kit), the floor server
    (bench/floor.rs), a scratch folder, the reference (or None), how long to send."""

    def __init__(self, binary, tls_kit, floor, base, reference, duration):
        self.binary = binary
        self.tls = tls_kit
        self.floor = floor
        self.base = base
        self.reference = reference
        self.duration = duration
        self.resources = {}

    def resource(self, key, make):
        """A helper process shared by the cases of a run (started on first use, stopped by close())."""
        if key not in self.resources:
            self.resources[key] = make(self)
        return self.resources[key]

    def aliases(self):
        """The reference's aliases, for Postel: both servers expand the same names."""
        path = self.base / "aliases"
        if not path.exists():
            path.write_text("".join(f"{alias}: {user}\n" for alias, user in reference.ALIASES.items()))
        return path

    def start(self, name, case):
        if name == POSTEL:
            # Mail for elsewhere goes nowhere, whatever happens: a port nobody listens on.
            nowhere = f"127.0.0.1:{free_port()}"
            # No mailbox size limit, as at the reference: the cases that fill one mailbox pass Postel's default.
            settings = {"smarthost": nowhere, "nameservers": [nowhere], "aliases": str(self.aliases()),
                        "mailbox_size_limit": 0,
                        **case.postel_settings(self)}
            return servers.Postel(self.binary, self.base, **settings)
        if name == POSTFIX:
            procstat.wait_idle(self.reference)
            self.reference.empty_mailboxes()
            return self.reference
        if name == FLOOR:
            return servers.Floor(self.floor, self.base)
        if name == DURABLE:
            return servers.DurableFloor(self.floor, self.base)
        return servers.Sink(self.base)

    def close(self):
        for helper in self.resources.values():
            helper.stop()


def timed(server, ctx, streams, arrived=None, per_message=1, duration=None, sample_every=0.5, send=load.send):
    """Sends `streams` to `server` with `send` (smtp-source's rounds unless told) for the run's duration and
    measures. Without `arrived` the rate is of messages accepted (the 250s over the client's time); with it, of `arrived()` reaching messages sent × `per_message`,
    timed from the first message sent until the last arrival. CPU is counted until the server is idle again; memory
    is sampled every `sample_every` seconds (where the kernel keeps no exact peak; reading all of Postfix's memory
    maps takes CPU the servers would otherwise have, hence not often)."""
    procstat.wait_idle(server)
    meter = procstat.Meter(server, sample_every)
    start = time.monotonic()
    sent, seconds, error = send(server.addr, streams, ctx.duration if duration is None else duration)
    notes = [error] if error else []
    count = sent * per_message
    if arrived:
        finished = load.wait_until(lambda: arrived() >= count, ARRIVAL_TIMEOUT)
        seconds = (finished or time.monotonic()) - start
        if finished is None:
            notes.append(f"only {arrived()} of {count} arrived within {ARRIVAL_TIMEOUT} s")
            count = arrived()
    if not procstat.wait_idle(server):
        notes.append("the server was still busy a minute after the case")
    if arrived and arrived() > count and not error:
        notes.append(f"{arrived()} arrived of {count} sent: duplicates")
    cpu, peak, base = meter.stop()
    return Result(count, seconds, cpu, peak, base, notes)
