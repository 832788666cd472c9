"""Least privilege (doc/security.md): started as root with `user` set, Postel binds its sockets and then serves
and delivers as that account; the spool is private to it; mailboxes end up owned by their users.

These tests run the server as root and create the accounts they need with useradd (removed at the end);
they need root, as `make test` on the test machines has.
"""

import datetime
import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from mboxutil import DELIVER, mbox_messages, message_ids, queue_list
from test_terminal import Terminal, message_to, utmp_record
from tlsutil import openssl, self_signed
from helpers import (POSTEL_BIN, Postel, SmtpConn, accepts, free_port, message, postel, transaction, wait_until,
                     write_config)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege model is tested as root")


@pytest.fixture
def make_account():
    """make_account() -> the name of a new system account (no home, no shell); all are removed afterwards."""
    names = []

    def make(*groups):
        name = "pt" + uuid.uuid4().hex[:10]
        argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
        if groups:
            argv[1:1] = ["--groups", ",".join(groups)]
        subprocess.run(argv, check=True, capture_output=True)
        names.append(name)
        return name

    yield make
    for name in names:
        # -f: a server of the test that is still exiting must not keep the account (the system ids run out).
        gone = subprocess.run(["userdel", "-f", name], capture_output=True, text=True)
        assert gone.returncode == 0, f"userdel {name}: {gone.stderr.strip()}"


@pytest.fixture
def open_folder():
    """A folder every account may enter (pytest's own tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="postel-privilege-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def servers():
    started = []
    yield started
    for server in started:
        server.kill()
        assert "panicked" not in server.log(), server.log()


def ids(pid, field):
    """The real, effective, saved and filesystem ids of process `pid` ("Uid" or "Gid"), or its supplementary
    groups ("Groups"), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return [int(n) for n in line.split()[1:]]
    raise AssertionError(f"no {field} line for {pid}")


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def serve_as(servers, folder, account, **config):
    (folder / "spool").mkdir(exist_ok=True)
    shutil.chown(folder / "spool", account, account)
    (folder / "mailboxes").mkdir(exist_ok=True)
    shutil.chown(folder / "mailboxes", account, account)
    server = Postel(folder, user=account, delivery_workers=2, **config)
    servers.append(server)
    server.wait_log("postel ready")  # the sockets are bound (and accept) before the switch
    return server


def test_sessions_and_deliveries_run_as_the_configured_user(servers, open_folder, make_account):
    account = make_account()
    user = pwd.getpwnam(account)
    server = serve_as(servers, open_folder, account)
    assert ids(server.pid, "Uid") == [user.pw_uid] * 4
    assert ids(server.pid, "Gid") == [user.pw_gid] * 4
    conn = server.session()
    assert transaction(conn, "carol@example.org", ["alice@localhost"], message("as the account")).code == 250
    mailbox = server.mailboxes / "alice"
    assert wait_until(lambda: mailbox.exists() and b"as the account" in mailbox.read_bytes())
    # local_users given as a list: the mailboxes belong to the server's own account.
    assert os.stat(mailbox).st_uid == user.pw_uid
    assert "running as root" not in server.log()


def test_queued_mail_is_readable_by_every_local_user(servers, open_folder, make_account):
    """Item 3: spool directories 0700 and files 0600, owned by the account the server runs as."""
    account = make_account()
    uid = pwd.getpwnam(account).pw_uid
    spool_dir = open_folder / "new" / "spool"  # missing: the server creates it
    mailbox_dir = open_folder / "new" / "mailboxes"
    server = Postel(open_folder, user=account, delivery_workers=0, spool_dir=str(spool_dir),
                    mailbox_dir=str(mailbox_dir))
    servers.append(server)
    server.spool = spool_dir
    conn = server.session()
    assert transaction(conn, "carol@example.org", ["alice@localhost"], message("private")).code == 250
    assert server.queued_ids(), server.log()
    for path in [server.spool, *server.spool.rglob("*")]:
        info = os.stat(path)
        assert info.st_uid == uid, f"{path} is owned by {info.st_uid}"
        expected = 0o700 if path.is_dir() else 0o600
        assert mode(path) == expected, f"{path} has mode {mode(path):o}"


