"""STARTTLS, implicit TLS and AUTH with real clients (swaks, smtplib, openssl s_client, Python's ssl
on raw sockets), the failures a worker must survive, and relaying over TLS between two postels."""

import re
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from helpers import SmtpConn, free_port, message, postel, transaction, wait_until
from mboxutil import mbox_messages
from relayutil import lab  # noqa: F401 (a fixture)
from tlsutil import CA, libxcrypt_hash

PASSWORD = "correct horse"


@pytest.fixture
def pki(tmp_path):
    """A private CA and a certificate it signed for postel.test and 127.0.0.1."""
    ca = CA(tmp_path / "pki")
    cert, key = ca.issue("postel.test")
    return ca, cert, key


@pytest.fixture
def tls_postel(make_postel, pki, tmp_path):
    """A postel with TLS, users alice and bob, the submission ports, and no trusted network (so relaying
    depends on AUTH alone)."""
    ca, cert, key = pki
    users = tmp_path / "users"
    users.write_text(f"alice:{libxcrypt_hash(PASSWORD, 'yescrypt')}\nbob:{libxcrypt_hash(PASSWORD, 'bcrypt')}\n")
    server = make_postel(
        tls_certificate=str(cert), tls_key=str(key), auth_users=str(users),
        submission_listen=[f"127.0.0.1:{free_port()}"], submissions_listen=[f"127.0.0.1:{free_port()}"],
        trusted_networks=[], local_domains=["localhost", "postel.test"],
    )
    config = server.config_path.read_text()
    server.submission = int(re.search(r'submission_listen = \["127.0.0.1:(\d+)"', config)[1])
    server.submissions = int(re.search(r'submissions_listen = \["127.0.0.1:(\d+)"', config)[1])
    server.ca = ca
    return server


def client_context(ca):
    context = ssl.create_default_context(cafile=str(ca.cert))
    context.check_hostname = False  # the certificate names postel.test; the tests connect to 127.0.0.1
    return context


def spooled(server, queue_id):
    envelope, _ = server.record(queue_id)
    return envelope


def queue_list(server):
    run = postel(["queue", "list"], config=server.config_path)
    return run.stdout if isinstance(run.stdout, str) else run.stdout.decode()


def swaks(*args):
    run = subprocess.run(["swaks", "--server", "127.0.0.1", "--timeout", "20", *args],
                         capture_output=True, text=True, timeout=60)
    return run.returncode, run.stdout + run.stderr


def test_smtplib_starttls_login_and_relay_after_auth(tls_postel):
    with smtplib.SMTP("127.0.0.1", tls_postel.port, timeout=20) as smtp:
        smtp.ehlo("client.test")
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
        code, _ = smtp.docmd("MAIL FROM:<carol@example.org>")
        assert code == 250
        code, text = smtp.docmd("RCPT TO:<someone@remote.test>")
        assert code == 550 and b"5.7.1" in text, "an unauthenticated outsider may not relay"
        smtp.rset()
        smtp.starttls(context=client_context(tls_postel.ca))
        smtp.ehlo("client.test")
        assert not smtp.has_extn("starttls")
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        smtp.login("alice", PASSWORD)
        refused = smtp.sendmail("alice@postel.test", ["someone@remote.test", "bob@localhost"], message("relayed"))
        assert refused == {}
    (queue_id,) = tls_postel.queued_ids()
    envelope = spooled(tls_postel, queue_id)
    assert envelope["protocol"] == "ESMTPSA"
    assert re.fullmatch(r"TLSv1\.[23] with cipher \S+", envelope["tls"]), envelope
    assert "auth" not in envelope, "received_auth_user is off by default"


def test_swaks_tls_auth_plain_and_login(tls_postel):
    for mechanism in ["PLAIN", "LOGIN"]:
        status, output = swaks("--port", str(tls_postel.port), "--tls", "--auth", mechanism,
                               "--auth-user", "bob", "--auth-password", PASSWORD,
                               "--from", "bob@postel.test", "--to", "someone@remote.test")
        assert status == 0, output
        assert "235 2.7.0" in output and "queued as" in output, output
    status, output = swaks("--port", str(tls_postel.submissions), "--tls-on-connect", "--auth", "PLAIN",
                           "--auth-user", "alice", "--auth-password", PASSWORD,
                           "--from", "alice@postel.test", "--to", "bob@localhost")
    assert status == 0, output
    assert "TLS started" in output and "queued as" in output, output
    protocols = [spooled(tls_postel, q)["protocol"] for q in tls_postel.queued_ids()]
    assert protocols == ["ESMTPSA"] * 3


