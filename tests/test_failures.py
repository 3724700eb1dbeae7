"""Failure paths of the spine, each made to happen for real."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import (
    ACCESS_KEY,
    SECRET_KEY,
    GrowingFile,
    free_port,
    manifest_of,
    reassemble,
    sha256_file,
    wait_until,
)

pytestmark = pytest.mark.integration

KiB = 1024


def test_a_killed_uploader_is_replaced_and_its_stream_resumes(make_daemon, minio):
    daemon = make_daemon(workers=1).start()
    writer = GrowingFile(daemon.watch / "victim.mp4", total=1536 * KiB, rate=256 * KiB).start()
    daemon.wait_for("chunk_uploaded", count=3)
    [victim] = daemon.uploader_pids()
    os.kill(victim, signal.SIGKILL)

    died = daemon.wait_for("uploader_died")[0]
    assert died["exit_code"] == -signal.SIGKILL and died["streams"]
    assert daemon.wait_for("uploader_spawned", count=2)[1]["pid"] != victim
    writer.wait()
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = manifest_of(minio.client, daemon.bucket, event["stream_id"])
    data = reassemble(minio.client, daemon.bucket, manifest)
    assert hashlib.sha256(data).hexdigest() == sha256_file(writer.path)
    assert daemon.process.poll() is None


def test_too_many_uploader_deaths_halt_the_supervisor(make_daemon):
    daemon = make_daemon(workers=1).start()
    for n in range(6):
        pid = daemon.wait_for("uploader_spawned", count=n + 1)[n]["pid"]
        daemon.wait_for("uploader_started", count=n + 1)
        os.kill(pid, signal.SIGKILL)
    assert daemon.process.wait(20) == 1
    assert daemon.find("halting")[0]["reason"].startswith("more than 5 uploader restarts")


def test_a_second_sigterm_forces_an_immediate_stop(make_daemon):
    daemon = make_daemon(grace_period=60).start()
    [uploader, _] = daemon.uploader_pids()
    os.kill(uploader, signal.SIGSTOP)  # it can no longer finish gracefully
    daemon.signal(signal.SIGTERM)
    daemon.wait_for("stopping")
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(10) == 1
    assert daemon.find("forced_stop")
    wait_until(lambda: not os.path.exists(f"/proc/{uploader}"), 10, what="uploader reaped")


def test_the_grace_period_ends_a_stuck_uploader(make_daemon):
    daemon = make_daemon(grace_period=1).start()
    [uploader, _] = daemon.uploader_pids()
    os.kill(uploader, signal.SIGSTOP)
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(10) == 0
    assert daemon.find("grace_period_expired")


def test_s3_unreachable_is_retried_with_backoff_not_fatal(make_daemon):
    dead = f"127.0.0.1:{free_port()}"
    daemon = make_daemon(s3={"endpoint": dead, "connect_timeout": 1}).start()
    (daemon.watch / "waiting.mp4").write_bytes(b"x" * 100 * KiB)
    retries = daemon.wait_for("s3_unreachable", count=6, timeout=30)
    first = [r for r in retries if r["role"] == "uploader.0"]
    assert [r["attempt"] for r in first[:3]] == [1, 2, 3]
    assert "refused" in first[0]["error"].lower()
    assert daemon.find("stream_discovered") and not daemon.find("chunk_uploaded")
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def test_a_stuck_uploader_does_not_stall_the_supervisor(make_daemon):
    daemon = make_daemon(workers=1, grace_period=2).start()
    [uploader] = daemon.uploader_pids()
    os.kill(uploader, signal.SIGSTOP)
    # 3,000 chunk boundaries: more commands than a pipe holds, none of them read.
    with open(daemon.watch / "flood.mp4", "wb") as f:
        for _ in range(3000):
            f.write(b"\0" * 64 * KiB)
            f.flush()
    daemon.wait_for("stream_discovered")
    time.sleep(1)
    port = json.loads(daemon.config_path.read_text())["metrics"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        assert reply.status == 200
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(15) == 0
    assert daemon.find("grace_period_expired")


def test_a_file_name_that_is_not_utf8_does_not_stop_the_others(make_daemon, minio):
    daemon = make_daemon().start()
    bad = os.path.join(os.fsencode(daemon.watch), b"bad-\xff.mp4")
    with open(bad, "wb") as f:
        f.write(b"x" * 100 * KiB)
    good = daemon.watch / "good.mp4"
    good.write_bytes(b"y" * 100 * KiB)
    event = daemon.wait_for("stream_finished", timeout=30)[0]
    assert event["stream_id"].startswith("good-")
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def run_once(tmp_path, config: dict, timeout=30) -> subprocess.CompletedProcess:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    return subprocess.run(
        [sys.executable, "-m", "streamer", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_a_missing_watch_directory_stops_the_start_with_status_3(tmp_path):
    result = run_once(
        tmp_path,
        {
            "watch": {"directory": str(tmp_path / "nope")},
            "checkpoint": {"path": str(tmp_path / "ck")},
            "metrics": {"enabled": False},
        },
    )
    assert result.returncode == 3
    assert "is not a directory" in result.stderr


def test_an_unusable_checkpoint_directory_stops_the_start_with_status_3(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "file").write_text("")
    result = run_once(
        tmp_path,
        {
            "watch": {"directory": str(tmp_path / "in")},
            "checkpoint": {"path": str(tmp_path / "file" / "ck")},
            "metrics": {"enabled": False},
        },
    )
    assert result.returncode == 3
    assert "start_failed" in result.stderr


def test_a_corrupt_checkpoint_store_halts_instead_of_restart_looping(tmp_path, minio):
    (tmp_path / "in").mkdir()
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "data.mdb").write_bytes(b"this is not an LMDB file" * 1000)
    started = time.monotonic()
    result = run_once(
        tmp_path,
        {
            "watch": {"directory": str(tmp_path / "in")},
            "checkpoint": {"path": str(tmp_path / "ck")},
            "s3": {"endpoint": minio.endpoint, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY},
            "metrics": {"enabled": False},
        },
    )
    assert result.returncode == 3
    assert "cannot open checkpoint store" in result.stderr
    assert result.stderr.count('"uploader_spawned"') <= 2, "no uploader was restarted"
    assert time.monotonic() - started < 20


def test_two_instances_share_one_bucket_without_colliding(make_daemon, minio, bucket):
    streams = {}
    for host in ("host-a", "host-b"):
        daemon = make_daemon(home=host, instance=host)
        (daemon.watch / "cam.mp4").write_bytes(hashlib.shake_256(host.encode()).digest(100 * KiB))
        streams[host] = daemon.start()
    for host, daemon in streams.items():
        event = daemon.wait_for("stream_finished", timeout=30)[0]
        manifest = manifest_of(minio.client, bucket, event["stream_id"], prefix=f"rec/{host}")
        data = reassemble(minio.client, bucket, manifest)
        assert data == hashlib.shake_256(host.encode()).digest(100 * KiB)
        assert all(c["key"].startswith(f"rec/{host}/") for c in manifest["chunks"])
        assert daemon.stop() == 0


def test_a_checkpoint_store_keeps_its_instance(tmp_path, minio):
    (tmp_path / "in").mkdir()
    config = {
        "watch": {"directory": str(tmp_path / "in")},
        "checkpoint": {"path": str(tmp_path / "ck")},
        "s3": {"endpoint": minio.endpoint},
        "metrics": {"enabled": False},
    }
    first = run_once_briefly(tmp_path, config)
    assert '"instance":"' in first
    config["instance"] = "another-name"
    result = run_once(tmp_path, config)
    assert result.returncode == 3
    assert "belongs to instance" in result.stderr


def run_once_briefly(tmp_path, config: dict) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamer", "run", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    return stderr