def test_an_unknown_account_stops_the_start_naming_it(tmp_path):
    config = tmp_path / "postel.toml"
    config.write_text(f'user = "nosuch{uuid.uuid4().hex[:6]}"\nlisten = ["127.0.0.1:1"]\n')
    name = config.read_text().split('"')[1]
    for command in (["serve"], ["check"], ["inetd"]):
        run = postel(command, config=config, input=b"")
        assert run.returncode == 78, (command, run.stderr)
        assert f"no such account '{name}'" in run.stderr.decode(), (command, run.stderr)


def test_root_without_user_is_warned_about(make_postel, tmp_path):
    server = make_postel(user=None)
    server.wait_log("running as root")  # logged after the sockets are bound, when privileges would be dropped
    assert 'user = "postel"' in server.log()
    run = postel(["check"], config=server.config_path)
    assert run.returncode == 0
    assert "running as root" in run.stderr.decode()


def test_a_spool_owned_by_another_account_is_refused(servers, open_folder, make_account):
    account = make_account()
    (open_folder / "spool").mkdir()
    (open_folder / "mailboxes").mkdir()
    config = write_config(open_folder, user=account)
    run = postel(["serve"], config=config, timeout=10)
    assert run.returncode == 78, run.stderr
    assert f"{open_folder / 'spool'}: owned by uid 0, not by the account '{account}'" in run.stderr.decode()


def test_serve_outside_the_repository_never_delivers(open_folder):
    """Item 5: from an empty directory, with the built-in mailbox_dir and spool_dir, the server creates both."""
    port = free_port()
    env = dict(os.environ, RUST_LOG="info")
    env.pop("POSTEL_CONFIG", None)
    proc = subprocess.Popen([str(POSTEL_BIN), "serve", "--listen", f"127.0.0.1:{port}"], cwd=open_folder,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        assert wait_until(lambda: accepts(port), 10), "the server did not start"
        conn = SmtpConn.connect(port)
        conn.greet()
        assert transaction(conn, "carol@example.org", ["root@localhost"], message("from nowhere")).code == 250
        conn.close()
        mailbox = open_folder / "mailboxes" / "root"
        assert wait_until(lambda: mailbox.exists() and b"from nowhere" in mailbox.read_bytes(), 10)
        assert mode(open_folder / "spool") == 0o700
        assert mode(open_folder / "mailboxes") == 0o755
        assert mode(mailbox) == 0o600
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        proc.stderr.close()


def test_a_system_users_new_mailbox_is_created_owned_by_the_user(servers, open_folder, make_account):
    account, bob = make_account(), make_account()
    server = serve_as(servers, open_folder, account, local_users="system")
    helpers = [p for p in _children(server.pid) if b"privileged-helper" in _cmdline(p)]
    assert len(helpers) == 1, "one privileged helper"
    assert ids(helpers[0], "Uid") == [0] * 4, "the helper stays root"
    assert ids(server.pid, "Uid") == [pwd.getpwnam(account).pw_uid] * 4
    conn = server.session()
    assert transaction(conn, "carol@example.org", [f"{bob}@localhost"], message("for bob")).code == 250
    mailbox = server.mailboxes / bob
    assert wait_until(lambda: mailbox.exists() and b"for bob" in mailbox.read_bytes()), server.log()
    info = os.stat(mailbox)
    assert (info.st_uid, mode(mailbox)) == (pwd.getpwnam(bob).pw_uid, 0o600)
    # The next message goes into the same file, which the server's account cannot open by itself.
    assert transaction(conn, "carol@example.org", [f"{bob}@localhost"], message("again")).code == 250
    assert wait_until(lambda: b"again" in mailbox.read_bytes()), server.log()


@pytest.mark.parametrize("planted", ["symlink", "hard link", "someone else's"])
def test_a_planted_mailbox_is_refused_under_the_account(servers, open_folder, make_account, planted):
    account, bob, mallory = make_account(), make_account(), make_account()
    server = serve_as(servers, open_folder, account, local_users="system")
    mailbox = server.mailboxes / bob
    target = open_folder / "target"
    target.write_bytes(b"")
    if planted == "symlink":
        mailbox.symlink_to(target)
    elif planted == "hard link":
        shutil.chown(target, bob, bob)
        os.link(target, mailbox)
    else:
        mailbox.write_bytes(b"")
        shutil.chown(mailbox, mallory, mallory)
    conn = server.session()
    assert transaction(conn, "carol@example.org", [f"{bob}@localhost"], message("planted")).code == 250
    server.wait_log(r"refusing to deliver into it", timeout=10)
    assert target.read_bytes() == b""
    assert b"planted" not in Path(mailbox).read_bytes()


def _children(pid):
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid):
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.parametrize("aliases_owner", ["user", "root"])
def test_a_pipe_alias_runs_as_the_owner_of_the_aliases_file(servers, open_folder, make_account, aliases_owner):
    """Never as root, never as the server's account: a root-owned aliases file runs its commands as nobody."""
    account, owner = make_account(), make_account()
    expected = pwd.getpwnam(owner if aliases_owner == "user" else "nobody")
    out = open_folder / "out"
    out.mkdir()
    out.chmod(0o777)
    aliases = open_folder / "aliases"
    aliases.write_text(f'robot: "|id -u > {out}/uid; id -G > {out}/groups; cat > {out}/message"\n')
    if aliases_owner == "user":
        shutil.chown(aliases, owner, owner)
    server = serve_as(servers, open_folder, account, aliases=str(aliases), alias_commands=True)
    conn = server.session()
    assert transaction(conn, "carol@example.org", ["robot@localhost"], message("for the robot")).code == 250
    assert wait_until(lambda: (out / "message").exists() and b"for the robot" in (out / "message").read_bytes(),
                      10), server.log()
    assert int((out / "uid").read_text()) == expected.pw_uid
    assert (out / "groups").read_text().split() == [str(expected.pw_gid)], "no supplementary groups of root"
    assert os.stat(out / "message").st_uid == expected.pw_uid
    server.wait_log(r"robot.*status=sent", timeout=10)


