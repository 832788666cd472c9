"""Memory while one 20 MiB message arrives: how far the peak rises above where it was (RSS +MiB). (Memory at 50
sessions is the peak RSS of the accept cases at 50 sessions.)"""

from case import POSTEL, POSTFIX, SINK, Case, timed
from load import Stream

SIZE = 20 * 1024 * 1024


def cases():
    one_big = Stream(1, 1, length=SIZE)
    return [Case("memory-20mib", "memory: one 20 MiB message", (POSTEL, POSTFIX, SINK),
                 lambda server, ctx: timed(server, ctx, [one_big], duration=0, sample_every=0.05))]
