"""What every test shares: the check that a test which starts an S3 server is marked
`integration`, and small helpers (free ports, waiting, processes, a clean environment,
logfmt lines). What the tests start has modules of its own: recordings (recordings.py),
the streamer daemon (harness.py), and, for the integration tests, the S3 servers and
proxies (integration/servers.py) and daemons on them (integration/daemons.py); for the unit
tests, the directory-backed S3 (dirstore.py), an uploader or a supervisor in this process
(uploaders.py, supervisors.py), records and stores made by hand (sample_records.py,
commands.py) and a clock the test holds (clock.py)."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import time

import pytest

# The helper modules' asserts explain a failure as the tests' own do.
pytest.register_assert_rewrite("harness", "integration")

# The modules that hold fixtures, registered for every test: a test file outside
# tests/integration/ may have cases marked `integration` that take a server too (a contract
# run on every store, say).
pytest_plugins = [
    "recordings",
    "supervisors",
    "uploaders",
    "integration.servers",
    "integration.daemons",
    "integration.filesystems",
]


# The fixtures that start an S3 server: a test that asks for one is an integration test, and
# must say so (`make unit` runs where no server binary is built).
SERVER_FIXTURES = {"minio", "versitygw", "tls_minio", "tls_versitygw", "server"}


def pytest_collection_modifyitems(config, items):
    unmarked = [
        item.nodeid
        for item in items
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
        and item.get_closest_marker("compose") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start an S3 server but are not marked integration:\n  "
            + "\n  ".join(unmarked)
        )


# Ports for the servers the tests start, each handed out once per run, from below the
# kernel's ephemeral range: no outgoing connection can take one between the check that it
# is free and the server binding it. The start is drawn at random so that two runs on one
# machine rarely meet.
_PORTS = iter(range(random.randrange(10_000, 30_000, 100), 32_000))


def free_port() -> int:
    for port in _PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left below 32000")


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def alive(pid: int) -> bool:
    """The process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def clean_env(extra: dict | None = None) -> dict:
    """What a process the tests start gets: none of the developer's STREAMER_*, AWS_* or
    MINIO_* settings, only what the test sets."""
    keep = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, **(extra or {})}


PAIR = re.compile(r'([a-z0-9_.]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict:
    """A logfmt line's fields, its quoted values decoded; nothing may stand outside them."""
    pairs = PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, "nothing outside key=value pairs"
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}