def test_sighup_rereads_a_key_only_root_may_read(servers, open_folder, make_account):
    account = make_account()
    cert, key = self_signed(open_folder)
    key.chmod(0o600)  # root's alone: the helper reads it for the daemon
    server = serve_as(servers, open_folder, account, tls_certificate=str(cert), tls_key=str(key))
    # A new pair that is valid for 90 days instead of 30, over the old files.
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
            "-out", str(cert), "-days", "90", "-subj", "/CN=postel.test")
    key.chmod(0o600)
    server.proc.send_signal(signal.SIGHUP)
    until = server.wait_log(r"reload: TLS certificate valid until (\S+)").group(1)
    expected = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=90)).strftime("%Y-%m-%d")
    assert until.startswith(expected), (until, expected)
    assert "keeping the old TLS" not in server.log()


@pytest.fixture
def setgid_install(open_folder, make_account):
    """Item 4's install mode: a copy of the binary set-group-id to the server's group, a spool shared with that
    group (2770), and a user of the host who is in no group of the server's."""
    account, user, other = make_account(), make_account(), make_account()
    binary = open_folder / "bin" / "postel"
    binary.parent.mkdir()
    shutil.copy(POSTEL_BIN, binary)
    shutil.chown(binary, "root", account)
    binary.chmod(0o2755)
    for name in ("spool", "mailboxes"):
        (open_folder / name).mkdir()
        shutil.chown(open_folder / name, account, account)
    (open_folder / "spool").chmod(0o2770)
    return open_folder, binary, account, user, other


def run_as(user, argv, folder, input=b"", env=None):
    """Runs `argv` as `user` (real and effective ids, no supplementary groups) in `folder`."""
    full_env = {"PATH": os.environ["PATH"], "RUST_LOG": "info", **(env or {})}
    return subprocess.run([str(a) for a in argv], input=input, capture_output=True, timeout=30, cwd=folder,
                          env=full_env, user=user, group=pwd.getpwnam(user).pw_gid, extra_groups=[])


