"""Relaying (doc/relay.md): who may relay, MX lookup, one copy per host, connection reuse, failures, DSNs, ETRN.

The sending Postel listens on 127.0.0.1 and delivers (delivery_workers > 0); the other side is real: dnsmasq for the
DNS, Postfix's smtp-sink, a second Postel, or a scripted Python server (relayutil.FakeSmtp) where a scenario needs
exact replies, delays or missing extensions, or counts connections. Remote servers listen on 127.0.0.2, 127.0.0.3 ... on one port, the sender's `remote_port`.
"""

import random
import re
import socket
import time

import pytest

from helpers import postel, transaction, wait_until
from mboxutil import as_delivered, mbox_messages, messages, trace_headers
from relayutil import dsns, lab, wait_local  # noqa: F401 (lab: a fixture)

ALICE = "alice@localhost"  # a local user of the sending server: bounces come back to her


def msg(subject, body=b"Hello there.\r\n", mid=None, extra=b""):
    mid = mid or f"<{subject.replace(' ', '.')}@client.test>"
    return (b"From: Alice <alice@localhost>\r\n"
            b"To: someone@example.test\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Date: Tue, 24 Nov 2026 13:49:21 +0000\r\n"
            b"Message-ID: " + mid.encode() + b"\r\n" + extra + b"\r\n" + body)


def submit(server, rcpts, body, sender=ALICE, source=None):
    """One transaction on a new session with `server`; returns the queue id."""
    conn = server.connect(source)
    conn.greet()
    r = transaction(conn, sender, rcpts, body)
    assert r.code == 250, r
    conn.expect("QUIT", 221)
    return r.queue_id


def statuses(log, qid):
    """{recipient: [status words in order]} from the sender's delivery log lines for message `qid`."""
    out = {}
    for to, status in re.findall(rf"^.*{qid}: to=<([^>]+)>.*?, status=(\w+)", log, re.M):
        out.setdefault(to, []).append(status)
    return out


def wait_status(server, qid, rcpt, status, count=1, timeout=20.0):
    ok = wait_until(lambda: statuses(server.log(), qid).get(rcpt, []).count(status) >= count, timeout)
    assert ok, f"{qid} to {rcpt}: no {count}x status={status}; got {statuses(server.log(), qid)}; log tail:\n" \
               f"{server.log()[-3000:]}"


def wait_removed(server, qid, timeout=20.0):
    ok = wait_until(lambda: re.search(rf"^.*{qid}: removed", server.log(), re.M), timeout)
    assert ok, f"{qid} never left the queue; log tail:\n{server.log()[-3000:]}"


def message_id(data):
    m = re.search(rb"(?im)^Message-ID:\s*(<[^>]+>)", data)
    return m[1].decode() if m else None


# --------------------------------------------------------------------------------------------------------------------
# 1. One copy per host, one connection for many messages


def test_three_recipients_one_transaction_at_smtp_sink(lab):
    lab.dns()
    sink = lab.sink("127.0.0.2")
    sender = lab.sender()
    rcpts = ["one@example.test", "two@example.test", "three@example.test"]
    qid = submit(sender, rcpts, msg("three rcpts"))
    for r in rcpts:
        wait_status(sender, qid, r, "sent")
    wait_removed(sender, qid)
    (got,) = sink.wait_messages(1)
    assert sorted(a.split()[0] for a in got["rcpts"]) == sorted(f"<{r}>" for r in rcpts), got
    assert got["mail"].split()[0] == f"<{ALICE}>", got
    assert message_id(got["message"]) == "<three.rcpts@client.test>"
    assert b"Hello there." in got["message"]
    assert len(sink.messages()) == 1, "more than one transaction for one message and one host"
    # The sink has the message before the sender has journaled the 250 and logged it.
    sender.wait_log(rf"{qid}: sent to 127\.0\.0\.2:{lab.remote_port} \(sink-127\.0\.0\.2\): 250")


def test_ten_messages_one_connection(lab):
    lab.dns()
    fake = lab.fake("127.0.0.2")
    sender = lab.sender(remote_concurrency=1)
    conn = sender.session()
    ids = []
    for i in range(10):
        r = transaction(conn, ALICE, [f"user{i}@example.test"], msg(f"reuse {i}"))
        assert r.code == 250, r
        ids.append(r.queue_id)
    got = fake.wait_delivered(10)
    for qid in ids:
        wait_removed(sender, qid)
    assert sorted(message_id(t.data) for t in got) == sorted(f"<reuse.{i}@client.test>" for i in range(10))
    assert all(len(t.accepted) == 1 for t in got)
    assert len(fake.connections) == 1, (
        f"10 messages to one host with remote_concurrency = 1 used {len(fake.connections)} connections: "
        f"{[c['commands'][:2] for c in fake.connections]}")
    assert fake.max_active == 1


