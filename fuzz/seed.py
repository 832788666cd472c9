#!/usr/bin/env python3
"""Seeds fuzz/corpus/ from real traffic: the dialogues of real SMTP clients (smtplib, swaks and the
raw dialogues of the integration tests) recorded on their way to a real `postel serve`, the spool
files and journal that server wrote, the configuration and aliases files the tests write, and the
replies of a real dnsmasq. Run it from the repository after `cargo build`; then minimise with
`cargo fuzz cmin TARGET` (see doc/fuzzing.md). Each file is named after a hash of its content.
"""

import base64
import hashlib
import os
import re
import shutil
import smtplib
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import helpers  # noqa: E402
from test_smuggling import HEAD, SEQUENCES, SMUGGLED  # noqa: E402

CORPUS = ROOT / "fuzz" / "corpus"
# The session and data_receiver targets read two option bytes first: flags and read size.
OPTIONS = [b"\x00\x00", b"\x01\x07", b"\x02\x01", b"\x05\x03"]


def save(target, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


class Recorder:
    """A TCP proxy in front of the server that keeps what each client sent."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dialogues = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        server = socket.create_connection(("127.0.0.1", self.upstream))
        sent = bytearray()

        def downstream():
            while data := server.recv(65536):
                client.sendall(data)
            client.close()

        reader = threading.Thread(target=downstream, daemon=True)
        reader.start()
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                break
            if not data:
                break
            sent += data
            server.sendall(data)
        try:
            server.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        reader.join(10)
        with self.lock:
            self.dialogues.append(bytes(sent))


def raw(port, data, pause=0.2):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(4096)
        sock.sendall(data)
        time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


def dialogues(port):
    """Real clients, and the raw dialogues of tests/test_smuggling.py, test_commands.py, test_reply_text.py."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("carol@example.org", ["alice@localhost", "bob@localhost"],
                      b"From: carol@example.org\r\nSubject: hi\r\n\r\nHello.\r\n.leading dot\r\n")
        smtp.vrfy("alice")
        smtp.noop()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.helo("old.client.test")
        smtp.sendmail("<>", ["postmaster"], b"Subject: bounce\r\n\r\n" + b"x" * 3000 + b"\r\n")
        smtp.rset()
        smtp.help("MAIL")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("utf8.test")
        smtp.sendmail("jös@example.org", ["alice@localhost"], "Subject: ü\r\n\r\nGrüße\r\n".encode(),
                      mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    swaks = shutil.which("swaks")
    if swaks:
        for extra in [[], ["--pipeline"], ["--body", "line\n.\nmore\n"]]:
            subprocess.run([swaks, "--server", f"127.0.0.1:{port}", "--from", "dave@example.org",
                            "--to", "alice@localhost", "--helo", "swaks.test", *extra],
                           capture_output=True, timeout=30)
    pipelined = (b"EHLO client.test\r\nMAIL FROM:<carol@example.org>\r\nRCPT TO:<alice@localhost>\r\n"
                 b"RCPT TO:<nobody@localhost>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n"
                 b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    raw(port, pipelined)
    raw(port, b"EHLO client.test\r\nMAIL FROM:<carol@example.org>\r\nRCPT TO:<alice@localhost>\r\n"
              b"BDAT 12\r\nSubject: a\r\n\r\nBDAT 7 LAST\r\nchunk\r\nQUIT\r\n")
    raw(port, b"EHLO client.test\r\nMAIL FROM:<carol@example.org> BODY=BINARYMIME\r\n"
              b"RCPT TO:<bob@localhost>\r\nBDAT 0 LAST\r\nRSET\r\nETRN example.org\r\nEXPN staff\r\nQUIT\r\n")
    for sequence in SEQUENCES.values():
        raw(port, b"EHLO client.test\r\nMAIL FROM:<carol@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n"
                  + HEAD + sequence + SMUGGLED + b".\r\nNOOP\r\nQUIT\r\n")
    junk = [b"NO\x00OP", b"\x00\x00\x00", b"\xff\xfe\xfd garbage", b"MAIL FROM:<ca\x00rol@example.org>",
            b"\x1b[31mEHLO\x1b[0m", b"   ", b"", b"RCPT", b"EHLO", b"EXPN <localhost\rBDAT 3 LAST>",
            b"HELP localhost\rDATA", b"MAIL FROM:<carol@example.org> FOO=bar\rquit",
            b"MAIL FROM:<carol@example.org> X=\x01y", b"HELO", b"MAIL FROM:<\"a b\"@[127.0.0.1]>",
            b"RCPT TO:<alice@[IPv6:::1]>", b"VRFY " + b"a" * 600]
    raw(port, b"".join(line + b"\r\n" for line in [b"EHLO fuzz.test", *junk, b"QUIT"]))


def command_lines(dialogue):
    for line in re.split(rb"\r?\n", dialogue):
        if 0 < len(line) < 1000:
            yield line


def data_contents(dialogue):
    for match in re.finditer(rb"\r\nDATA\r\n(.*?\r\n\.\r\n)", dialogue, re.S):
        yield match.group(1)


def addresses(dialogue):
    for match in re.finditer(rb"(?i)(?:FROM|TO):(<[^>\r\n]*>)", dialogue):
        yield match.group(1)


def smtp_and_spool():
    with tempfile.TemporaryDirectory() as folder:
        server = helpers.Postel(folder, delivery_workers=0)
        try:
            recorder = Recorder(server.port)
            dialogues(recorder.port)
            time.sleep(0.5)
        finally:
            server.kill()
        for dialogue in recorder.dialogues:
            for options in OPTIONS:
                save("session", options + dialogue)
            for line in command_lines(dialogue):
                save("command_line", line)
            for content in data_contents(dialogue):
                for options in OPTIONS:
                    save("data_receiver", options + content)
            for address in addresses(dialogue):
                save("address", b"\x00\x00" + address)
                save("address", b"\x01\x00" + address)
        spool = Path(folder) / "spool"
        for path in (spool / "queue").iterdir():
            save("queue_file", path.read_bytes())
            for record in records(path.read_bytes()):
                save("envelope", record)
        for path in spool.rglob("*journal*"):
            save("journal", path.read_bytes())
        save("config", (Path(folder) / "postel.toml").read_bytes())
    for fixture in (ROOT / "src" / "spool" / "fixtures").glob("v*/**/*"):
        if fixture.is_file() and "journal" in fixture.name:
            save("journal", fixture.read_bytes())
        elif fixture.is_file():
            save("queue_file", fixture.read_bytes())
            for record in records(fixture.read_bytes()):
                save("envelope", record)


def records(queue_file):
    """The header line and envelope of each record of a queue file (the body is not parsed)."""
    at = 0
    while queue_file.startswith(b"POSTEL1 ", at):
        envelope_len, body_len = int(queue_file[at + 8:at + 16], 16), int(queue_file[at + 17:at + 33], 16)
        yield queue_file[at:at + 43 + envelope_len]
        at += 43 + envelope_len + body_len


def files():
    save("config", (ROOT / "debian" / "postel.toml").read_bytes())
    save("config", b'listen = ["127.0.0.1:2525", "[::1]:2525"]\nhostname = "mx.example.org"\n'
                   b'local_domains = ["example.org"]\nrelay_domains = ["example.net"]\n'
                   b'smarthost = "[192.0.2.1]:587"\nmax_message_size = 10485760\n'
                   b'command_timeout = "5m"\nbare_lf = "reject"\naliases = "/etc/aliases"\n')
    for text in [
        "# the list\nalice\nbob, carol\n",
        "postmaster: webmaster@localhost\nwebmaster: alice, bob\nstaff: :include:/etc/staff\n",
        'stuck: "|touch /tmp/started; sleep 300"\narchive: /var/mail/archive\nmailer-daemon: postmaster\n',
        "root: alice\n  , bob\nlist: alice,\n\tcarol@example.org\nbroken line\n",
    ]:
        save("aliases", text.encode())
    for text in ["alice:$y$j9T$abcdefgh$0123456789abcdefghijklmnopqrstuvwxyzABCDE\n",
                 "# users\nbob:$6$salt$" + "a" * 86 + "\ncarol:$2b$12$" + "b" * 53 + "\n"]:
        save("auth_users", text.encode())
    plain = base64.b64encode(b"\0alice\0secret").decode()
    for exchange in [f"PLAIN {plain}", f"PLAIN\n{plain}", "LOGIN\nYWxpY2U=\nc2VjcmV0",
                     f"LOGIN {base64.b64encode(b'alice').decode()}\nc2VjcmV0", "PLAIN =", "LOGIN\n*", "CRAM-MD5"]:
        save("sasl", exchange.encode())


ZONE = ["--local=/test/", "--mx-host=example.test,mx2.example.test,20", "--mx-host=example.test,mx1.example.test,10",
        "--host-record=mx1.example.test,127.0.0.2", "--host-record=plain.test,127.0.0.4",
        "--host-record=dual.test,127.0.0.5,::5", "--cname=alias.test,dual.test", "--mx-host=nullmx.test,.,0"]


def query(qid, name, qtype):
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        packet += bytes([len(label)]) + label.encode()
    return packet + b"\0" + struct.pack(">HH", qtype, 1)


def dns():
    dnsmasq = "/usr/sbin/dnsmasq"
    port = helpers.free_port()
    proc = subprocess.Popen([dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                             "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}", *ZONE],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(0.5)
        questions = [(n, t) for n in ["example.test", "nullmx.test", "plain.test", "dual.test", "alias.test",
                                      "missing.test", "mx1.example.test"] for t in (1, 15, 28)]
        for qid, (name, qtype) in enumerate(questions, 1):
            for _ in range(20):
                sock.sendto(query(qid, name, qtype), ("127.0.0.1", port))
                try:
                    save("dns_reply", sock.recv(4096))
                    break
                except OSError:
                    time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    os.chdir(ROOT)
    smtp_and_spool()
    files()
    dns()
    for target in sorted(p.name for p in CORPUS.iterdir()):
        print(target, len(list((CORPUS / target).iterdir())))
