"""`streamer run --once`: the files already in the directory, each finished, then exit;
resumed from the checkpoint like `run`."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port
from harness import SUMMARY, is_trouble, parse_log_line
from recordings import GrowingFile, record

from integration.daemons import assert_exact
from integration.servers import MinioUser, manifest_of, object_bytes

pytestmark = pytest.mark.integration

KiB = 1024


OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"


def recordings(ffmpeg, directory, names, seconds=2, age=60):
    """Finished recordings, last written `age` seconds ago."""
    paths = [directory / name for name in names]
    for path in paths:
        assert record(ffmpeg, path, seconds, "fragmented", live=False).wait(60) == 0
        old = time.time() - age
        os.utime(path, (old, old))
    return paths


def chunk_keys(server, bucket, instance, stream_id) -> list[str]:
    prefix = f"rec/{instance}/{stream_id}/chunks/"
    return [o.object_name for o in server.client.list_objects(bucket, prefix, True)]


def cron_line() -> str:
    """The command of the crontab line in docs/operations.md, as cron hands it to sh."""
    block = re.search(r"```crontab\n(.*?)```", OPERATIONS.read_text(), re.S)[1]
    entry = next(line for line in block.splitlines() if line and not line.startswith("#"))
    return entry.split(None, 5)[5]


def test_once_uploads_what_is_there_waits_for_what_grows_and_exits_0(make_daemon, minio, ffmpeg):
    daemon = make_daemon(stream={"idle_timeout": 5})
    finished = recordings(ffmpeg, daemon.watch, ["a.mp4", "b.mp4"])
    growing = GrowingFile(daemon.watch / "live.mp4", total=600 * KiB, rate=150 * KiB).start()
    time.sleep(0.5)
    daemon.start(args=["--once"])
    (daemon.watch / "late.mp4").write_bytes(b"l" * 100 * KiB)  # after the first scan
    assert daemon.process.wait(120) == 0
    growing.wait()

    done = {e["stream_id"]: e for e in daemon.find("stream_finished")}
    by_name = {sid.split("-2")[0]: sid for sid in done}
    assert sorted(by_name) == ["a", "b", "live"], "late.mp4 is left for the next run"
    for path in [*finished, growing.path]:
        assert_exact(minio, daemon, by_name[path.stem], path)
    assert [done[by_name[p.stem]]["status"] for p in finished] == ["complete", "complete"]
    # The quiet files were finished at once, not idle_timeout after they were found.
    started = daemon.find("batch_started")[0]
    assert started["streams"] == 3
    summary = daemon.find("batch_finished")[0]
    assert (summary["finished"], summary["unfinished"]) == (3, [])
    assert daemon.output() == "3 of 3 streams finished (2 complete, 1 invalid)\n"


def test_once_killed_midway_resumes_and_uploads_nothing_twice(make_daemon, minio):
    daemon = make_daemon(stream={"idle_timeout": 2})
    names = ["one.mp4", "two.mp4", "three.mp4"]
    for name in names:
        (daemon.watch / name).write_bytes(os.urandom(1536 * KiB))
    daemon.start(args=["--once"])
    daemon.wait_for("chunk_uploaded", count=8)
    daemon.kill()
    daemon.start(args=["--once"])
    assert daemon.process.wait(120) == 0

    uploaded = collections.Counter(
        (e["stream_id"], e["index"]) for e in daemon.find("chunk_uploaded")
    )
    assert uploaded and max(uploaded.values()) == 1, "a chunk uploaded twice"
    done = {e["stream_id"].split("-2")[0]: e["stream_id"] for e in daemon.find("stream_finished")}
    assert sorted(done) == ["one", "three", "two"]
    for name in names:
        assert_exact(minio, daemon, done[name.removesuffix(".mp4")], daemon.watch / name)


def test_once_stopped_or_timed_out_before_every_stream_finished_exits_1_naming_them(make_daemon):
    daemon = make_daemon(stream={"idle_timeout": 60})
    GrowingFile(daemon.watch / "endless.mp4", total=8192 * KiB, rate=64 * KiB).start()
    time.sleep(0.3)
    daemon.expect(exit_codes=(1,)).start(args=["--once"])
    daemon.wait_for("chunk_uploaded")
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(30) == 1
    stream_id = daemon.find("stream_discovered")[0]["stream_id"]
    assert daemon.output() == f"0 of 1 streams finished; not finished: {stream_id}\n"

    daemon.expect(exit_codes=(1,)).start(args=["--once", "--timeout", "3"])
    assert daemon.process.wait(60) == 1
    timed_out = daemon.find("batch_timed_out")[0]
    assert (timed_out["timeout"], timed_out["unfinished"]) == (3.0, [stream_id])
    assert daemon.output() == f"0 of 1 streams finished; not finished: {stream_id}\n"


def test_one_daemon_per_checkpoint_store(make_daemon):
    first = make_daemon().start()
    store = first.config_path.parent / "checkpoint"
    second = make_daemon(home="second", checkpoint={"path": str(store)})
    second.expect("start_failed", exit_codes=(3,)).start(wait=False)
    assert second.process.wait(30) == 3
    failed = second.find("start_failed")[0]
    assert f"another streamer daemon (pid {first.process.pid}) runs" in failed["error"]
    assert "(checkpoint.path, STREAMER_CHECKPOINT_PATH)" in failed["error"]
    first.stop()
    assert second.start().stop() == 0, "free again once the first has stopped"


def test_the_cron_recipe_beside_a_daemon_prunes_the_chunks_deletes_the_files_and_exits_0(
    make_daemon, minio, ffmpeg, tmp_path
):
    """docs/operations.md's crontab line, run as cron would, with a configuration like
    its example: its own store, instance and directory, metrics off, beside a daemon."""
    make_daemon().start()
    job = make_daemon(
        home="archive",
        instance="test-host-archive",
        metrics={"enabled": False},
        stream={"keep_chunks": False, "assemble": True},
        retention={"delete_after_upload": True},
    )
    # Old enough for retention.min_age, and for a filesystem where no lease can be taken.
    paths = recordings(ffmpeg, job.watch, ["a.mp4", "b.mp4"], age=3600)
    recorded = {str(path): path.read_bytes() for path in paths}
    log = tmp_path / "archive.log"
    command = (
        cron_line()
        .replace("/opt/streamer/bin/streamer", str(Path(sys.executable).parent / "streamer"))
        .replace("/etc/streamer/archive.json", str(job.config_path))
        .replace("/var/log/streamer/archive.log", str(log))
    )
    assert command.count(str(log)) == 2 and str(job.config_path) in command

    done = subprocess.run(
        ["/bin/sh", "-c", command], env=job.env, capture_output=True, text=True, timeout=300
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), "exit status not 0"
    events = [parse_log_line(line) for line in log.read_bytes().splitlines()]
    summary = [e["line"] for e in events if SUMMARY.match(e.get("line", ""))]
    assert summary == [
        "2 of 2 streams finished (2 complete); 2 files deleted; chunks of 2 streams pruned"
    ]
    assert [e for e in events if is_trouble(e) and not SUMMARY.match(e.get("line", ""))] == []
    batch = next(e for e in events if e["event"] == "batch_finished")
    assert (batch["files_deleted"], batch["chunks_pruned"], batch["left"]) == (2, 2, {})
    for finished in (e for e in events if e["event"] == "stream_finished"):
        stream_id = finished["stream_id"]
        path = next(e["path"] for e in events if e.get("stream_id") == stream_id and "path" in e)
        assert chunk_keys(minio, job.bucket, "test-host-archive", stream_id) == []
        manifest = manifest_of(minio.client, job.bucket, stream_id, "rec/test-host-archive")
        whole = object_bytes(minio.client, job.bucket, manifest["assembled"]["key"])
        assert whole == recorded.pop(path)
        assert manifest["chunks_deleted_at"] and manifest["source"]["deleted_at"]
        assert not os.path.exists(path)
    assert recorded == {}


def test_once_on_the_metrics_port_of_a_daemon_says_so_and_leaves_its_fresh_store_untied(
    make_daemon,
):
    port = free_port()
    make_daemon(metrics={"port": port}).start()
    job = make_daemon(home="archive", metrics={"port": port})  # and the daemon's instance
    (job.watch / "cam.mp4").write_bytes(os.urandom(100 * KiB))
    job.expect("start_failed", exit_codes=(3,)).start(args=["--once"], wait=False)
    assert job.process.wait(30) == 3
    error = job.find("start_failed")[0]["error"]
    assert f"127.0.0.1:{port} (metrics.host, metrics.port)" in error
    assert "another process listens there" in error and "metrics.enabled false" in error
    # As the message says, and under an instance name of its own: the store takes it.
    fixed = make_daemon(home="archive", instance="test-host-archive", metrics={"port": 0})
    fixed.start(args=["--once"], wait=False)
    assert fixed.process.wait(60) == 0
    assert fixed.find("instance", this_run=True)[0]["instance"] == "test-host-archive"
    assert fixed.output() == "1 of 1 streams finished (1 invalid)\n"


def test_a_fresh_store_refused_its_instance_name_takes_another_at_its_next_start(make_daemon):
    make_daemon().start()  # holds the claim on instance test-host
    job = make_daemon(home="archive", workers={"count": 1})  # its own store and metrics port
    (job.watch / "cam.mp4").write_bytes(os.urandom(100 * KiB))
    job.expect("instance_taken", "uploader_died", "halting", exit_codes=(3,))
    job.start(args=["--once"], wait=False)
    assert job.process.wait(60) == 3
    assert "(instance, STREAMER_INSTANCE)" in job.find("instance_taken")[0]["error"]
    fixed = make_daemon(home="archive", instance="test-host-archive", workers={"count": 1})
    fixed.start(args=["--once"], wait=False)
    assert fixed.process.wait(60) == 0
    assert fixed.find("instance_released", instance="test-host")
    assert fixed.output() == "1 of 1 streams finished (1 invalid)\n"


def test_once_prunes_and_deletes_what_earlier_runs_finished(make_daemon, minio, ffmpeg):
    first = make_daemon()  # chunks and files kept
    (path,) = recordings(ffmpeg, first.watch, ["cam.mp4"], age=3600)
    first.start(args=["--once"], wait=False)
    assert first.process.wait(120) == 0
    stream_id = first.find("stream_finished")[0]["stream_id"]
    assert chunk_keys(minio, first.bucket, "test-host", stream_id) and path.exists()

    later = make_daemon(stream={"keep_chunks": False}, retention={"delete_after_upload": True})
    later.start(args=["--once"], wait=False)
    assert later.process.wait(120) == 0
    assert (
        later.output() == "0 of 0 streams finished; 1 files deleted; chunks of 1 streams pruned\n"
    )
    assert chunk_keys(minio, later.bucket, "test-host", stream_id) == []
    assert not path.exists()


def test_once_exits_1_naming_the_chunks_s3_would_not_let_it_delete(
    make_daemon, minio, bucket, ffmpeg, tmp_path
):
    user = MinioUser(minio, bucket, tmp_path)
    user.refuse_puts("*", action="s3:DeleteObject")
    daemon = make_daemon(
        s3={"access_key": user.access_key, "secret_key": user.secret_key},
        stream={"keep_chunks": False},
        retention={"delete_after_upload": True},
    )
    (path,) = recordings(ffmpeg, daemon.watch, ["cam.mp4"], age=3600)
    daemon.expect("chunks_kept", exit_codes=(1,)).start(args=["--once"], wait=False)
    assert daemon.process.wait(120) == 1
    stream_id = daemon.find("stream_finished")[0]["stream_id"]
    assert chunk_keys(minio, bucket, "test-host", stream_id)
    assert not path.exists(), "proven by its chunks, the file goes all the same"
    assert daemon.output() == (
        f"1 of 1 streams finished (1 complete); 1 files deleted; "
        f"left: chunks of {stream_id} (kept, chunks_kept says why)\n"
    )
    left = daemon.find("batch_finished")[0]["left"]
    assert left == {f"chunks of {stream_id}": "kept, chunks_kept says why"}