def test_a_kept_connection_is_reset_only_after_a_failed_transaction(lab):
    """After the 250 to the content the server expects MAIL again (RFC 5321 4.1.1.4): the next message follows at
    once. After a refused content RSET comes first (doc/relay.md, "Sending")."""
    lab.dns()

    def refuse_once(server, txn):
        return "451 4.3.0 Try again later" if txn.header("Subject") == "refused" else None

    fake = lab.fake("127.0.0.2", on_data_end=refuse_once)
    sender = lab.sender(remote_concurrency=1, retry_first="1h", retry_max="1h")
    conn = sender.session()
    for subject in ["clean one", "refused", "clean two", "clean three"]:
        assert transaction(conn, ALICE, ["user@example.test"], msg(subject)).code == 250
    fake.wait_delivered(3)
    assert wait_until(lambda: len(fake.transactions) == 4 and "RSET" in fake.commands(), 10), fake.commands()
    assert len(fake.connections) == 1, fake.connections
    commands = fake.commands()
    assert commands.count("RSET") == 1, commands
    refused = next(i for i, t in enumerate(fake.transactions) if t.header("Subject") == "refused")
    ends = [i for i, c in enumerate(commands) if c == "DATA"]
    assert commands[ends[refused] + 1] == "RSET", commands


def test_concurrency_limit_per_destination(lab):
    """Many messages at once never open more than remote_concurrency connections to one destination."""
    lab.dns()
    fake = lab.fake("127.0.0.2", data_delay=0.2)
    sender = lab.sender(remote_concurrency=2, delivery_workers=8)
    conn = sender.session()
    for i in range(12):
        assert transaction(conn, ALICE, [f"u{i}@example.test"], msg(f"limit {i}")).code == 250
    fake.wait_delivered(12)
    assert fake.max_active <= 2, f"{fake.max_active} connections at once to one destination, remote_concurrency = 2"


def test_a_slow_destination_does_not_delay_local_delivery_with_few_workers(lab):
    """A remote that accepts connections and never says a word holds only its own deliveries: with 2 delivery
    workers and remote_concurrency = 2 (both workers could wait for its greeting), local mail is delivered at once."""
    lab.dns()
    mute = lab.fake("127.0.0.4", greeting_delay=120)  # slow.test's MX
    sender = lab.sender(delivery_workers=2, remote_concurrency=2, remote_command_timeout="120s",
                        retry_first="1h", retry_max="1h")
    conn = sender.session()
    for i in range(4):
        assert transaction(conn, ALICE, [f"u{i}@slow.test"], msg(f"slow {i}")).code == 250
    assert wait_until(lambda: len(mute.connections) >= 1, 10), "the slow destination was never tried"
    assert transaction(conn, ALICE, [ALICE], msg("local while slow")).code == 250
    conn.expect("QUIT", 221)
    (got,) = wait_local(sender, "alice", 1, timeout=20)
    assert got["Message-ID"] == "<local.while.slow@client.test>"


def test_a_destination_found_down_defers_the_rest_of_its_job_at_once(lab):
    """A remote that takes connections and never greets: once one message of a job has waited out the greeting
    timeout, the job's other messages are deferred with it instead of each waiting the same again — which held back
    the results of all of them, so that a server restarted meanwhile had recorded nothing."""
    lab.dns()
    mute = lab.fake("127.0.0.4", greeting_delay=120)  # slow.test's MX
    sender = lab.sender(remote_concurrency=1, remote_command_timeout="2s", retry_first="1h", retry_max="1h")
    conn = sender.session()
    ids = [transaction(conn, ALICE, [f"u{i}@slow.test"], msg(f"down {i}")).queue_id for i in range(5)]
    conn.expect("QUIT", 221)
    for qid in ids:
        wait_status(sender, qid, f"u{ids.index(qid)}@slow.test", "deferred", timeout=20)
    assert "timed out (at greeting)" in sender.log()
    # The first message may go alone while the others gather: at most two jobs, one connection each.
    assert len(mute.connections) <= 2, f"{len(mute.connections)} connections for 5 messages to a destination that is down"


def test_slow_domains_of_one_message_are_tried_side_by_side(lab):
    """One message for two domains that never answer: each domain is its own job, so both are connected to at once
    rather than one after the other in one worker."""
    lab.dns()
    first = lab.fake("127.0.0.2", greeting_delay=120)  # example.test's MX
    second = lab.fake("127.0.0.4", greeting_delay=120)  # slow.test's MX
    sender = lab.sender(delivery_workers=4, remote_command_timeout="120s", retry_first="1h", retry_max="1h")
    submit(sender, ["one@example.test", "two@slow.test"], msg("two slow domains"))
    assert wait_until(lambda: first.connections and second.connections, 10), (
        f"connections: example.test {len(first.connections)}, slow.test {len(second.connections)}")


# --------------------------------------------------------------------------------------------------------------------
# 2. MX fallback


def test_primary_mx_refuses_secondary_gets_it(lab):
    lab.dns()
    # Nothing listens on 127.0.0.2 (mx1, preference 10); a Postel on 127.0.0.3 (mx2, preference 20) takes it.
    backup = lab.receiver("127.0.0.3")
    sender = lab.sender()
    qid = submit(sender, ["carol@example.test"], msg("fallback"))
    wait_status(sender, qid, "carol@example.test", "sent")
    (got,) = wait_local(backup, "carol", 1, address="carol@example.test")
    assert got["Message-ID"] == "<fallback@client.test>"
    assert re.search(rf"{qid}: sent to 127\.0\.0\.3:{lab.remote_port} ", sender.log()), sender.log()[-2000:]
    assert "deferred" not in "".join(statuses(sender.log(), qid)["carol@example.test"])


# --------------------------------------------------------------------------------------------------------------------
# 3. 451 twice, then accepted


