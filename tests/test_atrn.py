"""On-Demand Mail Relay (RFC 2645) between two postels on loopback: the provider (`postel serve` with
odmr_listen and odmr_domains) holds the mail of a customer's domain until the customer (`postel atrn`)
logs in over verified TLS and says ATRN; then the roles turn and the mail lands in the customer's mailbox."""

import re
import smtplib
import ssl
import subprocess

import pytest

from helpers import POSTEL_BIN, free_port, message, postel, transaction, wait_until, write_config
from mboxutil import mbox_messages
from tlsutil import CA, libxcrypt_hash

PASSWORD = "odmr secret"


@pytest.fixture
def provider(make_postel, tmp_path):
    """A provider holding example.org's mail for alice; mallory may log in but owns no domain."""
    return start_provider(make_postel, tmp_path, {"example.org": "alice"})


def start_provider(make_postel, tmp_path, odmr_domains):
    ca = CA(tmp_path / "pki")
    cert, key = ca.issue("127.0.0.1")
    users = tmp_path / "users"
    users.write_text(f"alice:{libxcrypt_hash(PASSWORD, 'yescrypt')}\n"
                     f"mallory:{libxcrypt_hash(PASSWORD, 'sha512')}\n")
    odmr_port = free_port()
    server = make_postel(
        tls_certificate=str(cert), tls_key=str(key), auth_users=str(users), trusted_networks=[],
        odmr_listen=[f"127.0.0.1:{odmr_port}"], odmr_domains=odmr_domains,
        delivery_workers=2, retry_first="1s", retry_max="2s",
    )
    server.odmr_port = odmr_port
    server.ca = ca
    return server


def customer(tmp_path, provider, user="alice", name="customer"):
    """The customer's configuration: example.org and other.test are its own, bob lives here."""
    folder = tmp_path / name
    folder.mkdir()
    secret = folder / "provider.secret"
    secret.write_text(f"{user}:{PASSWORD}\n")
    secret.chmod(0o600)
    path = write_config(folder, hostname="customer.test",
                        local_domains=["example.org", "example.net", "other.test"], local_users=["bob", "carol"], delivery_workers=1, smarthost_credentials=str(secret),
                        tls_ca_file=str(provider.ca.cert))
    return path, folder / "mailboxes"


def atrn(config, provider, domains="example.org"):
    return postel(["atrn", "--server", f"127.0.0.1:{provider.odmr_port}", "--domain", domains],
                  config=config, timeout=60)


def text(run):
    out = run.stdout if isinstance(run.stdout, str) else run.stdout.decode()
    err = run.stderr if isinstance(run.stderr, str) else run.stderr.decode()
    return out + err


def send_to_example_org(provider, subject, recipients=("bob@example.org",)):
    """A message for bob@example.org from an outsider: accepted, as for relay_domains."""
    conn = provider.session()
    assert transaction(conn, "carol@outside.test", list(recipients), message(subject)).code == 250
    conn.close()


def held(provider, count=1):
    """Waits until the provider has deferred `count` attempts as held for alice."""
    assert wait_until(lambda: len(re.findall(r"status=deferred .*held until alice asks for it with ATRN",
                                             provider.log())) >= count, 20), provider.log()[-3000:]


def test_mail_waits_for_atrn_then_lands_in_the_customers_mailbox_once(provider, tmp_path):
    config, mailboxes = customer(tmp_path, provider)
    send_to_example_org(provider, "held for odmr")
    held(provider)
    listing = text(postel(["queue", "list"], config=provider.config_path))
    assert "held until alice asks for it with ATRN" in listing, listing
    assert not (mailboxes / "bob").exists(), "nothing is sent before ATRN"

    run = atrn(config, provider)
    assert run.returncode == 0, text(run)
    messages = mbox_messages(mailboxes / "bob")
    assert [m["Subject"] for m in messages] == ["held for odmr"]
    received = messages[0].get_all("Received")
    assert any("with ESMTPS" in r and "customer.test" in r for r in received), received
    provider.wait_log(r"[0-9A-F]{20}: removed", timeout=20)
    provider.wait_log(r"ATRN example\.org: 1 messages tried over the turned connection", timeout=20)

    again = atrn(config, provider)
    assert again.returncode == 0, text(again)
    assert "no mail waiting for example.org" in text(again)
    assert len(mbox_messages(mailboxes / "bob")) == 1, "delivered exactly once"


def test_a_user_not_mapped_to_the_domain_is_refused(provider, tmp_path):
    send_to_example_org(provider, "not for mallory")
    held(provider)
    config, mailboxes = customer(tmp_path, provider, user="mallory")
    run = atrn(config, provider)
    assert run.returncode == 75, text(run)
    assert "530 5.7.1 Error: mallory may not take the mail of example.org" in text(run), text(run)
    alice, _ = customer(tmp_path, provider, name="alice-other")
    run = atrn(alice, provider, "example.org,other.test")
    assert run.returncode == 75, text(run)
    assert "530 5.7.1 Error: alice may not take the mail of other.test" in text(run), text(run)
    assert not (mailboxes / "bob").exists()


