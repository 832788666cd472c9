"""End to end: messages in over SMTP and out into mbox files, timed until the last one is in its mailbox."""

import reference
from case import POSTEL, POSTFIX, Case, timed
from load import MboxCounter, Stream

# smtp-source -r 50 -t load@... sends to load, 2load .. 50load: aliases (the same at both servers) for the users.
RECIPIENTS = len(reference.USERS)


def delivered(stream, users):
    def measure(server, ctx):
        boxes = MboxCounter([server.mailbox(user) for user in users])
        return timed(server, ctx, [stream], arrived=boxes.count, per_message=stream.recipients)

    return measure


def cases():
    one_box = reference.USERS[:1]
    return [
        Case("mbox-10", "end to end into one mailbox, 10 sessions", (POSTEL, POSTFIX),
             delivered(Stream(10, 200), one_box)),
        Case("mbox-10-reuse", "end to end into one mailbox, 10 sessions, 100 per connection", (POSTEL, POSTFIX),
             delivered(Stream(10, 1000, reuse=True), one_box)),
        Case("rcpt-50", f"{RECIPIENTS}-recipient messages to {RECIPIENTS} mailboxes (deliveries/s)", (POSTEL, POSTFIX),
             delivered(Stream(10, 20, recipients=RECIPIENTS), reference.USERS), unit="delivery"),
    ]