def test_temporary_failure_retried_until_accepted(lab):
    lab.dns()
    tries = []

    def rcpt(server, txn, address):
        tries.append(address)
        if len(tries) <= 2:
            return "451 4.7.1 Greylisted by fake, come back later"
        return None

    fake = lab.fake("127.0.0.2", on_rcpt=rcpt)
    sender = lab.sender(retry_first="1s", retry_max="1s")
    qid = submit(sender, ["grey@example.test"], msg("greylisted"))
    wait_status(sender, qid, "grey@example.test", "deferred")
    # While it waits, the queue listing shows the deferred state and the remote's reply as the last error.
    listing = {"text": ""}

    def shows_deferred():
        run = postel(["queue", "list"], sender.config_path)
        assert run.returncode == 0, run.stderr
        listing["text"] = run.stdout.decode(errors="replace")
        return re.search(r"grey@example\.test: deferred until .*451 4\.7\.1 Greylisted by fake", listing["text"])

    assert wait_until(shows_deferred, 10, step=0.02), f"queue list never showed the deferral:\n{listing['text']}"
    assert qid in listing["text"]
    got = fake.wait_delivered(1)
    wait_status(sender, qid, "grey@example.test", "sent")
    wait_removed(sender, qid)
    assert len(tries) == 3, tries
    assert len(got) == 1 and message_id(got[0].data) == "<greylisted@client.test>"
    assert statuses(sender.log(), qid)["grey@example.test"] == ["deferred", "deferred", "sent"]
    assert sum(1 for t in fake.transactions if t.data is not None) == 1, fake.transactions


# --------------------------------------------------------------------------------------------------------------------
# 4. 550 to one recipient


def test_rcpt_550_bounces_that_recipient_only(lab):
    lab.dns()
    reply550 = "550 5.1.1 <bad@example.test>: Recipient address rejected: fake has no such user"
    fake = lab.fake("127.0.0.2", on_rcpt=lambda s, t, a: reply550 if a == "bad@example.test" else None)
    sender = lab.sender()
    rcpts = ["good1@example.test", "bad@example.test", "good2@example.test"]
    qid = submit(sender, rcpts, msg("one bad"))
    (txn,) = fake.wait_delivered(1)
    assert sorted(txn.accepted) == ["good1@example.test", "good2@example.test"]
    assert [a for a, _ in txn.rcpts] == rcpts, "all three recipients in one transaction"
    wait_status(sender, qid, "bad@example.test", "bounced")
    wait_removed(sender, qid)
    ((report, per_message, per_rcpt),) = dsns(sender, "alice", 1)
    assert report["From"] and "mailer-daemon" in report["From"].lower(), report["From"]
    assert len(per_rcpt) == 1, f"the DSN lists {per_rcpt}, expected only bad@example.test"
    (fields,) = per_rcpt
    assert fields["final-recipient"].lower().replace(" ", "") == "rfc822;bad@example.test", fields
    assert fields["action"] == "failed", fields
    assert re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", fields["status"]), fields
    assert fields["status"] == "5.1.1", fields
    assert fields["diagnostic-code"].startswith("smtp; 550"), fields
    assert reply550 in fields["diagnostic-code"], f"the DSN does not quote the remote's reply: {fields}"
    # The original message's headers come back with it.
    assert "<one.bad@client.test>" in report.as_string()
    # A second notice would have been queued with the first; a local message sent now arrives after it.
    submit(sender, [ALICE], msg("sentinel"))
    got = wait_local(sender, "alice", 2)
    assert [m["Message-ID"] for m in got][1:] == ["<sentinel@client.test>"], "more than one DSN"


# --------------------------------------------------------------------------------------------------------------------
# 5. Null MX and unknown domains


def test_null_mx_and_nxdomain_bounce_at_once(lab):
    lab.dns()
    fake = lab.fake("127.0.0.2")
    sender = lab.sender(retry_first="1h", retry_max="1h")
    q1 = submit(sender, ["nobody@nullmx.test"], msg("null mx"))
    wait_status(sender, q1, "nobody@nullmx.test", "bounced")
    q2 = submit(sender, ["nobody@no-such-domain.test"], msg("nxdomain"))
    wait_status(sender, q2, "nobody@no-such-domain.test", "bounced")
    wait_removed(sender, q1)
    wait_removed(sender, q2)
    got = dsns(sender, "alice", 2)
    by_rcpt = {}
    for report, _, per_rcpt in got:
        for fields in per_rcpt:
            by_rcpt[fields["final-recipient"].split(";")[-1].strip().lower()] = fields
    assert set(by_rcpt) == {"nobody@nullmx.test", "nobody@no-such-domain.test"}, by_rcpt
    assert by_rcpt["nobody@nullmx.test"]["status"] == "5.1.10", by_rcpt["nobody@nullmx.test"]
    assert by_rcpt["nobody@no-such-domain.test"]["status"] == "5.1.2", by_rcpt["nobody@no-such-domain.test"]
    assert all(f["action"] == "failed" for f in by_rcpt.values())
    assert fake.connections == [], "a connection to an MX host for a domain without one"


# --------------------------------------------------------------------------------------------------------------------
# 6. Queue lifetime


