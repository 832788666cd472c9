"""The Debian package (`make deb-test`, which builds it and sets POSTEL_DEB): lintian, then an install into a
fresh Debian root made with mmdebstrap through the host's apt sources, and inside it, in a network namespace of
its own (so the packaged port 25 is free): the shipped configuration checks, the daemon started as root serves
port 25 as the postel account (its privileged helper stays root), mail(1) delivers through /usr/sbin/sendmail
into /var/mail/root, owned by root and 0600, mailq shows the queue empty again, newaliases checks /etc/aliases
and the daemon takes it up, a user's mail reaches the daemon through the set-group-id binary, sendmail with no
daemon delivers root's mail in the background while a user's waits for `postel queue run` by root, `postel
inetd` delivers root's mail too, and a purge takes the package and its spool but leaves the mailboxes.

Skipped, saying why, when POSTEL_DEB is not set or no Debian mirror can be reached.
"""

import mailbox
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import wait_until

DEB = os.environ.get("POSTEL_DEB")
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
SUITE = "bookworm"

pytestmark = pytest.mark.skipif(not DEB, reason="POSTEL_DEB is not set: `make deb-test` builds the package and runs this")


def test_lintian_reports_no_errors():
    run = subprocess.run(["lintian", "--fail-on", "error", "--display-info", DEB], capture_output=True, text=True,
                         timeout=300)
    print(run.stdout, run.stderr)
    assert run.returncode == 0, run.stdout + run.stderr
    assert not re.search(r"^E: ", run.stdout, re.M), run.stdout


def mirror():
    """The host's Debian sources (file or URL) for mmdebstrap, or None with the reason it cannot be reached."""
    url = "http://deb.debian.org/debian"
    if HOST_SOURCES.exists():
        found = re.search(r"^URIs:\s*(\S+)", HOST_SOURCES.read_text(), re.M)
        url = found.group(1) if found else url
    try:
        urllib.request.urlopen(f"{url.rstrip('/')}/dists/{SUITE}/Release", timeout=10).close()
    except OSError as e:
        return None, f"no Debian mirror reachable at {url}: {e}"
    return (str(HOST_SOURCES) if HOST_SOURCES.exists() else url), None