def test_the_setgid_sendmail_install_trusts_its_caller(servers, setgid_install):
    """Item 4: called through the set-group-id binary, configuration from the caller (-C, --config,
    $POSTEL_CONFIG) is ignored and the message only queued for the daemon, which delivers it."""
    folder, binary, account, user, _ = setgid_install
    evil = folder / "evil.toml"
    evil.write_text("this is not the configuration\n")
    evil.chmod(0o644)
    server = Postel(folder, user=account, spool_dir="./spool", mailbox_dir="./mailboxes", delivery_workers=2)
    servers.append(server)
    server.wait_log("postel ready")
    run = run_as(user, [binary, "sendmail", "-v", "-C", evil, "alice@localhost"], folder,
                 input=b"Subject: through the setgid binary\n\nhello\n", env={"POSTEL_CONFIG": str(evil)})
    assert run.returncode == 0, run.stderr
    assert b"evil.toml" not in run.stderr, run.stderr
    mailbox = folder / "mailboxes" / "alice"
    assert wait_until(lambda: mailbox.exists() and b"through the setgid binary" in mailbox.read_bytes(), 15), \
        server.log()
    run = run_as(user, [binary, "queue", "list", "--spool", "/tmp"], folder)
    assert run.returncode == 64 and b"--spool" in run.stderr, run.stderr


def test_the_setgid_sendmail_never_delivers_and_queue_commands_act_for_the_submitter(setgid_install):
    folder, binary, account, user, other = setgid_install
    run = run_as(user, [binary, "sendmail", "-v", "alice@localhost"], folder, input=b"Subject: waits\n\nx\n")
    assert run.returncode == 0, run.stderr
    assert b"waits" in run.stderr, run.stderr
    queued = sorted((folder / "spool" / "queue").iterdir())
    assert len(queued) == 1
    assert (os.stat(queued[0]).st_uid, mode(queued[0])) == (pwd.getpwnam(user).pw_uid, 0o660)
    queue_id = queued[0].name
    assert not (folder / "mailboxes" / "alice").exists(), "the caller delivered in-process"
    run = run_as(user, [binary, "queue", "deliver", queue_id], folder)
    assert run.returncode == 77 and b"only root and the server's account deliver" in run.stderr, run.stderr
    assert not (folder / "mailboxes" / "alice").exists()
    assert run_as(user, [binary, "queue", "show", queue_id], folder).returncode == 0
    for command in ("show", "remove"):
        run = run_as(other, [binary, "queue", command, queue_id], folder)
        assert run.returncode == 77 and b"not your message" in run.stderr, (command, run.stderr)
    assert queued[0].exists()
    run = subprocess.run([binary, "queue", "show", queue_id], cwd=folder, capture_output=True, timeout=30)
    assert run.returncode == 0 and b"Subject: waits" in run.stdout, run.stderr