def test_message_older_than_queue_lifetime_bounces(lab):
    lab.dns()  # nothing listens on either MX host
    sender = lab.sender(queue_lifetime="2s", retry_first="1s", retry_max="1s")
    qid = submit(sender, ["late@example.test"], msg("too old"))
    wait_status(sender, qid, "late@example.test", "deferred")
    wait_status(sender, qid, "late@example.test", "bounced", timeout=15)
    wait_removed(sender, qid)
    ((report, _, per_rcpt),) = dsns(sender, "alice", 1)
    (fields,) = per_rcpt
    assert fields["final-recipient"].lower().endswith("late@example.test"), fields
    assert fields["action"] == "failed", fields
    assert re.fullmatch(r"[45]\.\d{1,3}\.\d{1,3}", fields["status"]), fields
    assert "<too.old@client.test>" in report.as_string()
    text = report.as_string().lower()
    assert "refused" in text or "could not be reached" in text or "no server" in text, \
        f"the DSN does not say why (connection refused):\n{report.as_string()[:3000]}"


# --------------------------------------------------------------------------------------------------------------------
# 7. Who may relay


def test_relay_denied_to_untrusted_allowed_to_trusted_and_sendmail(lab):
    lab.dns()
    receiver = lab.receiver("127.0.0.2", local_domains=["example.test", "backup.test"])
    sender = lab.sender(trusted_networks=["127.0.0.1/32"], relay_domains=["backup.test"])

    outsider = sender.connect(source="127.0.0.5")
    outsider.greet("outsider.test")
    outsider.expect("MAIL FROM:<someone@outside.test>", 250)
    r = outsider.cmd("RCPT TO:<victim@example.test>")
    assert r.code == 550 and r.enhanced == "5.7.1", r
    assert "relay" in r.text.lower(), r
    # A domain in relay_domains is accepted from anyone (backup MX), and passed on.
    outsider.expect("RCPT TO:<user@backup.test>", 250, "2.1.5")
    outsider.expect("DATA", 354)
    outsider.send(msg("backup mx") + b".\r\n")
    assert outsider.reply().code == 250
    outsider.expect("QUIT", 221)

    # From a trusted address the same recipient is fine.
    qid = submit(sender, ["victim@example.test"], msg("trusted"), source="127.0.0.1")

    # And from the local sendmail program.
    run = postel(["sendmail", "-f", ALICE, "viasendmail@example.test"], sender.config_path,
                     input=msg("via sendmail").replace(b"\r\n", b"\n"))
    assert run.returncode == 0, (run.returncode, run.stderr.decode(errors="replace"))

    assert wait_until(lambda: len(mbox_messages(receiver.mailboxes / "viasendmail")) == 1
                      and len(mbox_messages(receiver.mailboxes / "victim")) == 1
                      and len(mbox_messages(receiver.mailboxes / "user")) == 1, 20), \
        f"not all three arrived; receiver log:\n{receiver.log()[-3000:]}\nsender log:\n{sender.log()[-3000:]}"
    wait_removed(sender, qid)
    assert mbox_messages(receiver.mailboxes / "victim")[0]["Message-ID"] == "<trusted@client.test>"
    assert mbox_messages(receiver.mailboxes / "viasendmail")[0]["Message-ID"] == "<via.sendmail@client.test>"
    assert mbox_messages(receiver.mailboxes / "user")[0]["Message-ID"] == "<backup.mx@client.test>"


def test_untrusted_client_not_open_relay_variants(lab):
    """Address tricks from an untrusted client get 550 5.7.1 too (source routes, %-hack, a literal)."""
    lab.dns()
    sender = lab.sender(trusted_networks=["127.0.0.1/32"])
    c = sender.connect(source="127.0.0.5")
    c.greet("outsider.test")
    c.expect("MAIL FROM:<someone@outside.test>", 250)
    for rcpt in ["victim@example.test", "victim%example.test@localhost", "victim@[127.0.0.2]",
                 "@localhost:victim@example.test", "VICTIM@EXAMPLE.TEST"]:
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        assert r.code >= 500 and not (r.code == 250), f"RCPT TO:<{rcpt}> from an untrusted client -> {r}"
    # A local user is still fine.
    c.expect("RCPT TO:<alice@localhost>", 250)


# --------------------------------------------------------------------------------------------------------------------
# 8. Smarthost


def test_smarthost_takes_everything_without_dns(lab):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a UDP port that never answers
    dead.bind(("127.0.0.1", 0))
    try:
        sink = lab.sink("127.0.0.3")
        sender = lab.sender(smarthost=f"127.0.0.3:{lab.remote_port}", smarthost_tls="none",
                            nameservers=[f"127.0.0.1:{dead.getsockname()[1]}"])
        rcpts = ["a@example.test", "b@nowhere.test", "c@another.example"]
        qid = submit(sender, rcpts, msg("smarthost"))
        for r in rcpts:
            wait_status(sender, qid, r, "sent", timeout=15)
        got = sink.wait_messages(1)
        seen = sorted(a.split()[0] for m in got for a in m["rcpts"])
        assert seen == sorted(f"<{r}>" for r in rcpts), got
        assert all(message_id(m["message"]) == "<smarthost@client.test>" for m in got)
        dead.settimeout(0.01)
        try:
            stray = dead.recv(512)
        except OSError:
            stray = None
        assert stray is None, "the smarthost path asked DNS anyway"
    finally:
        dead.close()


# --------------------------------------------------------------------------------------------------------------------
# 9. ETRN and queue run