def test_openssl_s_client_verifies_the_certificate(tls_postel):
    run = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{tls_postel.port}",
         "-CAfile", str(tls_postel.ca.cert), "-verify_hostname", "postel.test", "-quiet", "-ign_eof"],
        input="EHLO client.test\r\nQUIT\r\n", capture_output=True, text=True, timeout=30)
    assert "250 AUTH PLAIN LOGIN" in run.stdout, run.stdout + run.stderr
    assert "221 2.0.0" in run.stdout
    assert "verify return:1" in run.stderr, run.stderr


def test_commands_sent_with_starttls_are_not_run_inside_tls(tls_postel):
    """CVE-2011-0411: a command pipelined behind STARTTLS, before the handshake, must be thrown away."""
    sock = socket.create_connection(("127.0.0.1", tls_postel.port), timeout=10)
    try:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(b"STARTTLS\r\nEHLO injected.test\r\nMAIL FROM:<evil@example.org>\r\n")
        assert reader.readline().startswith(b"220 ")
        tls = client_context(tls_postel.ca).wrap_socket(sock, server_hostname="postel.test")
        tls.sendall(b"NOOP\r\n")
        first = tls.recv(4096)
        assert first == b"250 2.0.0 Ok\r\n", f"the server answered an injected command first: {first!r}"
        tls.sendall(b"MAIL FROM:<carol@example.org>\r\n")
        assert tls.recv(4096).startswith(b"503 5.5.1"), "EHLO is needed again after TLS"
        tls.close()
    finally:
        sock.close()


