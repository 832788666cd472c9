"""STARTTLS: the same small messages over TLS, from bench/tls_load.rs (smtp-source cannot say STARTTLS, and a Python
client would spend as much CPU per handshake as the server). Both servers get the reference's certificate and key
(bench/reference.py makes them; the reference offers STARTTLS with them unless set up with --no-tls), and both may
resume sessions. smtp-sink has no TLS, so there is no ceiling."""

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import reference
import servers
from case import POSTEL, POSTFIX, Case, timed

ROUND_TIMEOUT = 300  # seconds; a round that takes longer than this is a hung server


@dataclass
class Kit:
    """The load client and the certificate and key the servers offer: the reference's, which bench/reference.py
    makes, so that both servers sign with the same key; without a reference, a pair made here."""

    client: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, repo, scratch):
        client = servers.build_tool(repo, "tls_load")
        if reference.TLS_CERT.exists() and reference.TLS_KEY.exists():
            return cls(client, reference.TLS_CERT, reference.TLS_KEY)
        cert, key = Path(scratch) / "tls-cert.pem", Path(scratch) / "tls-key.pem"
        reference.make_certificate(cert, key)
        return cls(client, cert, key)


@dataclass
class Stream:
    """One tls_load command, run in rounds of `per_round` messages over `sessions` parallel sessions, each carrying
    `per_connection` messages per connection (1: a handshake per message)."""

    sessions: int
    per_round: int
    per_connection: int

    def argv(self, client, addr):
        port = addr.rsplit(":", 1)[1]
        return [str(client), "--port", port, "--sessions", str(self.sessions), "--messages", str(self.per_round),
                "--per-connection", str(self.per_connection), "--to", f"load@{reference.DOMAIN}"]


def sender(client):
    """A `send` for case.timed: rounds of tls_load until the duration has passed (at least one round)."""

    def send(addr, streams, duration):
        start = time.monotonic()
        sent = 0
        for stream in streams:
            while True:
                try:
                    done = subprocess.run(stream.argv(client, addr), capture_output=True, text=True,
                                          timeout=ROUND_TIMEOUT)
                except subprocess.TimeoutExpired:
                    return sent, time.monotonic() - start, f"tls_load did not finish a round in {ROUND_TIMEOUT} s"
                if done.returncode != 0:
                    lines = (done.stderr or done.stdout or f"exit {done.returncode}").strip().splitlines()
                    return sent, time.monotonic() - start, f"tls_load: {lines[-1]}"
                sent += stream.per_round
                if time.monotonic() - start >= duration:
                    break
        return sent, time.monotonic() - start, None

    return send


def over_tls(stream):
    return lambda server, ctx: timed(server, ctx, [stream], send=sender(ctx.tls.client))


def postel_tls(ctx):
    return {"tls_certificate": str(ctx.tls.cert), "tls_key": str(ctx.tls.key)}


def cases():
    return [
        Case("tls-10-reuse", "STARTTLS, 10 sessions, 100 messages per connection", (POSTEL, POSTFIX),
             over_tls(Stream(10, 2000, 100)), postel_settings=postel_tls),
        Case("tls-10", "STARTTLS, 10 sessions, new connection per message", (POSTEL, POSTFIX),
             over_tls(Stream(10, 400, 1)), postel_settings=postel_tls),
    ]