@pytest.mark.parametrize("how", ["etrn", "queue-run"])
def test_etrn_and_queue_run_deliver_deferred_mail_now(lab, how):
    lab.dns()
    sender = lab.sender(retry_first="1h", retry_max="1h")
    qid = submit(sender, ["waiting@example.test"], msg(f"etrn {how}"))
    wait_status(sender, qid, "waiting@example.test", "deferred")
    sink = lab.sink("127.0.0.2")
    # A message for another domain on the same host goes now; the deferred one must wait for ETRN.
    sentinel = submit(sender, ["first@implicit.test"], msg(f"sentinel {how}"))
    (got,) = sink.wait_messages(1, timeout=15)
    wait_removed(sender, sentinel)
    assert message_id(got["message"]) == f"<sentinel.{how}@client.test>", "delivered before ETRN with retry_first = 1h"
    if how == "etrn":
        c = sender.session()
        r = c.cmd("ETRN example.test")
        assert r.code == 253, r
        assert "1 pending" in r.text, r
        c.expect("QUIT", 221)
    else:
        run = postel(["queue", "run", "--domain", "example.test"], sender.config_path)
        assert run.returncode == 0, (run.stdout, run.stderr)
    got = sink.wait_messages(2, timeout=15)
    assert sorted(message_id(m["message"]) for m in got) == [f"<etrn.{how}@client.test>", f"<sentinel.{how}@client.test>"]
    wait_status(sender, qid, "waiting@example.test", "sent")
    wait_removed(sender, qid)


def test_etrn_other_forms(lab):
    lab.dns()
    sender = lab.sender(retry_first="1h", retry_max="1h")
    c = sender.session()
    assert c.cmd("ETRN #queue").code == 458
    assert c.cmd("ETRN @example.test").code == 251  # nothing waits
    r = c.cmd("ETRN")
    assert r.code == 501, r


def test_etrn_at_most_once_per_client_address_every_ten_seconds(lab):
    sender = lab.sender(trusted_networks=["127.0.0.1/32", "127.0.0.3/32"])
    first = sender.session()
    assert first.cmd("ETRN nothing.test").code == 251
    r = first.cmd("ETRN nothing.test")
    assert r.code == 458 and r.enhanced == "4.7.0" and "10 seconds" in r.text, r
    second = sender.session()  # another session from the same address
    r = second.cmd("ETRN other.test")
    assert r.code == 458 and "10 seconds" in r.text, r
    assert sender.session(source="127.0.0.3").cmd("ETRN nothing.test").code == 251  # another address


def test_etrn_refused_to_an_untrusted_client(lab):
    sender = lab.sender(trusted_networks=["127.0.0.1/32"])
    r = sender.session(source="127.0.0.4").cmd("ETRN example.test")
    assert r.code == 502 and r.enhanced == "5.7.0" and "trusted" in r.text, r


def test_etrn_over_a_non_ascii_domain_held_behind_a_down_smarthost_leaves_delivery_working(lab):
    # Nothing listens at the smarthost: the message to a UTF-8 domain waits. An ETRN whose node is a suffix
    # ending inside the domain's first character once killed the scheduler, and with it all delivery.
    sender = lab.sender(smarthost=f"127.0.0.2:{lab.remote_port}", retry_first="1h", retry_max="1h")
    conn = sender.session()
    conn.expect(f"MAIL FROM:<{ALICE}> SMTPUTF8", 250)
    conn.expect("RCPT TO:<user@b\u00fc.org>", 250)
    conn.expect("DATA", 354)
    conn.send(msg("held utf8") + b".\r\n")
    r = conn.reply()
    assert r.code == 250, r
    wait_status(sender, r.queue_id, "user@b\u00fc.org", "deferred")
    r = conn.cmd("ETRN @e.org")
    assert r.code == 251, r
    conn.expect("QUIT", 221)
    submit(sender, [ALICE], msg("after etrn"))
    (got,) = wait_local(sender, "alice", 1)
    assert got["Message-ID"] == "<after.etrn@client.test>"
    assert "panicked" not in sender.log()


# --------------------------------------------------------------------------------------------------------------------
# 10. Durability of remote delivery under SIGKILL


