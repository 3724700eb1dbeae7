"""Failure paths of the spine, each made to happen for real."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from datetime import datetime

import pytest
from conftest import alive, clean_env, free_port, wait_until
from harness import Daemon, at_least, port_of, scrape
from recordings import GrowingFile, sha256_file

from integration.servers import ACCESS_KEY, SECRET_KEY, manifest_of, objects, reassemble

pytestmark = pytest.mark.integration

KiB = 1024


def test_a_killed_uploader_is_replaced_and_its_stream_resumes(make_daemon, minio):
    daemon = make_daemon(workers=1).expect("uploader_died").start()
    writer = GrowingFile(daemon.watch / "victim.mp4", total=1536 * KiB, rate=256 * KiB).start()
    daemon.wait_for("chunk_uploaded", count=3)
    [victim] = daemon.uploader_pids()
    os.kill(victim, signal.SIGKILL)

    died = daemon.wait_for("uploader_died")[0]
    assert died["exit_code"] == -signal.SIGKILL and died["streams"]
    assert daemon.wait_for("uploader_spawned", count=2)[1]["pid"] != victim
    assert scrape(daemon)["streamer_uploader_restarts_total"] == 1
    writer.wait()
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    stream_id = event["stream_id"]
    manifest = manifest_of(minio.client, daemon.bucket, stream_id)
    data = reassemble(minio.client, daemon.bucket, manifest)
    assert hashlib.sha256(data).hexdigest() == sha256_file(writer.path)
    assert daemon.process.poll() is None
    # Resumed, not restarted: S3 wrote none of the victim's chunks again after it died.
    by_victim = {e["index"] for e in daemon.find("chunk_uploaded", pid=victim)}
    assert len(by_victim) >= 3
    written = objects(minio, daemon.bucket, stream_id)
    died_at = datetime.fromisoformat(died["ts"])
    chunks = f"rec/test-host/{stream_id}/chunks/"
    assert all(written[f"{chunks}{i:06d}"][1] < died_at for i in by_victim), (written, died_at)
    uploaded = [e["index"] for e in daemon.find("chunk_uploaded", stream_id=stream_id)]
    found = [e["index"] for e in daemon.find("chunk_found_in_s3", stream_id=stream_id)]
    assert sorted(uploaded + found) == list(range(manifest["chunk_count"])), "each chunk once"


def test_stopped_uploaders_are_replaced_and_their_recording_finishes_exact(make_daemon, minio):
    daemon = make_daemon(workers={"count": 2, "stall_timeout": 5})
    daemon.expect(uploader_stalled=2).start()
    writer = GrowingFile(daemon.watch / "wedged.mp4", total=1536 * KiB, rate=256 * KiB).start()
    daemon.wait_for("chunk_uploaded", count=2)
    stopped = daemon.uploader_pids()
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)

    stalls = daemon.wait_for("uploader_stalled", count=2, timeout=30)
    assert {e["pid"] for e in stalls} == set(stopped)
    assert any(e["streams"] for e in stalls) and all(e["doing"] for e in stalls)
    wait_until(lambda: len(daemon.uploader_pids()) == 4, 15, what="two new uploaders")
    for pid in stopped:  # too late: they were killed, and no second owner comes of it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    writer.wait()
    stream_id = daemon.wait_for("stream_finished", timeout=60)[0]["stream_id"]
    manifest = manifest_of(minio.client, daemon.bucket, stream_id)
    data = reassemble(minio.client, daemon.bucket, manifest)
    assert hashlib.sha256(data).hexdigest() == sha256_file(writer.path)
    assert scrape(daemon)["streamer_uploader_stalls_total"] == 2
    assert not daemon.find("uploader_died") and daemon.process.poll() is None
    uploaded = [e["index"] for e in daemon.find("chunk_uploaded", stream_id=stream_id)]
    found = [e["index"] for e in daemon.find("chunk_found_in_s3", stream_id=stream_id)]
    assert sorted(uploaded + found) == list(range(manifest["chunk_count"])), "each chunk once"
    assert not [
        e
        for e in daemon.find("chunk_uploaded")
        if e["pid"] in stopped and e["ts"] > stalls[0]["ts"]
    ]


def put_in(directory, module: str, name: str, raises: str) -> dict:
    """The environment of a daemon whose `module.name`, once imported, raises `raises`
    (a bug, or a value no check foresaw), put into its processes by a sitecustomize
    module: the code under test runs as it is, only that one function replaced."""
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import builtins
            import sys


            def broken(*args, **kwargs):
                raise {raises}


            def put_in(name, *args, _import=builtins.__import__, **kwargs):
                imported = _import(name, *args, **kwargs)
                module = sys.modules.get({module!r})
                if module is not None and hasattr(module, {name!r}):
                    setattr(module, {name!r}, broken)
                return imported


            builtins.__import__ = put_in
            """
        )
    )
    return {"PYTHONPATH": str(directory)}