def test_a_second_atrn_for_the_domain_while_one_runs_is_refused(provider, tmp_path):
    config, mailboxes = customer(tmp_path, provider)
    send_to_example_org(provider, "one at a time")
    held(provider)
    context = ssl.create_default_context(cafile=str(provider.ca.cert))
    first = smtplib.SMTP("127.0.0.1", provider.odmr_port, timeout=20)
    try:
        first.ehlo("first.test")
        first.starttls(context=context)
        first.ehlo("first.test")
        assert first.has_extn("atrn"), first.esmtp_features
        first.login("alice", PASSWORD)
        code, reply = first.docmd("ATRN", "example.org")
        assert code == 250, reply
        # The provider now waits for this side's greeting, with example.org's mail set aside.
        second = atrn(config, provider)
        assert second.returncode == 75, text(second)
        assert re.search(r"450 4\.3\.0 ATRN request refused", text(second)), text(second)
    finally:
        first.close()  # the socket and the file smtplib reads replies from
    # The turn that never happened gives the mail back; the next ATRN gets it.
    provider.wait_log(r"ATRN example\.org: the turned connection to .* failed", timeout=20)
    for _ in range(20):
        if (mailboxes / "bob").exists():
            break
        assert atrn(config, provider).returncode == 0
        wait_until(lambda: (mailboxes / "bob").exists(), 1)
    assert [m["Subject"] for m in mbox_messages(mailboxes / "bob")] == ["one at a time"]


def test_atrn_is_answered_only_on_the_odmr_port(provider):
    conn = provider.session()
    conn.expect("ATRN example.org", 502, "5.5.1")
    conn.close()
    with smtplib.SMTP("127.0.0.1", provider.odmr_port, timeout=20) as smtp:
        smtp.ehlo("customer.test")
        code, reply = smtp.docmd("ATRN", "example.org")
        assert code == 530 and b"authentication required" in reply, reply


def test_one_atrn_takes_the_mail_of_several_domains_over_one_connection(make_postel, tmp_path):
    provider = start_provider(make_postel, tmp_path, {"example.org": "alice", "example.net": "alice"})
    config, mailboxes = customer(tmp_path, provider)
    send_to_example_org(provider, "two domains", ["bob@example.org", "carol@example.net"])
    send_to_example_org(provider, "one domain", ["carol@example.net"])
    held(provider, 2)
    run = atrn(config, provider, "example.org,example.net")
    assert run.returncode == 0, text(run)
    assert [m["Subject"] for m in mbox_messages(mailboxes / "bob")] == ["two domains"]
    assert sorted(m["Subject"] for m in mbox_messages(mailboxes / "carol")) == ["one domain", "two domains"]
    provider.wait_log(r"ATRN example\.org,example\.net: 2 messages tried over the turned connection", timeout=20)
    assert text(postel(["queue", "list"], config=provider.config_path)).strip().endswith("Mail queue is empty")


def test_check_names_a_held_domain_whose_user_cannot_log_in(provider, tmp_path):
    config = provider.config_path.read_text().replace('"example.org" = "alice"', '"example.org" = "nobody-here"')
    path = tmp_path / "unknown-user.toml"
    path.write_text(config)
    run = postel(["check"], config=path)
    assert run.returncode == 78, text(run)
    assert "odmr_domains: example.org is held for nobody-here, who is not in" in text(run), text(run)


def test_the_customers_daemon_delivers_what_postel_atrn_took_in(provider, make_postel, tmp_path):
    """With a daemon on the customer's spool, `postel atrn` queues what it takes and hands it to that daemon."""
    secret = tmp_path / "daemon.secret"
    secret.write_text(f"alice:{PASSWORD}\n")
    secret.chmod(0o600)
    daemon = make_postel(hostname="customer.test", local_domains=["example.org"], local_users=["bob"],
                         delivery_workers=1, smarthost_credentials=str(secret), tls_ca_file=str(provider.ca.cert))
    send_to_example_org(provider, "for the daemon")
    held(provider)
    run = atrn(daemon.config_path, provider)
    assert run.returncode == 0, text(run)
    assert wait_until(lambda: len(mbox_messages(daemon.mailboxes / "bob")) == 1, 20), daemon.log()[-3000:]
    assert [m["Subject"] for m in mbox_messages(daemon.mailboxes / "bob")] == ["for the daemon"]
    daemon.wait_log(r"[0-9A-F]{20}: removed", timeout=20)