def test_sigkill_during_remote_delivery_loses_nothing(lab):
    """Relayed mail is at least once (doc/relay.md): each remote 250 is journaled as soon as it arrives, so a kill can
    leave unrecorded only the messages whose 250 is between the wire and the journal, one per connection. A copy
    sent again is a duplicate the kill explains only if that kill came after the copy's MAIL and before the next
    copy's; each kill explains at most `remote_concurrency` copies. Anything else is a real double delivery."""
    lab.dns()
    fake = lab.fake("127.0.0.2", data_delay=0.02)
    concurrency = 2
    sender = lab.sender(delivery_workers=4, remote_concurrency=concurrency, retry_first="1s", retry_max="1s")
    total = 100
    acked = []
    kill_times = []  # time.monotonic() once each killed server is gone

    def kill_and_restart():
        sender.kill()
        kill_times.append(time.monotonic())
        sender.restart()

    rnd = random.Random(7)
    i = 0
    tries = 0
    deadline = time.monotonic() + 60
    next_kill = time.monotonic() + rnd.uniform(0.3, 0.8)
    conn = None
    while i < total and time.monotonic() < deadline:
        if time.monotonic() >= next_kill and len(kill_times) < 6:
            kill_and_restart()
            conn = None
            next_kill = time.monotonic() + rnd.uniform(0.3, 0.8)
        try:
            if conn is None:
                conn = sender.session()
            # A new Message-ID for every try: a try cut off before its 250 may still have been queued and be
            # relayed; sent again under the same ID it would look like a duplicate of the relay.
            tries += 1
            mid = f"<dur.{i}.{tries}@client.test>"
            r = transaction(conn, ALICE, [f"d{i % 7}@example.test"], msg(f"dur {i}", mid=mid))
            if r.code == 250:
                acked.append(mid)
                i += 1
        except (OSError, EOFError, TimeoutError):
            conn = None
    # Keep killing while deliveries are still in flight.
    while len(kill_times) < 6 and time.monotonic() < deadline:
        time.sleep(rnd.uniform(0.1, 0.4))
        kill_and_restart()
    assert i == total, f"only {i} messages accepted in time"

    def arrived():
        return {message_id(t.data) for t in fake.delivered()}

    ok = wait_until(lambda: set(acked) <= arrived(), 30)
    missing = sorted(set(acked) - arrived())
    copies = {}
    for t in fake.delivered():
        copies.setdefault(message_id(t.data), []).append(t.started)
    explained = [0] * len(kill_times)
    unexplained = []
    for mid, starts in copies.items():
        starts.sort()
        for first, again in zip(starts, starts[1:]):
            # The server that sent `first` is the one the next kill ended; `again` must come from a later one.
            kill = next((k for k, at in enumerate(kill_times) if at > first), None)
            if kill is None or again < kill_times[kill]:
                unexplained.append(mid)
            else:
                explained[kill] += 1
    duplicates = sum(len(s) - 1 for s in copies.values())
    print(f"durability: {len(acked)} acknowledged, {len(kill_times)} kills, {len(missing)} missing, "
          f"{duplicates} duplicates, per kill {explained}")
    assert ok and not missing, f"acknowledged but never arrived: {missing}"
    assert not unexplained, f"sent again with no kill in between (its delivery was recorded): {unexplained}"
    assert max(explained, default=0) <= concurrency, (
        f"a kill was followed by more re-sent messages than there are connections to the remote: {explained}")


# --------------------------------------------------------------------------------------------------------------------
# 11. What the receiver cannot take: 8-bit to a 7-bit server, too big for its SIZE


def test_8bit_to_server_without_8bitmime_bounces(lab):
    lab.dns()
    fake = lab.fake("127.0.0.2", extensions=("PIPELINING", "SIZE 10240000", "ENHANCEDSTATUSCODES"))
    sender = lab.sender()
    conn = sender.session()
    conn.expect(f"MAIL FROM:<{ALICE}> BODY=8BITMIME", 250)
    conn.expect("RCPT TO:<seven@example.test>", 250)
    conn.expect("DATA", 354)
    conn.send(msg("eight bit", body="Grüße aus Köln.\r\n".encode()) + b".\r\n")
    r = conn.reply()
    assert r.code == 250, r
    qid = r.queue_id
    wait_status(sender, qid, "seven@example.test", "bounced")
    ((report, _, per_rcpt),) = dsns(sender, "alice", 1)
    (fields,) = per_rcpt
    assert fields["status"].startswith("5."), fields
    assert "8BITMIME" in fields.get("diagnostic-code", "") or "8bit" in fields.get("diagnostic-code", "").lower(), \
        fields
    assert not any(t.data is not None for t in fake.transactions), "the 8-bit content went to a 7-bit server"


def test_message_over_remote_size_bounces_unsent(lab):
    lab.dns()
    fake = lab.fake("127.0.0.2", extensions=("PIPELINING", "SIZE 1000", "8BITMIME", "ENHANCEDSTATUSCODES"))
    sender = lab.sender()
    big = msg("too big", body=b"x" * 70 + b"\r\n" * 1 + (b"y" * 70 + b"\r\n") * 68)
    assert len(big) > 5000
    qid = submit(sender, ["small@example.test"], big)
    wait_status(sender, qid, "small@example.test", "bounced")
    ((report, _, per_rcpt),) = dsns(sender, "alice", 1)
    (fields,) = per_rcpt
    assert fields["status"].startswith("5."), fields
    assert re.search(r"(?i)size|too big|too large|exceeds|accepts at most", fields.get("diagnostic-code", "")), fields
    assert not any(t.data is not None for t in fake.transactions), "the message was sent though it is too big"
    assert not any(c.upper().startswith("DATA") for c in fake.commands()), fake.commands()


# --------------------------------------------------------------------------------------------------------------------
# The at-least-once window is only between the remote's 250 and the record of it


@pytest.mark.parametrize("slow", ["rset", "other-domain"])
def test_delivery_recorded_as_soon_as_remote_accepts(lab, slow):
    """doc/relay.md "At least once": a recipient's delivery is recorded as soon as the other server has accepted the
    message, so a crash afterwards does not send it again. Here something slow follows the 250: the remote takes 8 s
    to answer the RSET after the transaction, or the same message's other domain takes 8 s to greet."""
    lab.dns()
    fast = lab.fake("127.0.0.2", rset_delay=8 if slow == "rset" else 0)
    if slow == "other-domain":
        lab.fake("127.0.0.4", greeting_delay=8)
    sender = lab.sender(retry_first="1h", retry_max="1h")
    rcpts = ["one@example.test"] + (["two@slow.test"] if slow == "other-domain" else [])
    qid = submit(sender, rcpts, msg(f"record {slow}"))
    fast.wait_delivered(1)
    listing = {"text": ""}

    def recorded():
        run = postel(["queue", "list"], sender.config_path)
        listing["text"] = run.stdout.decode(errors="replace")
        return "one@example.test: delivered" in listing["text"] or qid not in listing["text"]

    on_time = wait_until(recorded, 3, step=0.1)
    # What a late record means: SIGKILL now (the remote has had the message for 3 s), restart, and it goes again.
    sender.kill()
    sender.restart()
    wait_until(lambda: fast.count_delivered() >= 2, 6)
    copies = fast.count_delivered()
    assert on_time and copies == 1, (
        f"3 s after {fast.ip} answered 250 to the content (slow {slow}), the spool still did not record "
        f"one@example.test as delivered; after kill -9 and restart it received {copies} copies. queue list:\n"
        f"{listing['text']}")