def test_a_bug_in_completion_leaves_its_stream_stuck_and_fails_an_undeclared_test(
    make_daemon, tmp_path
):
    """A FileNotFoundError raised by streamer's own code is not retried quietly as if the
    file were away: the stream is stuck at once, its traceback logged once at error level,
    and the harness fails the test that did not declare it."""
    bug = 'FileNotFoundError(2, "No such file or directory", "/nonexistent/a-bug")'
    env = put_in(tmp_path / "bug", "streamer.uploader.completion", "check_still_idle", bug)
    daemon = make_daemon(
        env=env,
        log={"level": "debug"},
        s3={"retry_base": 0.2, "retry_cap": 1},
    ).start()
    (daemon.watch / "buggy.mp4").write_bytes(b"b" * 100 * KiB)
    stuck = daemon.wait_for("stream_stuck", timeout=30)[0]
    assert "FileNotFoundError" in stuck["reason"] and "a bug" in stuck["reason"]
    again = daemon.wait_for("step_failed_again", count=2, timeout=30)
    assert all(e["level"] == "debug" and "traceback" not in e for e in again)
    [failed] = daemon.find("stream_failed")
    assert failed["level"] == "error" and "check_still_idle" in failed["traceback"]
    assert not daemon.find("upload_retry")

    with pytest.raises(pytest.fail.Exception, match="stream_stuck"):
        daemon.check()
    daemon.expect(stream_failed=1, stream_stuck=1, run=0)
    daemon.check()


def test_an_uploader_that_cannot_start_halts_the_daemon_once_with_a_boot_error(
    make_daemon, tmp_path
):
    """Any exception before an uploader's loop (here the S3 client refusing a value no
    check foresaw) is a boot error: the daemon halts with exit 3, once, instead of
    restarting uploaders that would only fail again."""
    env = put_in(
        tmp_path / "hook", "streamer.chunkstore", "ChunkStore", 'ValueError("no such endpoint")'
    )
    daemon = make_daemon(env=env)
    daemon.expect(uploader_boot_failed=range(1, 3), uploader_died=1, halting=1, exit_codes=(3,))
    daemon.start(wait=False)
    assert daemon.process.wait(30) == 3
    failed = daemon.find("uploader_boot_failed")
    assert "ValueError: no such endpoint" in failed[0]["error"]
    assert len(daemon.find("uploader_spawned")) == 2, "no uploader was restarted"
    [halting] = daemon.find("halting")
    assert halting["reason"] == "an uploader could not start"


def _hold_the_write_lock(path: str, holding, release) -> None:
    from streamer.checkpoint import CheckpointStore

    store = CheckpointStore(path, 1 << 20)
    with store._env.begin(write=True):
        holding.set()
        release.wait(120)


