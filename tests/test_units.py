"""What the package installs besides the binary, checked in the normal test run: the systemd units
(debian/postel.service, postel.socket, postel@.service) without a running systemd — `systemd-analyze verify` and
`security --offline=yes` on copies that point at the binary under test, and the socket unit's service run per
connection by `systemd-socket-activate --inetd` — and the shipped configuration, debian/postel.toml."""

import re
import shlex
import shutil
import smtplib
import subprocess
import time

import pytest

from helpers import POSTEL_BIN, REPO, free_port, wait_until, write_config
from mboxutil import deliver, message_ids

UNITS = ["postel.service", "postel.socket", "postel@.service"]
# Exposure levels `systemd-analyze security` gives the units today (0 is best, 10 worst), with a little room.
MAX_EXPOSURE = {"postel.service": 3.0, "postel@.service": 3.0}

pytestmark = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed "
                                "(tests/setup-tools.sh installs systemd)")


def unit_settings(name):
    """The unit's `Key=value` lines as (key, value) pairs, in order."""
    text = (REPO / "debian" / name).read_text()
    return [tuple(line.split("=", 1)) for line in text.splitlines() if re.match(r"^[A-Za-z]+=", line)]


@pytest.fixture
def units(tmp_path):
    """Copies of the units whose commands run the binary under test, and a MANPATH with the man pages."""
    folder = tmp_path / "units"
    folder.mkdir()
    for name in UNITS:
        text = (REPO / "debian" / name).read_text().replace("/usr/sbin/postel", str(POSTEL_BIN))
        (folder / name).write_text(text)
    for page, section in [("postel.8", "man8"), ("postel.toml.5", "man5")]:
        (tmp_path / "man" / section).mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "doc" / "man" / page, tmp_path / "man" / section / page)
    return folder, tmp_path / "man"


def test_systemd_analyze_verify_finds_nothing_wrong(units):
    folder, manpath = units
    run = subprocess.run(["systemd-analyze", "verify", *(str(folder / name) for name in UNITS)],
                         capture_output=True, text=True, timeout=60, env={"MANPATH": str(manpath), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0 and run.stderr == "", run.stderr


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_services_are_hardened(units, name):
    folder, _ = units
    run = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(folder / name)],
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", run.stdout)
    assert found, run.stdout + run.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE[name], run.stdout


def test_the_socket_units_service_serves_a_session_per_connection(tmp_path):
    if not shutil.which("systemd-socket-activate"):
        pytest.skip("systemd-socket-activate is not installed (tests/setup-tools.sh installs systemd)")
    socket = dict(unit_settings("postel.socket"))
    service = dict(unit_settings("postel@.service"))
    assert socket["Accept"] == "yes" and service["StandardInput"] == "socket", (socket, service)
    config = write_config(tmp_path, **deliver(local_users=["alice"]))
    argv = shlex.split(service["ExecStart"])
    assert argv[:2] == ["/usr/sbin/postel", "inetd"] and argv[argv.index("--config") + 1] == "/etc/postel/postel.toml"
    argv[0], argv[argv.index("--config") + 1] = str(POSTEL_BIN), str(config)
    port = free_port()
    launcher = subprocess.Popen(["systemd-socket-activate", "--accept", "--inetd", "-l", f"127.0.0.1:{port}", *argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
    try:
        assert wait_until(lambda: listening(port), 10), "systemd-socket-activate did not listen"
        for n in range(2):
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as s:
                refused = s.sendmail("carol@example.org", ["alice@localhost"],
                                     f"Subject: session {n}\r\n\r\nOne process per connection.\r\n")
                assert refused == {}
        mailbox = tmp_path / "mailboxes" / "alice"
        assert wait_until(lambda: len(message_ids(mailbox)) == 2, 20), message_ids(mailbox)
    finally:
        launcher.terminate()
        launcher.wait(timeout=10)


def listening(port):
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
            return s.noop()[0] == 250
    except OSError:
        time.sleep(0.1)
        return False


def test_the_shipped_configuration_and_its_commented_examples_check(tmp_path):
    """debian/postel.toml passes `postel check`, and so does each commented-out example once uncommented (with
    the system paths moved into a temporary folder), so that a renamed key cannot leave the shipped file stale."""
    aliases = tmp_path / "aliases"
    aliases.write_text("postmaster: root\n")
    shipped = (REPO / "debian" / "postel.toml").read_text().replace("/etc/aliases", str(aliases))
    shipped = shipped.replace("/var/spool/postel", str(tmp_path / "spool"))
    # The account the shipped file names is the one the package creates; here any unprivileged account will do.
    shipped = shipped.replace('user = "postel"', 'user = "nobody"')
    check(tmp_path, shipped)
    examples = re.findall(r"^#([a-z_]+) = (.+)$", shipped, re.M)
    assert len(examples) >= 5, examples
    for key, value in examples:
        text = re.sub(rf"^{key} = .*$", "", shipped, flags=re.M) + f"\n{key} = {value}\n"
        check(tmp_path, text)


def check(folder, text):
    path = folder / "postel.toml"
    path.write_text(text)
    run = subprocess.run([str(POSTEL_BIN), "check", "--config", str(path)], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, f"{run.stderr}\n{text}"
    return run