# --------------------------------------------------------------------------------------------------------------------
# More of "Finding the destination" and "When it fails"


def test_implicit_mx(lab):
    """No MX, an A record: the domain itself is the destination. (Address literals cannot be tried here: a loopback
    literal such as [127.0.0.2] names this host, and nothing may leave 127.0.0.0/8.)"""
    lab.dns()
    sink = lab.sink("127.0.0.2")
    sender = lab.sender()
    qid = submit(sender, ["a@implicit.test"], msg("implicit mx"))
    (got,) = sink.wait_messages(1)
    assert message_id(got["message"]) == "<implicit.mx@client.test>"
    assert [a.split()[0] for a in got["rcpts"]] == ["<a@implicit.test>"], got
    wait_removed(sender, qid)


def test_mx_pointing_to_myself_bounces_as_loop(lab):
    lab.dns()
    fake = lab.fake("127.0.0.3")  # mx2, preference 20, for loop2.test: worse than this host's 10
    sender = lab.sender()  # hostname postel.test, the MX of loop.test and the best MX of loop2.test
    q1 = submit(sender, ["x@loop.test"], msg("loop one"))
    q2 = submit(sender, ["y@loop2.test"], msg("loop two"))
    wait_status(sender, q1, "x@loop.test", "bounced")
    wait_status(sender, q2, "y@loop2.test", "bounced")
    statuses_seen = {}
    for _, _, per_rcpt in dsns(sender, "alice", 2):
        for f in per_rcpt:
            statuses_seen[f["final-recipient"].split(";")[-1].strip()] = f["status"]
    assert statuses_seen == {"x@loop.test": "5.4.6", "y@loop2.test": "5.4.6"}, statuses_seen
    assert fake.connections == [], "a worse MX than this host was used"


def test_dns_answers_are_cached_for_their_ttl(lab):
    """A second message to a domain asks the DNS nothing while the answers hold, missing domains included (a
    negative answer holds for its SOA's MINIMUM, RFC 2308)."""
    dns = lab.dns(ttl=300)
    sink = lab.sink("127.0.0.2")
    sender = lab.sender(retry_first="1h", retry_max="1h")
    first = submit(sender, ["one@example.test"], msg("first of two"))
    gone = submit(sender, ["nobody@no-such-domain.test"], msg("nowhere one"))
    wait_removed(sender, first)
    wait_status(sender, gone, "nobody@no-such-domain.test", "bounced")
    asked = dns.queries()
    assert {"MX example.test", "A mx1.example.test", "MX no-such-domain.test"} <= set(asked), asked
    second = submit(sender, ["two@example.test"], msg("second of two"))
    gone_again = submit(sender, ["nobody@no-such-domain.test"], msg("nowhere two"))
    wait_removed(sender, second)
    wait_status(sender, gone_again, "nobody@no-such-domain.test", "bounced")
    assert sorted(message_id(m["message"]) for m in sink.wait_messages(2)) == [
        "<first.of.two@client.test>", "<second.of.two@client.test>"]
    assert dns.queries() == asked, f"asked again: {dns.queries()[len(asked):]}"
    statuses_seen = [f["status"] for _, _, per_rcpt in dsns(sender, "alice", 2) for f in per_rcpt]
    assert statuses_seen == ["5.1.2", "5.1.2"], statuses_seen


def test_dns_failure_is_temporary(lab):
    dns = lab.servfail_dns()
    sender = lab.sender(nameservers=[dns.address], retry_first="1s", retry_max="1s")
    qid = submit(sender, ["x@example.test"], msg("servfail"))
    wait_status(sender, qid, "x@example.test", "deferred", count=2, timeout=30)
    log = sender.log()
    assert re.search(rf"{qid}: to=<x@example\.test>.*status=deferred \(4\.4\.3 ", log), log[-2000:]
    assert "bounced" not in statuses(log, qid)["x@example.test"]
    assert dns.queries >= 2


def test_4xx_greeting_tries_next_mx_and_helo_fallback(lab):
    lab.dns()
    busy = lab.fake("127.0.0.2", greeting="421 4.3.2 mx1 busy, try another")
    old = lab.fake("127.0.0.3", ehlo_reply="502 5.5.2 EHLO? what is that", extensions=())
    sender = lab.sender()
    qid = submit(sender, ["z@example.test"], msg("next mx"))
    (txn,) = old.wait_delivered(1)
    assert message_id(txn.data) == "<next.mx@client.test>"
    assert any(c.upper().startswith("HELO ") for c in old.commands()), old.commands()
    assert len(busy.connections) >= 1
    wait_removed(sender, qid)