def test_auth_refusals_before_tls_wrong_password_and_submission_without_auth(tls_postel):
    conn = tls_postel.session()
    r = conn.cmd("AUTH PLAIN AGFsaWNlAHg=")
    assert (r.code, r.enhanced) == (538, "5.7.11"), r
    conn.expect("QUIT", 221)

    with smtplib.SMTP("127.0.0.1", tls_postel.submission, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.starttls(context=client_context(tls_postel.ca))
        smtp.ehlo("client.test")
        code, text = smtp.docmd("MAIL FROM:<alice@postel.test>")
        assert code == 530 and text.startswith(b"5.7.0"), (code, text)
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            smtp.login("alice", "wrong")
        assert failed.value.smtp_code == 535
        assert time.monotonic() - started >= 0.9, "a wrong password is answered after a delay"
        smtp.login("alice", PASSWORD)
        code, text = smtp.docmd("MAIL FROM:<bob@postel.test>")
        assert code == 550 and b"5.7.1" in text, "alice may not send as bob"
    tls_postel.wait_log(r"authentication failed: user=alice, client=127\.0\.0\.1:\d+")


def test_a_worker_survives_every_tls_failure(make_postel, pki):
    ca, cert, key = pki
    server = make_postel(tls_certificate=str(cert), tls_key=str(key), workers=1,
                         submissions_listen=[f"127.0.0.1:{free_port()}"])
    submissions = int(re.search(r'submissions_listen = \["127.0.0.1:(\d+)"', server.config_path.read_text())[1])

    def after_starttls():
        conn = server.session()
        conn.expect("STARTTLS", 220)
        return conn

    garbage = after_starttls()
    garbage.send(b"this is no ClientHello\r\n" * 4)
    assert garbage.closed()
    # Half a ClientHello, then the client goes away.
    hello = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(*hello, server_hostname="postel.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    partial = after_starttls()
    partial.send(hello[1].read()[:40])
    partial.close()
    # A whole session over TLS that ends without close_notify.
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    plain = SmtpConn(raw)  # reads whole replies, however the bytes arrive, and nothing past them
    plain.greet()
    plain.expect("STARTTLS", 220)
    abrupt = client_context(ca).wrap_socket(raw, server_hostname="postel.test")
    abrupt.sendall(b"EHLO client.test\r\n")
    abrupt.recv(4096)
    abrupt.shutdown(socket.SHUT_RDWR)  # the socket's shutdown: no TLS close_notify
    abrupt.close()
    # Plaintext SMTP on the implicit-TLS port.
    plain = socket.create_connection(("127.0.0.1", submissions), timeout=10)
    plain.sendall(b"EHLO client.test\r\n")
    plain.settimeout(10)
    answer = plain.recv(1024)
    assert not answer.startswith(b"220"), "no plaintext greeting on the implicit-TLS port"
    plain.close()
    server.wait_log(r"TLS handshake (with \S+ )?failed")
    # The one worker is still there.
    conn = server.session()
    conn.expect("NOOP", 250)
    conn.expect("QUIT", 221)
    assert "panicked" not in server.log()


# --------------------------------------------------------------------------------------------------------------------
# Relaying over TLS, between two postels


def test_relay_to_an_mx_with_starttls_arrives_as_esmtps(lab, pki):
    ca, cert, key = pki
    lab.dns()
    receiver = lab.receiver("127.0.0.2", tls_certificate=str(cert), tls_key=str(key))
    sender = lab.sender(trusted_networks=["127.0.0.1/32"])
    done = transaction(sender.session(), "alice@postel.test", ["carol@example.test"], message("over tls"))
    assert done.code == 250, done
    assert wait_until(lambda: len(mbox_messages(receiver.mailboxes / "carol")) == 1, 20), sender.log()[-3000:]
    (received,) = [h for h in mbox_messages(receiver.mailboxes / "carol")[0].get_all("Received")
                   if "mx-127.0.0.2" in h]
    assert re.search(r"\(using TLSv1\.[23] with cipher \S+\)", received), received
    assert " with ESMTPS id " in received, received
    # The receiver may have delivered before the sender has journaled its 250 and logged it.
    sender.wait_log(r"sent to 127\.0\.0\.2:\d+ \(\S+\) over TLSv1\.[23]")


def test_relay_to_an_mx_without_starttls(lab):
    lab.dns()
    lab.receiver("127.0.0.2", local_domains=["implicit.test"])
    opportunistic = lab.sender(trusted_networks=["127.0.0.1/32"])
    required = lab.sender(trusted_networks=["127.0.0.1/32"], remote_tls="required")
    for server in (opportunistic, required):
        done = transaction(server.session(), "alice@postel.test", ["dave@implicit.test"], message("plaintext mx"))
        assert done.code == 250, done
    receiver = lab.receivers[0]
    assert wait_until(lambda: len(mbox_messages(receiver.mailboxes / "dave")) == 1, 20)
    required.wait_log(r"status=deferred .*does not offer STARTTLS, and TLS is required", timeout=20)
    listing = queue_list(required)
    assert "does not offer STARTTLS" in listing, listing
    time.sleep(1)
    assert len(mbox_messages(receiver.mailboxes / "dave")) == 1, "the required-TLS copy was never sent in clear"


def test_smarthost_with_verified_tls_and_auth(lab, pki, tmp_path):
    ca, _, _ = pki
    cert, key = ca.issue("127.0.0.3")
    other_ca = CA(tmp_path / "other-ca", name="Someone Else")
    users = tmp_path / "relay-users"
    users.write_text(f"relay:{libxcrypt_hash('relay secret', 'sha512')}\n")
    submission, submissions = free_port(), free_port()
    receiver = lab.receiver("127.0.0.3", tls_certificate=str(cert), tls_key=str(key), auth_users=str(users),
                            submission_listen=[f"127.0.0.3:{submission}"],
                            submissions_listen=[f"127.0.0.3:{submissions}"], submission_sender_check=False)
    good, bad = tmp_path / "good.secret", tmp_path / "bad.secret"
    good.write_text("relay:relay secret\n")
    bad.write_text("relay:wrong\n")
    good.chmod(0o600)
    bad.chmod(0o600)
    cases = {
        "starttls": dict(smarthost=f"127.0.0.3:{submission}", smarthost_tls="starttls",
                         tls_ca_file=str(ca.cert), smarthost_credentials=str(good)),
        "implicit": dict(smarthost=f"127.0.0.3:{submissions}", smarthost_tls="implicit",
                         tls_ca_file=str(ca.cert), smarthost_credentials=str(good)),
        "wrong-ca": dict(smarthost=f"127.0.0.3:{submission}", smarthost_tls="starttls",
                         tls_ca_file=str(other_ca.cert), smarthost_credentials=str(good)),
        "wrong-password": dict(smarthost=f"127.0.0.3:{submission}", smarthost_tls="starttls",
                               tls_ca_file=str(ca.cert), smarthost_credentials=str(bad)),
    }
    senders = {}
    for name, keys in cases.items():
        sender = senders[name] = lab.sender(trusted_networks=["127.0.0.1/32"], **keys)
        conn = sender.session()
        conn.expect("MAIL FROM:<alice@postel.test>", 250)
        conn.expect(f"RCPT TO:<{name}@example.test>", 250)
        conn.expect("DATA", 354)
        conn.send(message(name) + b".\r\n")
        assert conn.reply().code == 250
    for name in ["starttls", "implicit"]:
        assert wait_until(lambda: len(mbox_messages(receiver.mailboxes / name)) == 1, 20), \
            senders[name].log()[-3000:]
        (received,) = [h for h in mbox_messages(receiver.mailboxes / name)[0].get_all("Received")
                       if "mx-127.0.0.3" in h]
        assert " with ESMTPSA id " in received, received
    reasons = {"wrong-ca": r"TLS handshake with \S+ failed: .*(certificate|UnknownIssuer)",
               "wrong-password": r"authentication as relay failed: 535"}
    for name, reason in reasons.items():
        senders[name].wait_log(r"status=deferred .*" + reason, timeout=20)
        listing = queue_list(senders[name])
        assert re.search(reason, listing), listing
        assert not (receiver.mailboxes / name).exists()


def test_testssl_finds_no_old_protocol_and_no_known_vulnerability(tls_postel, capsys):
    """testssl.sh against STARTTLS on the SMTP port (about 35 s). It exits non-zero even for a clean
    server, so its report is read: the protocol and vulnerability sections, printed with the test output."""
    run = subprocess.run(["testssl", "--quiet", "--color", "0", "-t", "smtp", "-n", "none", "-p", "-U",
                          f"127.0.0.1:{tls_postel.port}"], capture_output=True, text=True, timeout=300)
    report = run.stdout
    protocols = dict(re.findall(r"^ (SSLv2|SSLv3|TLS 1|TLS 1\.1|TLS 1\.2|TLS 1\.3)\s+(.+)$", report, re.M))
    assert protocols.keys() == {"SSLv2", "SSLv3", "TLS 1", "TLS 1.1", "TLS 1.2", "TLS 1.3"}, report
    for old in ["SSLv2", "SSLv3", "TLS 1", "TLS 1.1"]:
        assert protocols[old].startswith("not offered"), (old, protocols[old])
    assert protocols["TLS 1.3"].startswith("offered"), protocols
    section = report.split(" Testing vulnerabilities", 1)[-1].split("\n Testing ", 1)[0].split("\n Done ", 1)[0]
    vulnerabilities = re.findall(r"^ (\S.*?)\s{2,}(\S.*)$", section, re.M)
    assert len(vulnerabilities) >= 12, report
    flagged = [line for line in report.splitlines() if "VULNERABLE" in line or "NOT ok" in line and "CVE" in line]
    assert not flagged, "\n".join(flagged)
    with capsys.disabled():
        print("\ntestssl summary:")
        for name, verdict in protocols.items():
            print(f"  {name:8} {verdict}")
        for name, verdict in vulnerabilities:
            print(f"  {name.strip():45} {verdict.strip()}")


def test_etrn_is_answered_for_an_authenticated_client_outside_trusted_networks(tls_postel):
    """ETRN is for trusted or authenticated clients: refused before AUTH, run after it."""
    with smtplib.SMTP("127.0.0.1", tls_postel.port, timeout=20) as smtp:
        smtp.ehlo("client.test")
        code, text = smtp.docmd("ETRN example.org")
        assert code == 502 and b"5.7.0" in text, text
        smtp.starttls(context=client_context(tls_postel.ca))
        smtp.ehlo("client.test")
        smtp.login("alice", PASSWORD)
        code, text = smtp.docmd("ETRN example.org")
        # This server holds its mail (no delivery workers), so past the trust check ETRN says there is no queue runner.
        assert code == 458 and b"no queue runner" in text, text


def test_submission_adds_date_and_message_id_when_missing(tls_postel):
    with smtplib.SMTP("127.0.0.1", tls_postel.submission, timeout=20) as smtp:
        smtp.starttls(context=client_context(tls_postel.ca))
        smtp.login("alice", PASSWORD)
        smtp.sendmail("alice@postel.test", ["bob@localhost"], b"Subject: bare\r\n\r\nNo date, no id.\r\n")
        smtp.sendmail("alice@postel.test", ["bob@localhost"],
                      b"Date: Mon, 30 Nov 2026 09:00:00 +0000\r\nMessage-ID: <mine@client.test>\r\n"
                      b"Subject: whole\r\n\r\nBoth there.\r\n")
    bare, whole = tls_postel.queued_ids()
    _, body = tls_postel.record(bare)
    headers = body.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "\n")
    assert re.search(r"^Date: \w{3}, .* \+0000$", headers, re.M), headers
    assert re.search(rf"^Message-ID: <{bare}@postel\.test>$", headers, re.M), headers
    assert headers.endswith("Subject: bare")
    _, body = tls_postel.record(whole)
    assert body.startswith(b"Date: Mon, 30 Nov 2026 09:00:00 +0000\r\nMessage-ID: <mine@client.test>\r\n"), body
