"""End to end against a real MinIO: watch -> chunk -> upload -> checkpoint -> metadata."""

from __future__ import annotations

import base64
import hashlib
import shutil
import signal
import time
from datetime import datetime

import pytest
from conftest import alive, wait_until
from recordings import GrowingFile, record

from integration.daemons import assert_exact
from integration.servers import both_servers, manifest_of, objects

pytestmark = pytest.mark.integration

KiB = 1024


def chunk_keys(server, bucket, stream_id):
    return sorted(
        o.object_name
        for o in server.client.list_objects(
            bucket, prefix=f"rec/test-host/{stream_id}/chunks/", recursive=True
        )
    )


def finished(daemon, count=1, timeout=60):
    return daemon.wait_for("stream_finished", timeout=timeout, count=count)


@both_servers
def test_chunks_appear_in_s3_while_the_file_is_still_growing(make_daemon, server):
    daemon = make_daemon().start()
    writer = GrowingFile(daemon.watch / "live.mp4", total=1024 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]

    keys = wait_until(
        lambda: chunk_keys(server, daemon.bucket, stream_id), 20, what="a chunk in MinIO"
    )
    assert not writer.done.is_set(), "the first chunk should be in S3 before the writer ends"
    assert keys[0] == f"rec/test-host/{stream_id}/chunks/000000"

    writer.wait()
    finished(daemon)
    manifest = assert_exact(server, daemon, stream_id, writer.path)
    assert manifest["chunk_count"] == 16
    # Synthetic bytes are uploaded exactly, and flagged for what they are.
    assert (manifest["status"], manifest["status_reason"]) == ("invalid", "not an MP4 file")


@both_servers
def test_three_ffmpeg_recordings_at_once_are_byte_exact(make_daemon, server, ffmpeg):
    daemon = make_daemon(stream={"idle_timeout": 3}).start()
    kinds = ["plain", "faststart", "fragmented"]
    recorders = [record(ffmpeg, daemon.watch / f"cam-{kind}.mp4", 6, kind) for kind in kinds]
    while any(r.poll() is None for r in recorders):
        time.sleep(0.2)
    assert [r.returncode for r in recorders] == [0, 0, 0]
    done = finished(daemon, count=3, timeout=60)

    by_name = {e["stream_id"].split("-2")[0]: e["stream_id"] for e in done}
    assert sorted(by_name) == sorted(f"cam-{kind}" for kind in kinds)
    manifests = {
        kind: assert_exact(server, daemon, by_name[f"cam-{kind}"], daemon.watch / f"cam-{kind}.mp4")
        for kind in kinds
    }
    # ffmpeg rewrote bytes it had written: streamer noticed and uploaded them again.
    assert manifests["faststart"]["reuploaded_chunks"] >= 1
    assert manifests["plain"]["reuploaded_chunks"] >= 1
    assert manifests["fragmented"]["reuploaded_chunks"] == 0
    uploaders = {e["role"] for e in daemon.find("chunk_uploaded")}
    assert len(uploaders) == 2, f"streams should be spread over both uploaders: {uploaders}"


@both_servers
def test_metadata_describes_the_stream(make_daemon, server):
    daemon = make_daemon().start()
    writer = GrowingFile(daemon.watch / "meta.mp4", total=200 * KiB, rate=400 * KiB).start()
    writer.wait()
    last_write = time.time()
    event = finished(daemon)[0]
    manifest = assert_exact(server, daemon, event["stream_id"], writer.path)

    assert manifest["stream_id"] == event["stream_id"]
    assert manifest["source"] == {
        **manifest["source"],
        "path": str(writer.path),
        "name": "meta.mp4",
    }
    assert manifest["chunk_size"] == 64 * KiB and manifest["chunk_count"] == 4
    assert [c["size"] for c in manifest["chunks"]] == [65536, 65536, 65536, 8192]
    for chunk in manifest["chunks"]:
        assert chunk["key"] == f"rec/test-host/{event['stream_id']}/chunks/{chunk['index']:06d}"
        assert len(chunk["crc64nvme"]) == 16 and chunk["etag"]
        # Each chunk carries its own crc64nvme, S3's checksum of it, readable from S3 alone.
        asked = {"x-amz-checksum-mode": "ENABLED"}
        stored = server.client.stat_object(daemon.bucket, chunk["key"], extra_headers=asked)
        crc = base64.b64decode(stored.metadata["x-amz-checksum-crc64nvme"]).hex()
        assert crc == chunk["crc64nvme"]
    stamps = [
        manifest[k] for k in ("first_seen_at", "first_upload_at", "last_upload_at", "completed_at")
    ]
    assert all(s.endswith("Z") for s in stamps)
    parsed = [datetime.fromisoformat(s) for s in stamps]
    assert parsed == sorted(parsed)
    # Finished no sooner than the idle timeout after the last write.
    assert parsed[-1].timestamp() >= last_write + 2 - 0.5
    assert 0 < manifest["duration"]["wall_seconds"] < 10