@pytest.mark.parametrize("server", ["minio", "tls_minio"], indirect=True)
@pytest.mark.parametrize("rewritten", [False, True], ids=["same", "rewritten"])
def test_a_chunk_in_s3_but_not_committed_is_found_there_after_a_kill(
    make_daemon, server, rewritten
):
    """The kill falls between a chunk's PUT and its checkpoint commit, every time: the
    test holds LMDB's write lock, so the commit waits while the PUT goes through. If the
    recorder rewrote that chunk meanwhile, its new bytes go to a new revision key and the
    object in S3 stays as it was: an object once written is never overwritten. Over https
    the chunk is known by its crc64nvme, over http by its sha256."""
    tls = {"secure": True, "ca_file": str(server.ca_file)} if server.ca_file else {}
    daemon = make_daemon(workers=1, stream={"idle_timeout": 3}, s3=tls).start()
    path = daemon.watch / "between.mp4"
    data = bytearray(hashlib.shake_256(b"between").digest(3 * 64 * KiB + 1000))
    with open(path, "wb") as f:
        f.write(data[: 64 * KiB + 10])
        f.flush()
        stream_id = daemon.wait_for("chunk_uploaded", index=0)[0]["stream_id"]
        fork = multiprocessing.get_context("fork")
        holding, release = fork.Event(), fork.Event()
        holder = fork.Process(
            target=_hold_the_write_lock,
            args=(str(daemon.config_path.parent / "checkpoint"), holding, release),
        )
        holder.start()
        try:
            assert holding.wait(10)
            f.write(data[64 * KiB + 10 : 2 * 64 * KiB + 10])  # chunk 1 is now whole
            f.flush()
            chunk_1 = f"rec/test-host/{stream_id}/chunks/000001"
            wait_until(lambda: chunk_1 in objects(server, daemon.bucket, stream_id), 30, what="PUT")
            put = objects(server, daemon.bucket, stream_id)[chunk_1]
            [uploader] = daemon.uploader_pids()
            daemon.kill()  # its uploader dies with it, still waiting to commit chunk 1
            wait_until(lambda: not alive(uploader), 10, what="the uploader to die")
        finally:
            release.set()
            holder.join(10)
        assert not daemon.find("chunk_uploaded", index=1), "chunk 1 was never committed"
        if rewritten:
            data[64 * KiB + 100 : 64 * KiB + 104] = b"NEW!"
            with open(path, "r+b") as again:
                again.seek(64 * KiB + 100)
                again.write(b"NEW!")
        daemon.start()
        f.write(data[2 * 64 * KiB + 10 :])
    daemon.wait_for("stream_finished", timeout=60)
    manifest = manifest_of(server.client, daemon.bucket, stream_id)
    assert reassemble(server.client, daemon.bucket, manifest) == data
    assert objects(server, daemon.bucket, stream_id)[chunk_1] == put, "the first PUT stays"
    found = [e["index"] for e in daemon.find("chunk_found_in_s3", stream_id=stream_id)]
    uploaded = [e["index"] for e in daemon.find("chunk_uploaded", stream_id=stream_id)]
    if rewritten:
        assert (found, sorted(uploaded)) == ([], [0, 1, 2, 3])
        assert manifest["chunks"][1]["key"].endswith("/chunks/000001.r1")
    else:
        assert (found, sorted(uploaded)) == ([1], [0, 2, 3])
        assert manifest["chunks"][1]["key"].endswith("/chunks/000001")


def test_too_many_uploader_deaths_halt_the_supervisor(make_daemon):
    daemon = make_daemon(workers=1).expect(uploader_died=6, halting=1, exit_codes=(1,)).start()
    for n in range(6):
        pid = daemon.wait_for("uploader_spawned", count=n + 1)[n]["pid"]
        daemon.wait_for("uploader_started", count=n + 1)
        os.kill(pid, signal.SIGKILL)
    assert daemon.process.wait(20) == 1
    assert daemon.find("halting")[0]["reason"].startswith("more than 5 uploader restarts")


def test_a_second_sigterm_forces_an_immediate_stop(make_daemon):
    daemon = make_daemon(grace_period=60).expect(exit_codes=(1,)).start()
    [uploader, _] = daemon.uploader_pids()
    os.kill(uploader, signal.SIGSTOP)  # it can no longer finish gracefully
    daemon.signal(signal.SIGTERM)
    daemon.wait_for("stopping")
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(10) == 1
    assert daemon.find("forced_stop")
    wait_until(lambda: not os.path.exists(f"/proc/{uploader}"), 10, what="uploader reaped")