@pytest.mark.parametrize("step", ["MAIL", "end of data"])
def test_5xx_to_mail_or_content_bounces_every_recipient(lab, step):
    lab.dns()
    reply = "554 5.7.1 fake says no to this message"
    if step == "MAIL":
        lab.fake("127.0.0.2", on_mail=lambda s, t: reply)
    else:
        lab.fake("127.0.0.2", on_data_end=lambda s, t: reply)
    sender = lab.sender()
    rcpts = ["p@example.test", "q@example.test"]
    qid = submit(sender, rcpts, msg("all bounce"))
    for r in rcpts:
        wait_status(sender, qid, r, "bounced")
    ((_, _, per_rcpt),) = dsns(sender, "alice", 1)
    assert sorted(f["final-recipient"].split(";")[-1].strip() for f in per_rcpt) == rcpts
    for f in per_rcpt:
        assert f["status"] == "5.7.1", f
        assert reply in f["diagnostic-code"], f


def test_content_is_dot_stuffed_and_arrives_unchanged(lab):
    lab.dns()
    receiver = lab.receiver("127.0.0.2")
    sender = lab.sender()
    body = b".leading dot\r\n..two dots\r\n.\r\nmiddle\r\n. space\r\nFrom line\r\n" + b"z" * 990 + b"\r\nend\r\n"
    sent = msg("dots", body=body)
    conn = sender.session()
    wire = re.sub(rb"(?m)^\.", b"..", sent)
    assert transaction(conn, ALICE, ["d@example.test"], wire).code == 250
    wait_local(receiver, "d", 1, address="d@example.test")
    ((_, stored),) = messages(receiver.mailboxes / "d")
    # Below the trace headers, the message is byte for byte what was sent (as an mbox stores it: LF, >From).
    assert stored.endswith(as_delivered(sent)), stored[-400:]


def test_relay_adds_received_header(lab):
    """RFC 5321 4.4: a server that receives a message for delivery or relaying MUST insert a Received line at the top
    of the content -- also when it passes the message on (the next hops count them to detect loops)."""
    lab.dns()
    receiver = lab.receiver("127.0.0.2")
    sender = lab.sender()
    sent = msg("trace")
    submit(sender, ["t@example.test"], sent)
    wait_local(receiver, "t", 1, address="t@example.test")
    ((_, stored),) = messages(receiver.mailboxes / "t")
    assert stored.endswith(as_delivered(sent)), stored[-400:]
    # The receiver's own trace headers come first, the relaying host's Received line last, right above the message.
    relayed = [value for name, value in trace_headers(stored) if name == "received"]
    assert len(relayed) == 2 and "by postel.test" in relayed[1], (
        f"the relayed message has no Received header of the relaying host; it starts: {stored[:400]!r}")


def test_bounce_of_a_bounce_goes_to_postmaster_not_back_out(lab):
    """A message with the null sender that fails remotely: the notice goes to postmaster (root here), never to <>."""
    lab.dns()
    fake = lab.fake("127.0.0.2", on_rcpt=lambda s, t, a: "550 5.1.1 no such user (fake)")
    sender = lab.sender()
    qid = submit(sender, ["gone@example.test"], msg("null sender"), sender="")
    wait_status(sender, qid, "gone@example.test", "bounced")
    ((report, _, per_rcpt),) = dsns(sender, "root", 1)
    assert per_rcpt[0]["final-recipient"].endswith("gone@example.test")
    # Anything sent out again would have been queued before this sentinel, which the fake refuses too.
    submit(sender, ["sentinel@example.test"], msg("sentinel"))
    assert wait_until(lambda: len(fake.transactions) >= 2), fake.transactions
    wait_removed(sender, qid)
    assert [t.sender for t in fake.transactions] == ["", ALICE], f"something was sent out again: {fake.transactions}"


def test_remote_timeouts(lab):
    """A greeting that never comes (remote_command_timeout) moves on to the next MX; a reply to the content that
    never comes (remote_data_timeout) defers the message."""
    lab.dns()
    mute = lab.fake("127.0.0.2", greeting_delay=8)
    slow = lab.fake("127.0.0.3", data_delay=8)
    sender = lab.sender(remote_command_timeout="1s", remote_data_timeout="2s", retry_first="1h", retry_max="1h")
    qid = submit(sender, ["late@example.test"], msg("timeouts"))
    wait_status(sender, qid, "late@example.test", "deferred", timeout=15)
    line = re.search(rf"^.*{qid}: to=<late@example\.test>.*status=deferred.*$", sender.log(), re.M)[0]
    assert "4." in line and re.search(r"(?i)time|timed out", line), line
    assert len(mute.connections) == 1 and len(slow.connections) == 1, (mute.connections, slow.connections)
    assert slow.transactions and slow.transactions[0].data is not None, "mx2 was never given the content"


def test_smtputf8_to_server_without_it_bounces(lab):
    lab.dns()
    fake = lab.fake("127.0.0.2")  # PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES -- no SMTPUTF8
    sender = lab.sender()
    conn = sender.session()
    conn.expect(f"MAIL FROM:<{ALICE}> SMTPUTF8", 250)
    conn.expect("RCPT TO:<jürgen@example.test>", 250)
    conn.expect("DATA", 354)
    conn.send(msg("utf8", body="Grüße\r\n".encode()) + b".\r\n")
    r = conn.reply()
    assert r.code == 250, r
    wait_status(sender, r.queue_id, "jürgen@example.test", "bounced")
    ((_, _, per_rcpt),) = dsns(sender, "alice", 1)
    assert per_rcpt[0]["status"].startswith("5."), per_rcpt
    assert "SMTPUTF8" in per_rcpt[0].get("diagnostic-code", ""), per_rcpt
    assert not any(t.data is not None for t in fake.transactions), fake.transactions
