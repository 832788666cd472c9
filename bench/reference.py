#!/usr/bin/env python3
"""bench/reference.py -- the reference Postfix that `make bench` compares Postel with.

Sets up (or brings up to date) a Postfix instance of its own, beside Debian's default one, which it leaves alone:

  config     /etc/postfix-bench (main.cf written here, master.cf from Debian's pristine copy)
  queue      /var/spool/postfix-bench, log /var/log/postfix-bench.log (emptied by each set-up)
  listens    127.0.0.1:2525 only (Debian's chroot defaults; fsync of the queue file before 250, as always)
  delivers   bench.local and localhost with local(8) to /var/mail/<user> (fcntl + dot-lock, fsync)
  users      load and load02 .. load50, aliases 2load .. 50load for them: the recipients smtp-source makes
             from `-t load@bench.local -r 50`
  relays     d1.test .. d10.test to [127.0.0.2] .. [127.0.0.11], port 2526 (the bench's smtp-sinks), by a
             transport map; everything else bounces, nothing leaves 127.0.0.0/8

Run as root; idempotent (every run rewrites the configuration, then starts or reloads the instance).
Options:
  tls        STARTTLS with an ECDSA P-256 certificate for bench.local made once in /etc/postfix-bench/tls, which the
             TLS cases of make bench give Postel too, so that both servers sign with the same key
  --tls CERT KEY   offer this certificate and key (PEM) instead (copied into /etc/postfix-bench/tls)
  --no-tls         offer no STARTTLS (the TLS cases then measure Postel alone)
  --stop           stop the reference instance
"""

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

from net import greeting

CONFIG_DIR = Path("/etc/postfix-bench")
QUEUE_DIR = Path("/var/spool/postfix-bench")
DATA_DIR = Path("/var/lib/postfix-bench")
LOG_FILE = Path("/var/log/postfix-bench.log")
MAIL_SPOOL = Path("/var/mail")
ADDR = ("127.0.0.1", 2525)
DOMAIN = "bench.local"
# smtp-source -r N -t load@... sends to load, 2load, ..., Nload.
USERS = ["load"] + [f"load{i:02d}" for i in range(2, 51)]
ALIASES = {f"{i}load": f"load{i:02d}" for i in range(2, 51)}
# Relay destinations: dK.test is served by an smtp-sink on RELAY_SINKS[K-1]:RELAY_PORT.
RELAY_DOMAINS = [f"d{k}.test" for k in range(1, 11)]
RELAY_SINKS = [f"127.0.0.{k + 1}" for k in range(1, 11)]
RELAY_PORT = 2526
TLS_CERT = CONFIG_DIR / "tls" / "cert.pem"
TLS_KEY = CONFIG_DIR / "tls" / "key.pem"
# Files a chrooted Postfix daemon reads from /etc (what Debian's init script copies into the queue directory).
CHROOT_FILES = ["etc/localtime", "etc/services", "etc/resolv.conf", "etc/hosts", "etc/host.conf", "etc/nsswitch.conf"]


def main_cf(tls):
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": str(QUEUE_DIR),
        "data_directory": str(DATA_DIR),
        "multi_instance_name": "postfix-bench",
        "syslog_name": "postfix-bench",
        "maillog_file": str(LOG_FILE),
        "myhostname": DOMAIN,
        "mydestination": f"{DOMAIN}, localhost",
        "inet_interfaces": ADDR[0],
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_banner": "$myhostname ESMTP $mail_name (Debian/GNU)",
        "biff": "no",
        "append_dot_mydomain": "no",
        "alias_maps": f"hash:{CONFIG_DIR}/aliases",
        "alias_database": f"hash:{CONFIG_DIR}/aliases",
        "transport_maps": f"hash:{CONFIG_DIR}/transport",
        "default_transport": "error:the bench reference relays to the bench's sinks only",
        "relay_transport": "error:the bench reference relays to the bench's sinks only",
        "mailbox_command": "",
        "home_mailbox": "",
        "mail_spool_directory": str(MAIL_SPOOL),
        "mailbox_size_limit": "0",
        # The same largest message as Postel's default max_message_size (50 MiB).
        "message_size_limit": str(50 * 1024 * 1024),
        "smtpd_tls_security_level": "may" if tls else "none",
    }
    if tls:
        settings["smtpd_tls_cert_file"], settings["smtpd_tls_key_file"] = tls
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def make_certificate(cert, key):
    """A self-signed ECDSA P-256 certificate for bench.local (and postel.test, the name bench/tls_load.rs sends)."""
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", "3650", "-subj", f"/CN={DOMAIN}", "-addext", f"subjectAltName=DNS:{DOMAIN},DNS:postel.test",
        "-keyout", str(key), "-out", str(cert))