def test_ctrl_c_in_a_terminal_stops_gracefully_with_status_0(make_daemon, minio):
    daemon = make_daemon().start()
    writer = GrowingFile(daemon.watch / "ctrl-c.mp4", total=1024 * KiB, rate=256 * KiB).start()
    daemon.wait_for("chunk_uploaded")
    # A terminal sends SIGINT to the whole foreground process group: uploaders included.
    for pid in [daemon.process.pid, *daemon.uploader_pids()]:
        os.kill(pid, signal.SIGINT)
    assert daemon.process.wait(30) == 0
    assert daemon.find("stopped", exit_code=0)
    assert len(daemon.find("uploader_exited", exit_code=0)) == 2
    stream_id = daemon.find("stream_discovered")[0]["stream_id"]
    before = objects(minio, daemon.bucket, stream_id)
    daemon.start()
    writer.wait()
    daemon.wait_for("stream_finished", timeout=60)
    manifest = manifest_of(minio.client, daemon.bucket, stream_id)
    assert reassemble(minio.client, daemon.bucket, manifest) == writer.data
    after = objects(minio, daemon.bucket, stream_id)
    assert before and {k: after[k] for k in before} == before, "resumed, not sent again"


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
    # Each uploader retries on its own jittered schedule: follow one of them.
    first = daemon.wait_for("s3_unreachable", count=3, timeout=30, role="uploader.0")
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
    port = port_of(daemon)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        assert reply.status == 200
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(15) == 0
    assert daemon.find("grace_period_expired")


def test_a_file_name_that_is_not_utf8_does_not_stop_the_others(make_daemon, minio):
    daemon = make_daemon().expect("file_failed").start()  # once, not again at every scan
    bad = os.path.join(os.fsencode(daemon.watch), b"bad-\xff.mp4")
    with open(bad, "wb") as f:
        f.write(b"x" * 100 * KiB)
    good = daemon.watch / "good.mp4"
    good.write_bytes(b"y" * 100 * KiB)
    event = daemon.wait_for("stream_finished", timeout=30)[0]
    assert event["stream_id"].startswith("good-")
    # The odd name is reported, by its bytes, and nothing is made of it in S3.
    failed = daemon.wait_for("file_failed")[0]
    assert failed["path"] == os.fsdecode(bad) and "UnicodeEncodeError" in failed["error"]
    assert [e["path"] for e in daemon.find("stream_discovered")] == [str(good)]
    keys = [o.object_name for o in minio.client.list_objects(daemon.bucket, recursive=True)]
    keys.remove("rec/test-host/.owner")  # the instance's claim
    assert keys and all(k.startswith(f"rec/test-host/{event['stream_id']}/") for k in keys)
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def run_once(tmp_path, config: dict, timeout=30) -> subprocess.CompletedProcess:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = clean_env({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")})
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
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    # No credentials in the configuration: S3 refuses what the uploaders send at start.
    first = Daemon(path, tmp_path / "streamer.log").expect(s3_rejected=at_least(0)).start()
    assert first.find("instance")
    first.check()
    config["instance"] = "another-name"
    result = run_once(tmp_path, config)
    assert result.returncode == 3
    assert "belongs to instance" in result.stderr


def test_a_fifo_or_a_device_in_the_directory_hangs_nothing(make_daemon, minio):
    """A FIFO and a device node named like recordings, and a FIFO renamed over a recording
    while it streams: nothing opens them in a way that blocks, the replaced stream ends
    partial, another recording finishes exact, and SIGTERM stops it at once with 0."""
    daemon = make_daemon(stream={"idle_timeout": 2}).start()
    os.mkfifo(daemon.watch / "pipe.mp4")
    if os.geteuid() == 0:
        os.mknod(daemon.watch / "null.mp4", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    victim = GrowingFile(daemon.watch / "victim.mp4", total=2048 * KiB, rate=1024 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", stream_id=stream_id)
    os.mkfifo(daemon.watch / ".swap")
    os.rename(daemon.watch / ".swap", daemon.watch / "victim.mp4")
    lost = daemon.wait_for("stream_lost", stream_id=stream_id)[0]
    assert lost["reason"] == "replaced by another file before it finished"
    assert daemon.wait_for("stream_finished", stream_id=stream_id)[0]["status"] == "partial"
    victim.wait()

    other = daemon.watch / "other.mp4"
    other.write_bytes(hashlib.shake_256(b"other").digest(300 * KiB))
    finished = daemon.wait_for("stream_finished", count=2)[1]
    assert finished["sha256"] == sha256_file(other)
    assert len(daemon.find("stream_discovered")) == 2, "neither the FIFO nor the device"
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(15) == 0
    assert not daemon.find("grace_period_expired")