def test_files_present_at_start_are_uploaded(make_daemon, server, tmp_path):
    daemon = make_daemon()
    source = daemon.watch / "Old Recording.MP4"
    source.write_bytes(hashlib.shake_256(b"old").digest(300 * KiB))
    (daemon.watch / "notes.txt").write_text("not a recording")
    daemon.start()
    event = finished(daemon)[0]
    assert event["stream_id"].startswith("Old_Recording-")
    assert_exact(server, daemon, event["stream_id"], source)
    assert len(daemon.find("stream_discovered")) == 1


@both_servers
def test_sigkill_mid_stream_then_restart_loses_nothing_and_reuploads_nothing(make_daemon, server):
    daemon = make_daemon()
    daemon.start()
    writer = GrowingFile(daemon.watch / "crash.mp4", total=2048 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=4)
    uploaders = daemon.uploader_pids()
    daemon.kill()
    before = objects(server, daemon.bucket, stream_id)
    # The uploaders die with the supervisor: no orphan keeps uploading.
    wait_until(lambda: not any(alive(pid) for pid in uploaders), 10, what="uploaders to exit")

    time.sleep(0.5)
    daemon.start()
    writer.wait()
    finished(daemon, timeout=60)
    manifest = assert_exact(server, daemon, stream_id, writer.path)

    assert daemon.find("stream_resumed", stream_id=stream_id)
    uploaded = [e["index"] for e in daemon.find("chunk_uploaded", stream_id=stream_id)]
    # A chunk whose PUT ended just before the kill, but whose log line did not, is found in
    # S3 after the restart instead of being sent again.
    found = [e["index"] for e in daemon.find("chunk_found_in_s3", stream_id=stream_id)]
    assert sorted(uploaded + found) == list(range(manifest["chunk_count"])), "each chunk once"
    assert len(found) <= 1
    after = objects(server, daemon.bucket, stream_id)
    assert {k: after[k] for k in before} == before, "chunks from before the kill were re-sent"


def test_finished_streams_stay_finished_after_restart(make_daemon, server):
    daemon = make_daemon()
    source = daemon.watch / "done.mp4"
    source.write_bytes(hashlib.shake_256(b"done").digest(150 * KiB))
    daemon.start()
    finished(daemon)
    assert daemon.stop() == 0

    daemon.start()
    time.sleep(3)  # longer than the idle timeout: a re-discovery would have finished by now
    daemon.stop()
    assert len(daemon.find("stream_discovered")) == 1
    assert len(daemon.find("stream_finished")) == 1
    assert len(daemon.find("chunk_uploaded")) == 3


def test_sigterm_stops_gracefully_and_the_stream_resumes(make_daemon, server):
    daemon = make_daemon(grace_period=5).start()
    writer = GrowingFile(daemon.watch / "term.mp4", total=1024 * KiB, rate=256 * KiB).start()
    daemon.wait_for("chunk_uploaded", count=2)
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(15) == 0
    assert daemon.find("stopped", exit_code=0)
    assert len(daemon.find("uploader_exited", exit_code=0)) == 2
    stream_id = daemon.find("stream_discovered")[0]["stream_id"]
    before = objects(server, daemon.bucket, stream_id)
    assert before, "the chunks in flight landed before the stop"

    daemon.start()
    writer.wait()
    finished(daemon)
    assert_exact(server, daemon, stream_id, writer.path)
    uploaded = [e["index"] for e in daemon.find("chunk_uploaded")]
    assert len(uploaded) == len(set(uploaded))
    after = objects(server, daemon.bucket, stream_id)
    assert {k: after[k] for k in before} == before, "resumed, not sent again"


def test_a_new_recording_with_a_finished_name_gets_a_new_stream(make_daemon, server):
    daemon = make_daemon().start()
    source = daemon.watch / "reuse.mp4"
    source.write_bytes(b"first recording" * 1000)
    first = finished(daemon)[0]["stream_id"]
    staged = daemon.watch / "reuse.tmp"
    staged.write_bytes(b"second recording" * 2000)
    shutil.move(staged, source)
    second = finished(daemon, count=2)[1]["stream_id"]
    assert first != second
    assert_exact(server, daemon, second, source)
    assert manifest_of(server.client, daemon.bucket, first)["total_size"] == 15000