class Root:
    """A Debian root directory. Commands run in it with chroot, with /proc mounted in a mount namespace of their
    own, or in the daemon's namespaces (its network with port 25, its mounts) while it runs."""

    def __init__(self, path):
        self.path = path
        self.daemon = None

    def run(self, script, check=True, timeout=300, user=None):
        argv = ["chroot", str(self.path)]
        if user:
            argv += ["runuser", "-u", user, "--"]
        argv += ["sh", "-c", script]
        if self.daemon:
            argv = ["nsenter", f"--net=/proc/{self.daemon.pid}/ns/net", f"--mount=/proc/{self.daemon.pid}/ns/mnt"] + argv
        else:
            argv = ["unshare", "--mount", f"--mount-proc={self.path}/proc"] + argv
        run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        if check:
            assert run.returncode == 0, f"{script}: exit {run.returncode}\n{run.stdout}\n{run.stderr}"
        return run

    def file(self, path):
        return self.path / path.lstrip("/")

    def start_daemon(self):
        """`postel serve` as the service would run it, in a new network namespace with only the loopback up."""
        self.log = self.file("/tmp/postel.log")
        with open(self.log, "wb") as log:
            self.daemon = subprocess.Popen(
                ["unshare", "--net", "--mount", f"--mount-proc={self.path}/proc", "sh", "-c",
                 'ip link set lo up && exec chroot "$0" /usr/sbin/postel serve --config /etc/postel/postel.toml',
                 str(self.path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        ready = wait_until(lambda: "postel ready" in self.log.read_text() or self.daemon.poll() is not None, 20)
        assert ready and self.daemon.poll() is None, self.log.read_text()

    def stop_daemon(self):
        self.daemon.terminate()
        code = self.daemon.wait(timeout=60)
        self.daemon = None
        assert code == 0, self.log.read_text()

    def uids(self, pid):
        """The real, effective, saved and filesystem uids of process `pid`, from /proc."""
        status = Path(f"/proc/{pid}/status").read_text()
        return [int(n) for n in re.search(r"^Uid:(.*)$", status, re.M).group(1).split()]

    def children(self, pid):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def mail_to_root(self):
        path = self.file("/var/mail/root")
        return list(mailbox.mbox(str(path), create=False)) if path.exists() else []


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    for tool in ["mmdebstrap", "lintian", "unshare", "nsenter", "ip"]:
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (tests/setup-tools.sh installs it)")
    sources, unreachable = mirror()
    if unreachable:
        print(f"skipped: {unreachable}")
        pytest.skip(unreachable)
    path = tmp_path_factory.mktemp("debian") / "root"
    run = subprocess.run(["mmdebstrap", "--variant=apt", "--quiet", "--skip=cleanup/apt/lists", SUITE, str(path),
                          sources], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    root = Root(path)
    shutil.copy(DEB, root.file("/tmp"))
    yield root
    if root.daemon:
        root.daemon.kill()
        root.daemon.wait()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(root):
    # One apt call for both: asked for mailx alone, apt would pull in another mail server.
    run = root.run(f"apt-get install -y -q /tmp/{Path(DEB).name} bsd-mailx", timeout=600)
    print(run.stdout[-2000:])
    for other in ["exim4-base", "postfix", "dma", "nullmailer"]:
        assert root.run(f"dpkg -s {other}", check=False).returncode != 0, f"apt installed {other}"
    return root


def test_the_package_sets_up_the_account_the_spool_and_the_mta_names(installed):
    user = installed.run("getent passwd postel").stdout.strip().split(":")
    assert user[5:] == ["/nonexistent", "/usr/sbin/nologin"], user
    assert "mail" in installed.run("id -nG postel").stdout.split()
    assert not installed.file("/nonexistent").exists()
    modes = installed.run("stat -c '%U:%G %a' /var/spool/postel /var/spool/postel/queue /usr/sbin/postel "
                          "/usr/sbin/sendmail").stdout
    assert modes.split("\n")[:4] == ["postel:postel 2770", "postel:postel 2770", "root:root 755",
                                     "root:postel 2755"], modes
    for name in ["/usr/bin/mailq", "/usr/bin/newaliases"]:
        assert installed.run(f"readlink -f {name}").stdout.strip() == "/usr/sbin/postel", name
    assert installed.run("readlink -f /usr/lib/sendmail").stdout.strip() == "/usr/sbin/sendmail"
    assert installed.run("cmp /usr/sbin/sendmail /usr/sbin/postel", check=False).returncode == 0
    assert installed.file("/etc/aliases").exists()
    assert "/etc/postel/postel.toml" in installed.run("dpkg-query -W -f '${Conffiles}' postel").stdout
    for page in ["postel.8", "postel.toml.5", "sendmail.8", "mailq.8", "newaliases.8"]:
        section = page.rsplit(".", 1)[1]
        assert installed.file(f"/usr/share/man/man{section}/{page}.gz").exists(), page


def test_the_shipped_configuration_checks(installed):
    printed = installed.run("postel check").stdout
    assert 'spool_dir = "/var/spool/postel"' in printed and 'aliases = "/etc/aliases"' in printed, printed
    assert 'user = "postel"' in printed, printed


def root_mailbox_is_roots(installed):
    """/var/mail/root stays root's own, 0600, whichever process wrote it."""
    owner = installed.run("stat -c '%U %a' /var/mail/root").stdout.strip()
    assert owner == "root 600", owner


def test_mail_goes_through_the_daemon_into_var_mail(installed):
    installed.start_daemon()
    # The chroot has no Python: the host's smtplib talks to port 25 from inside the namespace.
    greeting = subprocess.run(["nsenter", f"--net=/proc/{installed.daemon.pid}/ns/net", "python3", "-c",
                               "import smtplib; s = smtplib.SMTP('127.0.0.1', 25, timeout=10); "
                               "print(s.noop()[0]); s.quit()"], capture_output=True, text=True, timeout=30)
    assert greeting.stdout.strip() == "250", greeting.stderr
    postel = int(installed.run("id -u postel").stdout)
    # The sessions and the deliveries are threads of the daemon: all of it runs as postel, but for the helper.
    assert installed.uids(installed.daemon.pid) == [postel] * 4, installed.log.read_text()
    (helper,) = installed.children(installed.daemon.pid)
    assert b"privileged-helper" in Path(f"/proc/{helper}/cmdline").read_bytes()
    assert installed.uids(helper) == [0] * 4
    installed.run("echo test | mail -s hi root")
    assert wait_until(lambda: len(installed.mail_to_root()) == 1, 20), installed.log.read_text()
    (message,) = installed.mail_to_root()
    assert message["Subject"] == "hi" and message.get_payload().strip() == "test"
    assert message["From"].startswith("root@"), message["From"]
    root_mailbox_is_roots(installed)
    assert wait_until(lambda: "Mail queue is empty" in installed.run("mailq").stdout, 20), installed.run("mailq").stdout


def test_newaliases_checks_the_file_and_the_daemon_reloads_it(installed):
    with open(installed.file("/etc/aliases"), "a") as aliases:
        aliases.write("webmaster: root\n")
    count = len(re.findall(r"^[a-z-]+:", installed.file("/etc/aliases").read_text(), re.M))
    run = installed.run("newaliases")
    assert run.stdout.strip() == f"/etc/aliases: {count} aliases", run.stdout + run.stderr
    assert wait_until(lambda: "reload: /etc/aliases:" in installed.log.read_text(), 10), installed.log.read_text()
    installed.run("echo 'to the new alias' | mail -s alias webmaster")
    assert wait_until(lambda: len(installed.mail_to_root()) == 2, 20), installed.log.read_text()


def test_a_users_mail_reaches_the_daemon_through_the_set_group_id_sendmail(installed):
    installed.run("useradd --create-home alice")
    run = installed.run("echo 'from alice' | mail -s 'from a user' root", user="alice")
    assert run.stderr == "", run.stderr
    assert wait_until(lambda: len(installed.mail_to_root()) == 3, 20), installed.log.read_text()
    assert installed.mail_to_root()[-1]["From"].startswith("alice@"), installed.mail_to_root()[-1]["From"]
    installed.stop_daemon()


def test_without_a_daemon_root_delivers_in_the_background_and_users_wait(installed):
    installed.run("echo 'no daemon' | mail -s detached root")
    assert wait_until(lambda: len(installed.mail_to_root()) == 4, 20), installed.run("mailq").stdout
    root_mailbox_is_roots(installed)
    run = installed.run("echo 'from alice' | /usr/sbin/sendmail -v root", user="alice")
    assert "queue run" in run.stderr, run.stderr
    assert "Mail queue is empty" not in installed.run("mailq").stdout
    installed.run("postel queue run")
    assert wait_until(lambda: len(installed.mail_to_root()) == 5, 20), installed.run("mailq").stdout
    assert installed.mail_to_root()[-1]["From"].startswith("alice@")
    root_mailbox_is_roots(installed)


def test_inetd_mode_with_no_daemon_delivers_roots_mail(installed):
    """postel@.service's command: one session on stdin, then the delivery of what it queued, as postel with the
    helper started first."""
    dialogue = (r"HELO client.test\r\nMAIL FROM:<carol@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n"
                r"Subject: over inetd\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    run = installed.run(f"printf '{dialogue}' | postel inetd --config /etc/postel/postel.toml")
    assert "250 2.0.0 Ok: queued" in run.stdout, run.stdout + run.stderr
    assert wait_until(lambda: len(installed.mail_to_root()) == 6, 20), installed.run("mailq").stdout
    assert installed.mail_to_root()[-1]["Subject"] == "over inetd"
    root_mailbox_is_roots(installed)


def test_postinst_says_what_is_wrong_with_the_configuration(installed):
    config = installed.file("/etc/postel/postel.toml")
    good = config.read_text()
    config.write_text(good + "listen_backlogg = 5\n")
    try:
        run = installed.run("/var/lib/dpkg/info/postel.postinst configure 0.1.0")
        assert "/etc/postel/postel.toml is not valid" in run.stderr, run.stderr
        assert "unknown key 'listen_backlogg'" in run.stderr, run.stderr
    finally:
        config.write_text(good)


def test_purge_removes_the_package_and_spool_but_not_the_mailboxes(installed):
    delivered = len(installed.mail_to_root())
    installed.run("apt-get purge -y -q postel")
    assert installed.run("dpkg -s postel", check=False).returncode != 0
    assert not installed.file("/var/spool/postel").exists()
    assert not installed.file("/etc/postel").exists()
    assert delivered > 0 and len(installed.mail_to_root()) == delivered
    assert installed.run("dpkg-statoverride --list", check=False).stdout.strip() == ""
