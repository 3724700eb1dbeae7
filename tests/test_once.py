"""`streamer run --once`: the files already in the directory, each finished, then exit;
resumed from the checkpoint like `run`."""

from __future__ import annotations

import collections
import os
import signal
import time

import pytest
from conftest import GrowingFile, assert_exact, record

from streamer.supervisor.batch import Batch

pytestmark = pytest.mark.integration

KiB = 1024


def recordings(ffmpeg, directory, names, seconds=2):
    """Finished recordings, last written a minute ago."""
    paths = [directory / name for name in names]
    for path in paths:
        assert record(ffmpeg, path, seconds, "fragmented", live=False).wait(60) == 0
        old = time.time() - 60
        os.utime(path, (old, old))
    return paths


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
    daemon.expect("batch_timed_out", exit_codes=(1,)).start(args=["--once"])
    daemon.wait_for("chunk_uploaded")
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(30) == 1
    stream_id = daemon.find("stream_discovered")[0]["stream_id"]
    assert daemon.output() == f"0 of 1 streams finished; not finished: {stream_id}\n"

    daemon.start(args=["--once", "--timeout", "3"])
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
    first.stop()
    assert second.start().stop() == 0, "free again once the first has stopped"


def test_a_batch_is_done_when_each_stream_found_at_start_has_ended():
    batch = Batch.of(["a", "b"])
    batch.concluded("a", "complete")
    batch.concluded("z", "complete")  # not of the batch
    assert not batch.done and batch.summary()["unfinished"] == ["b"]
    batch.concluded("b", "partial")
    assert batch.done and batch.all_finished
    assert batch.describe() == "2 of 2 streams finished (1 complete, 1 partial)"
    assert Batch.of([]).done and Batch.of([]).describe() == "0 of 0 streams finished"


def test_a_batch_follows_missed_files_taken_up_and_recordings_written_over_its_own():
    batch = Batch.of(["a"], missed={"/in/m.mp4", "/in/gone.mp4"}, lost={"x"})
    batch.follow({"/in/a.mp4": "a"}, exists=lambda path: path != "/in/gone.mp4")
    assert batch.missed == {"/in/m.mp4"} and not batch.done
    batch.follow({"/in/a.mp4": "a", "/in/m.mp4": "m"}, exists=lambda path: True)
    assert batch.pending == {"a", "m"} and not batch.missed
    batch.concluded("a", "partial")  # written over: its successor joins
    batch.follow({"/in/m.mp4": "m", "/in/a.mp4": "a2"}, exists=lambda path: True)
    batch.concluded("m", "complete")
    batch.concluded("a2", "complete")
    assert batch.done and not batch.all_finished, "an unreadable record is not finished"
    assert batch.summary()["unfinished"] == ["x"]
    assert batch.describe() == "3 of 4 streams finished (2 complete, 1 partial); not finished: x"