def install_tls(given):
    """The certificate and key the reference offers: `given` (CERT, KEY) copied in, or the ones made before."""
    TLS_CERT.parent.mkdir(parents=True, exist_ok=True)
    if given:
        shutil.copyfile(given[0], TLS_CERT)
        shutil.copyfile(given[1], TLS_KEY)
    elif not (TLS_CERT.exists() and TLS_KEY.exists()):
        make_certificate(TLS_CERT, TLS_KEY)
    os.chmod(TLS_KEY, 0o600)
    return str(TLS_CERT), str(TLS_KEY)


def run(*argv):
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench-reference: {' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def postfix(*argv):
    return run("postfix", "-c", str(CONFIG_DIR), *argv)


def running():
    return subprocess.run(["postfix", "-c", str(CONFIG_DIR), "status"], capture_output=True).returncode == 0


def ensure_users():
    for user in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user)
        box = MAIL_SPOOL / user
        if not box.exists():
            box.touch(mode=0o600)
            shutil.chown(box, user, "mail")


def write_config(tls):
    CONFIG_DIR.mkdir(exist_ok=True)
    (CONFIG_DIR / "main.cf").write_text(main_cf(tls))
    shutil.copyfile("/usr/share/postfix/master.cf.dist", CONFIG_DIR / "master.cf")
    run("postconf", "-c", str(CONFIG_DIR), "-M#", "smtp/inet")
    run("postconf", "-c", str(CONFIG_DIR), "-M", f"{ADDR[0]}:{ADDR[1]}/inet = {ADDR[0]}:{ADDR[1]} inet n - y - - smtpd")
    (CONFIG_DIR / "aliases").write_text("postmaster: root\n" + "".join(f"{a}: {u}\n" for a, u in ALIASES.items()))
    run("postalias", f"hash:{CONFIG_DIR}/aliases")
    routes = [f"{d} smtp:[{ip}]:{RELAY_PORT}\n" for d, ip in zip(RELAY_DOMAINS, RELAY_SINKS)]
    (CONFIG_DIR / "transport").write_text("".join(routes))
    run("postmap", f"hash:{CONFIG_DIR}/transport")
    for folder in (QUEUE_DIR, DATA_DIR):
        folder.mkdir(exist_ok=True)
    shutil.chown(DATA_DIR, "postfix")
    for name in CHROOT_FILES:
        if Path("/", name).exists():
            (QUEUE_DIR / name).parent.mkdir(exist_ok=True)
            shutil.copyfile(Path("/", name), QUEUE_DIR / name)
    postfix("check")  # creates the queue's subdirectories with their owners
    if LOG_FILE.exists():
        os.truncate(LOG_FILE, 0)  # a benchmark logs a lot: each set-up starts afresh


def start():
    if running():
        postfix("reload")
    else:
        if greeting(ADDR, 0.5):
            sys.exit(f"bench-reference: something else answers on {ADDR[0]}:{ADDR[1]}; stop it first")
        postfix("start")
    deadline = time.monotonic() + 30
    while not greeting(ADDR).startswith("220"):
        if time.monotonic() > deadline:
            sys.exit(f"bench-reference: Postfix did not answer on {ADDR[0]}:{ADDR[1]}; see {LOG_FILE}")
        time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser(description="Set up the reference Postfix for make bench.")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="offer STARTTLS with this certificate and key")
    parser.add_argument("--no-tls", action="store_true", help="offer no STARTTLS")
    parser.add_argument("--stop", action="store_true", help="stop the reference instance")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-reference: run as root")
    if not shutil.which("postfix"):
        sys.exit("bench-reference: Postfix is missing: run tests/setup-tools.sh as root")
    if args.stop:
        if running():
            postfix("stop")
        print("bench-reference: stopped")
        return
    given = tuple(Path(p).resolve(strict=True) for p in args.tls) if args.tls else None
    ensure_users()
    tls = None if args.no_tls else install_tls(given)
    write_config(tls)
    start()
    print(f"bench-reference: Postfix ready on {ADDR[0]}:{ADDR[1]} ({DOMAIN}, /var/mail/load*, config {CONFIG_DIR}"
          f"{', STARTTLS' if tls else ''})")


if __name__ == "__main__":
    main()
