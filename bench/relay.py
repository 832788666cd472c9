"""Relaying: smtp-source -> server -> smtp-sink for 1 and 10 destination domains, timed until the last message has
arrived at the sinks. Postel finds dK.test's server by its MX record, from a dnsmasq on 127.0.0.1 serving the test
zone; the reference has them in its transport map (reference.py). Either way mail for dK.test goes to the smtp-sink
on reference.RELAY_SINKS[K-1], port reference.RELAY_PORT: a destination of its own per domain."""

import shutil
import socket
import struct
import subprocess
import time

import reference
import servers
from case import POSTEL, POSTFIX, Case, timed
from load import Stream
from net import free_port

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


# How long the relay domains' answers may be cached, as a real zone says (dnsmasq's own records otherwise have TTL 0).
DNS_TTL = 300


class Dns:
    """dnsmasq on a free port of 127.0.0.1, answering for the relay domains only, authoritatively: with TTL DNS_TTL,
    and an SOA in negative answers (the AAAA that the MX hosts lack), as a zone's own server does."""

    def __init__(self, ctx):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        records = []
        for k, (domain, ip) in enumerate(zip(reference.RELAY_DOMAINS, reference.RELAY_SINKS), 1):
            records += [f"--mx-host={domain},mx{k}.bench.test,10", f"--host-record=mx{k}.bench.test,{ip}"]
        log = ctx.base / "dnsmasq.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                                          "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.port}",
                                          "--local=/test/", "--auth-server=ns.bench.test,127.0.0.1",
                                          "--auth-zone=test", f"--auth-ttl={DNS_TTL}",
                                          f"--auth-soa=1,hostmaster.bench.test,1200,120,604800,{DNS_TTL}",
                                          *records],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dnsmasq did not answer; see {log}")
            time.sleep(0.05)

    def answers(self):
        query = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x02d1\x04test\x00" + struct.pack(">HH", 15, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            s.sendto(query, ("127.0.0.1", self.port))
            try:
                return len(s.recv(512)) > 12
            except OSError:
                return False

    def stop(self):
        servers.stop_process(self.proc)


def postel_settings(ctx):
    dns = ctx.resource("dns", Dns)
    return {"nameservers": [dns.addr], "remote_port": reference.RELAY_PORT, "smarthost": ""}


def relayed(domains):
    if domains == 1:
        streams = [Stream(10, 1000, to=f"user@{reference.RELAY_DOMAINS[0]}", reuse=True)]
    else:
        streams = [Stream(1, 100, to=f"user@{d}", reuse=True) for d in reference.RELAY_DOMAINS[:domains]]

    def measure(server, ctx):
        sinks = [servers.Sink(ctx.base, ip, reference.RELAY_PORT, counting=True)
                 for ip in reference.RELAY_SINKS[:domains]]
        try:
            return timed(server, ctx, streams, arrived=lambda: sum(sink.received() for sink in sinks))
        finally:
            for sink in sinks:
                sink.stop()

    return measure


def cases():
    return [
        Case(f"relay-{n}", f"relay to smtp-sink, {n} domain{'s' * (n > 1)}, 10 sessions", (POSTEL, POSTFIX),
             relayed(n), postel_settings=postel_settings)
        for n in (1, 10)
    ]
