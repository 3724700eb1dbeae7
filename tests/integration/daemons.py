"""Streamer daemons on the test's own S3 server: `make_daemon` writes a configuration for
a fresh watch directory and checkpoint store and starts daemons on it (the harness is
tests/harness.py); and the check that a daemon's upload is its file, byte for byte.
tests/conftest.py registers the fixture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import wait_until
from harness import Daemon
from recordings import sha256_file

from integration.servers import ACCESS_KEY, SECRET_KEY, S3Server, manifest_of, reassemble

# Timeouts and backoff short enough for a fault to show within seconds.
FAST_RETRIES = {"connect_timeout": 1, "read_timeout": 2, "retry_base": 0.2, "retry_cap": 2}


@pytest.fixture
def make_daemon(tmp_path, server, bucket):
    """Build a config for a fresh watch directory and checkpoint store; start daemons on it.
    Daemons made with the same `home` share them (a restart); another `home` is another
    host, with its own directory, store and log."""
    daemons: list[Daemon] = []

    def make(wrapper=(), env=None, home: str = "", **overrides) -> Daemon:
        base = tmp_path / home
        watch = base / "input"
        watch.mkdir(parents=True, exist_ok=True)
        config = {
            "watch": {"directory": str(watch), "rescan_interval": 2},
            "stream": {"chunk_size": 64 * 1024, "idle_timeout": 2},
            "s3": {
                "endpoint": server.endpoint,
                "bucket": bucket,
                "prefix": "rec",
                "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY,
            },
            "checkpoint": {"path": str(base / "checkpoint")},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "workers": {"count": 2},
            "grace_period": 10,
            "instance": "test-host",
        }
        for section, values in overrides.items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:
                config[section] = values
        config_path = base / "config.json"
        config_path.write_text(json.dumps(config))
        daemon = Daemon(config_path, base / "streamer.log", env=env, wrapper=wrapper)
        daemon.watch = watch
        daemon.bucket = bucket
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        daemon.stop()
    for daemon in daemons:
        daemon.check()


def assert_exact(
    server: S3Server, daemon: Daemon, stream_id: str, path: Path, sha256: bool = True
) -> dict:
    """The stream's chunks in S3, joined, are the file, byte for byte, and its manifest
    lists them in order, without gap or overlap; it gives the file's crc64nvme, combined
    from its chunks', and its sha256 (`sha256`: integrity.file_sha256 is on) or none."""
    from awscrt.checksums import crc64nvme

    manifest = manifest_of(server.client, daemon.bucket, stream_id)
    data = reassemble(server.client, daemon.bucket, manifest)
    assert hashlib.sha256(data).hexdigest() == sha256_file(path)
    assert manifest["sha256"] == (sha256_file(path) if sha256 else None)
    assert manifest["crc64nvme"] == f"{crc64nvme(path.read_bytes()):016x}"
    assert manifest["crc64nvme_checked_by"] == "streamer"
    assert manifest["total_size"] == len(data) == path.stat().st_size
    assert [c["index"] for c in manifest["chunks"]] == list(range(manifest["chunk_count"]))
    ends = [c["offset"] + c["size"] for c in manifest["chunks"]]
    assert [c["offset"] for c in manifest["chunks"]] == [0, *ends[:-1]]
    return manifest


def others_flow(server: S3Server, daemon: Daemon, parked: str, path: Path, data: bytes) -> None:
    """Another recording finishes exact while the stream `parked` waits."""
    path.write_bytes(data)
    flowed = wait_until(
        lambda: [e for e in daemon.find("stream_finished") if e["stream_id"] != parked],
        30,
        what="the other stream to finish",
    )[0]
    assert_exact(server, daemon, flowed["stream_id"], path)
    assert not daemon.find("stream_finished", stream_id=parked)
