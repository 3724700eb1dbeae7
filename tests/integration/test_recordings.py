"""Recordings as real recorders write them: rewritten bytes, replaced, renamed, deleted and
crashed files, MP4 facts, and the assembled object. Against a real MinIO."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest
from conftest import wait_until
from recordings import GrowingFile, ffprobe_duration, record, sha256_file

from integration.servers import both_servers, manifest_of, object_bytes, objects, reassemble

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB
FRAME = 1 / 25


def check_exact(server, bucket, stream_id, path) -> dict:
    manifest = manifest_of(server.client, bucket, stream_id)
    expected = sha256_file(path)
    data = reassemble(server.client, bucket, manifest)
    assert hashlib.sha256(data).hexdigest() == expected == manifest["sha256"]
    assembled = manifest["assembled"]
    whole = object_bytes(server.client, bucket, assembled["key"])
    assert hashlib.sha256(whole).hexdigest() == expected
    assert assembled["size"] == len(whole) == manifest["total_size"]
    return manifest


@both_servers
@pytest.mark.parametrize("kind", ["plain", "faststart", "fragmented"])
def test_live_ffmpeg_recording_is_exact_playable_and_described(
    make_daemon, server, ffmpeg, tmp_path, kind
):
    daemon = make_daemon(stream={"idle_timeout": 3}).start()
    path = daemon.watch / f"{kind}.mp4"
    recorder = record(ffmpeg, path, 5, kind)
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", stream_id=stream_id)
    assert recorder.poll() is None, "a chunk should be in S3 while ffmpeg is still recording"
    assert recorder.wait(30) == 0
    before = objects(server, daemon.bucket, stream_id)
    daemon.wait_for("stream_finished", timeout=60)
    manifest = check_exact(server, daemon.bucket, stream_id, path)

    assert manifest["status"] == "complete" and manifest["status_reason"] is None
    facts = manifest["mp4"]
    assert facts["playable"] and facts["has_moov"] and facts["fragmented"] == (kind == "fragmented")
    assert abs(manifest["duration"]["media_seconds"] - ffprobe_duration(path)) <= FRAME
    codecs = sorted((t["kind"], t["codec"]) for t in facts["tracks"])
    assert codecs == [("soun", "mp4a"), ("vide", "avc1")]
    video = next(t for t in facts["tracks"] if t["kind"] == "vide")
    assert (video["width"], video["height"]) == (640, 360)

    # Rewritten chunks went to new revision keys; what they superseded is deleted, once
    # metadata.json lists the new ones, and nothing else that was uploaded is touched.
    revised = [c for c in manifest["chunks"] if c["revision"] > 0]
    assert manifest["reuploaded_chunks"] == len(revised)
    if kind == "fragmented":
        assert not revised
    else:
        assert revised and all(
            c["reupload_reason"] == "bytes changed after upload" for c in revised
        )
        assert all(c["key"].endswith(f".r{c['revision']}") for c in revised)
    listed = {c["key"] for c in manifest["chunks"]}
    superseded = {k for k in before if "/chunks/" in k and k not in listed}
    assert bool(superseded) == bool(revised)

    def superseded_gone():
        return not superseded & objects(server, daemon.bucket, stream_id).keys()

    wait_until(superseded_gone, 30, what="the superseded revisions to be deleted")
    after = objects(server, daemon.bucket, stream_id)
    kept = {k: v for k, v in before.items() if k not in superseded}
    assert {k: after[k] for k in kept} == kept, "an uploaded object was overwritten"

    assembled = manifest["assembled"]
    assert (
        assembled["key"] == f"rec/test-host/{stream_id}/{kind}.mp4"
        and assembled["method"] == "upload"
    )
    copy = tmp_path / "assembled.mp4"
    copy.write_bytes(object_bytes(server.client, daemon.bucket, assembled["key"]))
    assert abs(ffprobe_duration(copy) - manifest["duration"]["media_seconds"]) <= FRAME


@both_servers
def test_chunks_of_5_mib_are_assembled_in_s3_without_uploading_again(make_daemon, server):
    daemon = make_daemon(stream={"chunk_size": 5 * MiB}).start()
    path = daemon.watch / "big.mp4"
    path.write_bytes(hashlib.shake_256(b"big").digest(12 * MiB))
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = check_exact(server, daemon.bucket, event["stream_id"], path)
    assert manifest["assembled"]["method"] == "compose"
    assert [c["size"] for c in manifest["chunks"]] == [5 * MiB, 5 * MiB, 2 * MiB]
    assert len(daemon.find("chunk_uploaded")) == 3


@both_servers
@pytest.mark.parametrize("kind", ["plain", "faststart", "fragmented"])
def test_ffmpeg_recordings_in_5_mib_chunks_are_assembled_by_server_side_copy(
    make_daemon, server, ffmpeg, kind
):
    """Each of the three writers, its rewritten chunks included, assembled in S3 from the
    chunks themselves (UploadPartCopy needs parts of 5 MiB)."""
    daemon = make_daemon(stream={"chunk_size": 5 * MiB, "idle_timeout": 3}).start()
    path = daemon.watch / f"{kind}.mp4"
    assert record(ffmpeg, path, 50, kind, live=False).wait(120) == 0
    event = daemon.wait_for("stream_finished", timeout=90)[0]
    manifest = check_exact(server, daemon.bucket, event["stream_id"], path)
    assert manifest["status"] == "complete" and manifest["chunk_count"] >= 2
    assert manifest["assembled"]["method"] == "compose"
    assert (manifest["reuploaded_chunks"] > 0) == (kind != "fragmented")


def test_a_recorder_that_crashes_leaves_a_partial_stream(make_daemon, server, ffmpeg):
    daemon = make_daemon(stream={"idle_timeout": 3}).start()
    path = daemon.watch / "crashed.mp4"
    recorder = record(ffmpeg, path, 30, "plain")
    daemon.wait_for("chunk_uploaded", count=3)
    recorder.send_signal(signal.SIGKILL)
    recorder.wait()
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = check_exact(server, daemon.bucket, event["stream_id"], path)
    assert manifest["status"] == "partial"
    assert "moov" in manifest["status_reason"]
    assert manifest["mp4"]["is_mp4"] and not manifest["mp4"]["playable"]


def test_a_file_renamed_within_the_directory_keeps_its_stream(make_daemon, server):
    daemon = make_daemon().start()
    writer = GrowingFile(daemon.watch / "before.mp4", total=1024 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=2)
    os.rename(writer.path, daemon.watch / "after.mp4")  # the writer keeps its open file
    writer.wait()
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    assert event["stream_id"] == stream_id
    assert daemon.find("stream_renamed", stream_id=stream_id)
    manifest = check_exact(server, daemon.bucket, stream_id, daemon.watch / "after.mp4")
    assert manifest["source"]["name"] == "after.mp4"
    assert len(daemon.find("stream_discovered")) == 1


def test_a_part_file_renamed_into_the_pattern_is_picked_up_whole(make_daemon, server):
    daemon = make_daemon().start()
    part = daemon.watch / "cam.mp4.part"
    part.write_bytes(hashlib.shake_256(b"part").digest(200 * KiB))
    time.sleep(1)
    assert not daemon.find("stream_discovered")
    os.rename(part, daemon.watch / "cam.mp4")
    discovered = daemon.wait_for("stream_discovered")[0]
    assert discovered["size"] == 200 * KiB
    daemon.wait_for("stream_finished")
    check_exact(server, daemon.bucket, discovered["stream_id"], daemon.watch / "cam.mp4")


def test_a_file_replaced_mid_stream_starts_a_new_generation(make_daemon, server):
    daemon = make_daemon().start()
    path = daemon.watch / "cam.mp4"
    GrowingFile(path, total=4096 * KiB, rate=256 * KiB).start()
    first = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=3)
    staged = daemon.watch / "cam.staged"
    staged.write_bytes(hashlib.shake_256(b"second").digest(300 * KiB))
    uploaded_before = objects(server, daemon.bucket, first)
    os.rename(staged, path)

    lost = daemon.wait_for("stream_finished", stream_id=first)[0]
    assert lost["status"] == "partial"
    old = manifest_of(server.client, daemon.bucket, first)
    assert old["status_reason"] == "replaced by another file before it finished"
    assert old["sha256"] is None and old["total_size"] == sum(c["size"] for c in old["chunks"])
    second = [e for e in daemon.wait_for("stream_discovered", count=2)][1]["stream_id"]
    assert second != first
    daemon.wait_for("stream_finished", stream_id=second, timeout=60)
    check_exact(server, daemon.bucket, second, path)
    after = objects(server, daemon.bucket, first)
    assert {k: after[k] for k in uploaded_before} == uploaded_before


def test_a_file_deleted_mid_stream_is_finished_as_partial(make_daemon, server):
    daemon = make_daemon().start()
    path = daemon.watch / "gone.mp4"
    path.write_bytes(hashlib.shake_256(b"gone").digest(256 * KiB))
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=4)
    path.unlink()
    event = daemon.wait_for("stream_finished", timeout=30)[0]
    assert (event["stream_id"], event["status"]) == (stream_id, "partial")
    manifest = manifest_of(server.client, daemon.bucket, stream_id)
    assert manifest["status_reason"] == "deleted before it finished"
    assert manifest["chunk_count"] == 4 and manifest["total_size"] == 256 * KiB
    data = reassemble(server.client, daemon.bucket, manifest)
    assert data == hashlib.shake_256(b"gone").digest(256 * KiB)


def test_a_file_deleted_while_streamer_was_stopped_is_finished_as_partial(make_daemon, server):
    daemon = make_daemon().start()
    writer = GrowingFile(daemon.watch / "away.mp4", total=2048 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=2)
    assert daemon.stop() == 0
    writer.wait()
    writer.path.unlink()
    daemon.start()
    event = daemon.wait_for("stream_finished", timeout=30)[0]
    assert (event["stream_id"], event["status"]) == (stream_id, "partial")
    assert manifest_of(server.client, daemon.bucket, stream_id)["chunk_count"] >= 2


def test_a_finished_file_renamed_is_not_uploaded_again(make_daemon, server):
    daemon = make_daemon().start()
    path = daemon.watch / "finished.mp4"
    path.write_bytes(hashlib.shake_256(b"finished").digest(100 * KiB))
    daemon.wait_for("stream_finished")
    os.rename(path, daemon.watch / "archived.mp4")
    time.sleep(3)  # more than the idle timeout and a rescan
    assert daemon.stop() == 0
    os.rename(daemon.watch / "archived.mp4", daemon.watch / "archived-again.mp4")
    daemon.start()
    time.sleep(3)
    assert len(daemon.find("stream_discovered")) == 1
    assert len(daemon.find("chunk_uploaded")) == 2


@both_servers
def test_shrunk_chunks_get_new_revisions_and_a_reason(make_daemon, server):
    daemon = make_daemon(stream={"idle_timeout": 3}).start()
    path = daemon.watch / "shrink.mp4"
    path.write_bytes(hashlib.shake_256(b"shrink").digest(300 * KiB))
    daemon.wait_for("chunk_uploaded", count=4)
    with open(path, "r+b") as f:
        f.truncate(100 * KiB)
    event = daemon.wait_for("stream_finished", timeout=30)[0]
    assert daemon.find("stream_shrank")
    manifest = check_exact(server, daemon.bucket, event["stream_id"], path)
    assert daemon.find("chunks_dropped")[0]["from_index"] == 2
    assert manifest["total_size"] == 100 * KiB
    assert [c["size"] for c in manifest["chunks"]] == [64 * KiB, 36 * KiB]
    last = manifest["chunks"][-1]
    assert (last["revision"], last["reupload_reason"]) == (1, "file shrank")


def test_a_file_that_shrinks_then_grows_again_is_exact(make_daemon, server):
    daemon = make_daemon(stream={"idle_timeout": 3}).start()
    path = daemon.watch / "regrow.mp4"
    first = hashlib.shake_256(b"first").digest(300 * KiB)
    path.write_bytes(first)
    daemon.wait_for("chunk_uploaded", count=4)
    with open(path, "r+b") as f:
        f.truncate(100 * KiB)
    daemon.wait_for("stream_shrank")
    # Let completion start on the shrunk file, then grow it well past where it was.
    daemon.wait_for("chunk_reuploaded", timeout=30)
    with open(path, "ab") as f:
        f.write(hashlib.shake_256(b"more").digest(400 * KiB))
    # If finishing beat the growth, the growth is a new generation: either way, a stream
    # ends holding exactly the final 500 KiB.
    event = daemon.wait_for("stream_finished", timeout=60, size=500 * KiB)[0]
    manifest = check_exact(server, daemon.bucket, event["stream_id"], path)
    assert manifest["total_size"] == 500 * KiB
    ends = [c["offset"] + c["size"] for c in manifest["chunks"]]
    assert [c["offset"] for c in manifest["chunks"][1:]] == ends[:-1], "chunks are contiguous"


def test_a_recording_written_over_in_place_starts_a_new_generation(make_daemon, server):
    daemon = make_daemon(stream={"idle_timeout": 3}).start()
    path = daemon.watch / "inplace.mp4"
    path.write_bytes(hashlib.shake_256(b"first take").digest(300 * KiB))
    first = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=4)
    uploaded_before = objects(server, daemon.bucket, first)
    inode = path.stat().st_ino
    with open(path, "wb") as f:  # same inode, truncated, then another recording
        f.flush()
        time.sleep(1.5)
        f.write(hashlib.shake_256(b"second take").digest(200 * KiB))
    assert path.stat().st_ino == inode

    old = daemon.wait_for("stream_finished", stream_id=first, timeout=30)[0]
    assert old["status"] == "partial"
    assert old["reason"] == "another recording was written over it before it finished"
    second = daemon.wait_for("stream_discovered", count=2)[1]["stream_id"]
    assert second != first
    daemon.wait_for("stream_finished", stream_id=second, timeout=30)
    check_exact(server, daemon.bucket, second, path)
    after = objects(server, daemon.bucket, first)
    assert {k: after[k] for k in uploaded_before} == uploaded_before
    old_manifest = manifest_of(server.client, daemon.bucket, first)
    assert (
        reassemble(server.client, daemon.bucket, old_manifest)
        == hashlib.shake_256(b"first take").digest(300 * KiB)[: old_manifest["total_size"]]
    )


def test_a_recording_written_over_while_streamer_was_stopped_is_a_new_generation(
    make_daemon, server
):
    daemon = make_daemon().start()
    path = daemon.watch / "overnight.mp4"
    writer = GrowingFile(path, total=2048 * KiB, rate=256 * KiB).start()
    first = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=2)
    assert daemon.stop() == 0
    writer.wait()
    with open(path, "r+b") as f:  # same inode, same size, other first bytes
        f.write(b"another recorder")
    daemon.start()
    old = daemon.wait_for("stream_finished", stream_id=first, timeout=30)[0]
    assert old["status"] == "partial"
    second = daemon.wait_for("stream_discovered", count=2)[1]["stream_id"]
    daemon.wait_for("stream_finished", stream_id=second, timeout=30)
    check_exact(server, daemon.bucket, second, path)


def surveyed_while_quiet(make_daemon, name: str):
    """A daemon and its file `name`, written at once and then left alone until the
    uploader compared it with its chunks: (daemon, path, stream_id)."""
    daemon = make_daemon(stream={"idle_timeout": 4}).start()
    path = daemon.watch / name
    path.write_bytes(hashlib.shake_256(name.encode()).digest(300 * KiB))
    return daemon, path, daemon.wait_for("stream_surveyed", while_quiet=True)[0]["stream_id"]


def test_a_quiet_file_is_compared_with_its_chunks_before_it_is_finished(make_daemon, server):
    daemon, path, stream_id = surveyed_while_quiet(make_daemon, "quiet.mp4")
    assert not daemon.find("stream_finished")
    daemon.wait_for("stream_finished", timeout=30)
    surveys = daemon.find("stream_surveyed", stream_id=stream_id)
    assert [s["while_quiet"] for s in surveys] == [True], "completion did not read it again"
    check_exact(server, daemon.bucket, stream_id, path)


def test_a_file_rewritten_after_its_quiet_survey_is_compared_again(make_daemon, server):
    daemon, path, stream_id = surveyed_while_quiet(make_daemon, "pause.mp4")
    with open(path, "r+b") as f:  # the recorder was only pausing: it patches chunk 1
        f.seek(100 * KiB)
        f.write(b"patched")
    daemon.wait_for("stream_finished", timeout=30)
    assert daemon.find("stream_surveyed", stream_id=stream_id, while_quiet=False)
    assert daemon.find("chunk_reuploaded", stream_id=stream_id, index=1)
    check_exact(server, daemon.bucket, stream_id, path)
