"""Exit statuses of the command-line programs (README "Exit statuses"): sysexits.h, the same for `postel` and
`sendmail`, and never a panic."""

import shutil
import subprocess

import pytest

from helpers import POSTEL_BIN, postel, write_config


EX_USAGE, EX_DATAERR, EX_IOERR, EX_TEMPFAIL, EX_CONFIG = 64, 65, 74, 75, 78


def status(run, expected):
    stderr = run.stderr.decode(errors="replace")
    assert run.returncode == expected, (run.returncode, stderr)
    assert "panicked" not in stderr, stderr
    return stderr


@pytest.mark.parametrize("args, words", [
    ([], "a command is needed"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["check", "--no-such-option"], "unknown option '--no-such-option'"),
    (["check", "--config"], "--config needs a value"),
    (["serve", "--listen", "localhost"], "is not an ip:port address"),
    (["queue", "list", "--listen", "127.0.0.1:25"], "--listen applies to 'serve' and 'demo' only"),
])
def test_a_wrong_command_line_is_a_usage_error(args, words):
    stderr = status(postel(args), EX_USAGE)
    assert words in stderr and "usage:" in stderr, stderr


@pytest.mark.parametrize("flag", ["-é", "-bé", "-€"])
def test_sendmail_with_a_multibyte_option_letter_is_a_usage_error(tmp_path, flag):
    config = write_config(tmp_path)
    stderr = status(postel(["sendmail", flag, "alice"], config, input=b"x\n"), EX_USAGE)
    assert stderr.startswith("sendmail: "), stderr


def test_an_argument_that_is_not_utf8_is_a_usage_error():
    run = subprocess.run([POSTEL_BIN, b"check", b"--config", b"\xff.toml"], capture_output=True, timeout=10)
    assert "is not UTF-8" in status(run, EX_USAGE)


def test_bad_queue_ids_and_missing_messages_are_data_errors(tmp_path):
    config = write_config(tmp_path)
    assert "is not a queue id" in status(postel(["queue", "show", "nonsense"], config), EX_DATAERR)
    assert "no such message" in status(postel(["queue", "show", "0" * 20], config), EX_DATAERR)
    assert "no such message" in status(postel(["queue", "remove", "0" * 20], config), EX_DATAERR)


def test_a_bad_config_is_a_config_error_for_every_command(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("listen_backlogg = 5\n")
    for args in (["check"], ["serve"], ["queue", "list"], ["inetd"]):
        assert "listen_backlogg" in status(postel(args, config), EX_CONFIG), args
    aliases = write_config(tmp_path, aliases=str(tmp_path / "no-such-aliases"))
    assert "no-such-aliases" in status(postel(["check"], aliases), EX_CONFIG)


def test_a_spool_that_cannot_be_opened_is_a_temporary_failure(tmp_path):
    (tmp_path / "not-a-directory").write_text("")
    config = write_config(tmp_path, spool_dir=str(tmp_path / "not-a-directory"))
    for args in (["queue", "list"], ["queue", "run"], ["sendmail", "alice"], ["sendmail", "-bp"]):
        assert "not-a-directory" in status(postel(args, config, input=b"Subject: x\n\nx\n"), EX_TEMPFAIL), args


def test_a_spool_in_a_newer_format_is_refused_with_how_to_drain_it(tmp_path):
    """doc/spool.md "Format versions": a newer spool stops the daemon and the queue commands before they change
    anything."""
    config = write_config(tmp_path)
    journal = tmp_path / "spool" / "journal"
    journal.write_text("version 99\n")
    for args in (["serve"], ["queue", "list"], ["queue", "run"], ["sendmail", "-bp"]):
        stderr = status(postel(args, config, input=b"Subject: x\n\nx\n"), EX_CONFIG)
        assert "spool format version 99" in stderr and "postel queue run" in stderr, (args, stderr)
    assert journal.read_text() == "version 99\n"


def test_a_server_whose_spool_cannot_start_never_listens(tmp_path):
    """The sockets are bound first and listened on only once the spool is open and the workers run: a client of a
    server that fails to start is refused, never accepted and dropped. strace records each bind and listen."""
    strace = shutil.which("strace")
    assert strace, "strace is not installed (tests/setup-tools.sh installs it)"
    config = write_config(tmp_path)
    (tmp_path / "spool" / "journal").write_text("version 99\n")
    trace = tmp_path / "strace.out"
    run = subprocess.run([strace, "-f", "-qq", "-o", str(trace), "-e", "trace=bind,listen",
                          str(POSTEL_BIN), "serve", "--config", str(config)], capture_output=True, timeout=30)
    assert "spool format version 99" in status(run, EX_CONFIG)
    calls = trace.read_text()
    assert "bind(" in calls and "listen(" not in calls, calls


def test_output_that_cannot_be_written_is_an_io_error(tmp_path):
    config = write_config(tmp_path)
    with open("/dev/full", "wb") as full:
        run = subprocess.run([POSTEL_BIN, "queue", "list", "--config", str(config)], stdout=full,
                             stderr=subprocess.PIPE, timeout=10)
    assert "cannot write the output" in status(run, EX_IOERR)