def test_root_running_the_queue_as_the_account_delivers_into_a_mailbox_only_its_user_may_open(setgid_install):
    """With no daemon, `postel queue run` by root becomes the account with the privileged helper started first, as
    the daemon does; root's set-group-id copy of the binary may start it. Root still sees a user's message."""
    folder, binary, account, user, owner = setgid_install
    box = folder / "mailboxes" / owner
    box.write_bytes(b"")
    shutil.chown(box, owner, owner)
    box.chmod(0o600)
    config = write_config(folder, user=account, local_users="system", **DELIVER)
    run = run_as(user, [binary, "sendmail", f"{owner}@localhost"], folder, input=b"Subject: for the queue run\n\nx\n")
    assert run.returncode == 0, run.stderr
    (queued,) = (folder / "spool" / "queue").iterdir()
    run = subprocess.run([binary, "queue", "show", queued.name, "--config", config], capture_output=True, timeout=30)
    assert run.returncode == 0 and b"for the queue run" in run.stdout, run.stderr
    run = subprocess.run([binary, "queue", "run", "--config", config], capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert b"for the queue run" in box.read_bytes(), run.stderr
    assert (os.stat(box).st_uid, mode(box)) == (pwd.getpwnam(owner).pw_uid, 0o600)
    assert "Mail queue is empty" in queue_list(config)


def test_roots_sendmail_with_no_daemon_delivers_as_root_into_a_mailbox_only_its_user_may_open(setgid_install):
    """sendmail run by root (through the set-group-id copy called sendmail, as mail(1) runs it) queues as the
    account and starts the background delivery as root, which starts its helper before it becomes the account.
    The sender is root."""
    folder, binary, account, _, owner = setgid_install
    sendmail = binary.with_name("sendmail")
    os.link(binary, sendmail)
    box = folder / "mailboxes" / owner
    box.write_bytes(b"")
    shutil.chown(box, owner, owner)
    box.chmod(0o600)
    config = write_config(folder, user=account, local_users="system", **DELIVER)
    run = subprocess.run([sendmail, "--config", config, "-v", f"{owner}@localhost"], cwd=folder,
                         input=b"Subject: from root\n\nx\n", capture_output=True, timeout=30)
    assert run.returncode == 0 and b"delivering in the background" in run.stderr, run.stderr
    assert wait_until(lambda: b"from root" in box.read_bytes(), 15), queue_list(config)
    (delivered,) = mbox_messages(box)
    assert delivered["From"].startswith("root@") and delivered["Return-Path"].startswith("<root@"), delivered
    assert (os.stat(box).st_uid, mode(box)) == (pwd.getpwnam(owner).pw_uid, 0o600)
    assert wait_until(lambda: "Mail queue is empty" in queue_list(config), 15), queue_list(config)


def test_inetd_started_as_root_serves_as_the_account(open_folder, make_account):
    account = make_account()
    for name in ("spool", "mailboxes"):
        (open_folder / name).mkdir()
        shutil.chown(open_folder / name, account, account)
    config = write_config(open_folder, user=account)
    dialogue = (b"EHLO client.test\r\nMAIL FROM:<carol@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n"
                b"Subject: over inetd\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    run = postel(["inetd"], config=config, input=dialogue)
    assert run.returncode == 0 and b"250 2.0.0 Ok: queued" in run.stdout, run.stdout + run.stderr
    uid = pwd.getpwnam(account).pw_uid
    files = [p for p in (open_folder / "spool").rglob("*")]
    assert files and all(os.stat(p).st_uid == uid for p in files), [(p, os.stat(p).st_uid) for p in files]


def test_a_crash_after_an_append_to_a_mailbox_only_its_user_may_open_is_repaired(servers, open_folder,
                                                                                   make_account):
    """The check after a crash reads the mailbox the journal announced: under the account, a system user's 0600
    mailbox is opened by the helper. strace kills the daemon after the append, before the journal says it is done
    (when it removes the dot-lock: the one call of its kind, whichever thread makes it, since strace counts calls
    per thread); the restarted daemon must find the message there, not deliver it again nor wait for ever."""
    strace = shutil.which("strace")
    if not strace:
        pytest.skip("strace is not installed (tests/setup-tools.sh installs it)")
    account, bob = make_account(), make_account()
    for name in ("spool", "mailboxes"):
        (open_folder / name).mkdir()
        shutil.chown(open_folder / name, account, account)
    config = write_config(open_folder, user=account, local_users="system", **DELIVER)
    port = int(re.search(r"127\.0\.0\.1:(\d+)", config.read_text())[1])
    with open(open_folder / "traced.log", "wb") as log:
        traced = subprocess.Popen(
            [strace, "-f", "-qq", "-o", str(open_folder / "strace.out"), "-P", str(open_folder / "mailboxes" / f"{bob}.lock"),
             "-e", "trace=unlink,unlinkat", "-e", "inject=unlink,unlinkat:signal=KILL:when=1",
             str(POSTEL_BIN), "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, RUST_LOG="info"))
    try:
        assert wait_until(lambda: accepts(port), 10), (open_folder / "traced.log").read_text()
        conn = SmtpConn.connect(port)
        conn.greet()
        assert transaction(conn, "carol@example.org", [f"{bob}@localhost"], message("once")).code == 250
        conn.close()
        traced.wait(10)
    finally:
        if traced.poll() is None:
            # Killing strace alone would let the daemon it traces run on, detached.
            for pid in _children(traced.pid):
                os.kill(pid, signal.SIGKILL)
            traced.kill()
        traced.wait()  # the helper exits by itself once the daemon's end of its socket is closed
    box = open_folder / "mailboxes" / bob
    assert len(message_ids(box)) == 1, "the kill did not land after the append"
    server = Postel(open_folder, user=account, local_users="system", **DELIVER)
    servers.append(server)
    assert wait_until(lambda: "Mail queue is empty" in queue_list(server.config_path), 15), server.log()
    assert len(message_ids(box)) == 1, server.log()



@pytest.mark.parametrize("aliases_owner", ["user", "root"])
def test_a_file_alias_is_written_as_the_owner_of_the_aliases_file(servers, open_folder, make_account,
                                                                  aliases_owner):
    """A `/file` target is opened by the helper as the aliases file's owner (nobody for root's file), never by the
    server's account: the file is created 0600 for that owner in a directory only the owner may write."""
    account, owner = make_account(), make_account()
    writer = pwd.getpwnam(owner if aliases_owner == "user" else "nobody")
    private = open_folder / "private"
    private.mkdir(mode=0o700)
    os.chown(private, writer.pw_uid, writer.pw_gid)
    archive = private / "archive"
    aliases = open_folder / "aliases"
    aliases.write_text(f"archive: {archive}\n")
    if aliases_owner == "user":
        shutil.chown(aliases, owner, owner)
    server = serve_as(servers, open_folder, account, aliases=str(aliases), alias_files=True)
    conn = server.session()
    for text in ("first copy", "second copy"):
        assert transaction(conn, "carol@example.org", ["archive@localhost"], message(text)).code == 250
    assert wait_until(lambda: archive.exists() and b"second copy" in archive.read_bytes(), 10), server.log()
    info = os.stat(archive)
    assert (info.st_uid, mode(archive)) == (writer.pw_uid, 0o600)
    assert len(message_ids(archive)) == 2, server.log()
    assert not any(private.glob("*.lock")), "no dot-lock is left behind"


@pytest.mark.parametrize("planted", ["symlink", "hard link", "someone else's"])
def test_a_planted_alias_file_is_refused(servers, open_folder, make_account, planted):
    """The helper opens an alias's file with the rule of mailboxes: no symbolic link, one link, owned by the
    account it is written as."""
    account, owner, mallory = make_account(), make_account(), make_account()
    box = open_folder / "box"
    box.mkdir(mode=0o755)
    shutil.chown(box, owner, owner)
    target, archive = box / "target", box / "archive"
    target.write_bytes(b"")
    shutil.chown(target, owner, owner)
    aliases = open_folder / "aliases"
    aliases.write_text(f"archive: {archive}\n")
    shutil.chown(aliases, owner, owner)
    if planted == "symlink":
        archive.symlink_to(target)
    elif planted == "hard link":
        os.link(target, archive)
    elif planted == "someone else's":
        archive.write_bytes(b"")
        archive.chmod(0o666)  # writable by the owner of the aliases, but not theirs
        shutil.chown(archive, mallory, mallory)
    server = serve_as(servers, open_folder, account, aliases=str(aliases), alias_files=True)
    conn = server.session()
    assert transaction(conn, "carol@example.org", ["archive@localhost"], message("planted")).code == 250
    server.wait_log("refusing to deliver into it", timeout=10)
    assert target.read_bytes() == b""


@pytest.mark.parametrize("owner", ["the user", "someone else"])
def test_send_reaches_a_terminal_through_the_helper_without_group_tty(servers, open_folder, make_account, owner):
    """Under `user`, the server's account (not in group tty) cannot open terminals: the helper opens the one utmp
    lists for the recipient, only when it is the recipient's, and passes it over."""
    account, bob = make_account(), make_account()
    terminal = Terminal()
    try:
        if owner == "the user":
            os.chown(terminal.path, pwd.getpwnam(bob).pw_uid, -1)
        utmp = open_folder / "utmp"
        utmp.write_bytes(utmp_record(bob, terminal.line))
        utmp.chmod(0o644)
        server = serve_as(servers, open_folder, account, local_users="system", terminal_delivery=True,
                          utmp_file=str(utmp))
        assert grp.getgrnam("tty").gr_gid not in ids(server.pid, "Groups"), "the account has no group tty"
        conn = server.session()
        reply = message_to(conn, "SEND", [f"{bob}@localhost"], b"Subject: now\r\n\r\nLook up.\r\n")
        if owner == "the user":
            assert reply.code == 250 and "written to 1 terminal(s)" in reply.text, reply
            shown = terminal.read()
            assert b"Look up.\r\n" in shown and shown.endswith(b"EOF\r\n"), shown
        else:
            assert reply.code == 450, reply
            server.wait_log("belongs to someone else", timeout=5)
            assert terminal.read(timeout=0.3) == b""
    finally:
        terminal.close()
