"""Intake: how fast a server answers 250 to smtp-source, against the ceiling of smtp-sink, which stores nothing, the
floor of Postel's design (bench/floor.rs), which stores nothing either but serves each connection on a thread, and the
durable floor, which also syncs each message to disk before its 250."""

from case import DURABLE, FLOOR, POSTEL, POSTFIX, SINK, Case, timed
from load import Stream


SERVERS = (POSTEL, POSTFIX, FLOOR, DURABLE, SINK)


def accepted(*streams):
    return lambda server, ctx: timed(server, ctx, list(streams))


def cases():
    found = []
    for sessions in (1, 10, 50):
        found.append(Case(f"accept-{sessions}", f"accept, {sessions} session{'s' * (sessions > 1)}, "
                          "new connection per message", SERVERS,
                          accepted(Stream(sessions, max(200, 20 * sessions)))))
        found.append(Case(f"accept-{sessions}-reuse", f"accept, {sessions} session{'s' * (sessions > 1)}, "
                          "100 messages per connection", SERVERS,
                          accepted(Stream(sessions, 100 * sessions, reuse=True))))
    found.append(Case("accept-1mib", "accept, 10 sessions, 1 MiB messages", SERVERS,
                      accepted(Stream(10, 20, length=1024 * 1024))))
    return found
