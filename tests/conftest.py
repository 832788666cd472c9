"""Fixtures that run the real `postel` binary on 127.0.0.1 (see helpers.py).

`postel` starts `postel serve` with the test config in a fresh temporary
folder and yields a `helpers.Postel`; `make_postel(**config)` starts one with
other config keys (several may run in one test). Every server is killed at
teardown, and its log must not show a panic; the log is printed when a test
fails.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import POSTEL_BIN, Postel, finish_servers  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


def _finish(request, servers):
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    problems = finish_servers(servers, failed)
    assert not problems, "; ".join(problems)


@pytest.fixture
def make_postel(tmp_path, request):
    """make_postel(**config) -> a started Postel; several may run in one test."""
    servers = []

    def start(**config):
        folder = tmp_path / f"postel{len(servers)}"
        folder.mkdir()
        server = Postel(folder, **config)
        servers.append(server)
        return server

    if not POSTEL_BIN.is_file():
        pytest.fail(f"no postel binary at {POSTEL_BIN}: run 'cargo build' (or set POSTEL_BIN)")
    yield start
    _finish(request, servers)


@pytest.fixture
def postel(make_postel):
    """A Postel with the test defaults: local users alice and bob, hostname postel.test."""
    return make_postel()

