"""A recording back from S3 alone: `streamer remote list` and `streamer restore`, against
real servers and real ffmpeg recordings, also when the host died mid-recording."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import pytest
from conftest import both_servers, cli, record, sha256_file

from streamer import mp4

pytestmark = pytest.mark.integration

KiB = 1024


def remote_list(daemon, *args) -> dict:
    listed = cli(daemon, "remote", "list", "--json", *args)
    assert listed.returncode == 0, listed.stderr
    return {s["stream_id"]: s for s in json.loads(listed.stdout)}


def duration(path) -> float:
    shown = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, f"ffprobe cannot read {path}: {shown.stderr}"
    return float(shown.stdout.strip())


def finished_recording(daemon, ffmpeg, tmp_path, kind="fragmented") -> tuple[str, object]:
    source = tmp_path / f"source-{kind}.mp4"
    assert record(ffmpeg, source, 3, kind, live=False).wait(60) == 0
    path = daemon.watch / f"done-{kind}.mp4"
    shutil.copy(source, path)
    stream_id = daemon.wait_for("stream_discovered", path=str(path))[0]["stream_id"]
    daemon.wait_for("stream_finished", stream_id=stream_id, timeout=60)
    return stream_id, path


def the_host_dies(daemon, ffmpeg, tmp_path, kind: str, chunks: int = 6):
    """streamer and ffmpeg SIGKILLed mid-recording; the file and the checkpoint store
    deleted. Returns the stream id and a copy of the file as it was."""
    path = daemon.watch / f"cam-{kind}.mp4"
    recorder = record(ffmpeg, path, 120, kind)
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=chunks, timeout=60, stream_id=stream_id)
    daemon.kill()
    recorder.kill()
    recorder.wait()
    kept = tmp_path / f"kept-{kind}.mp4"
    shutil.copy(path, kept)
    path.unlink()
    shutil.rmtree(daemon.config_path.parent / "checkpoint")
    return stream_id, kept


@both_servers
def test_a_finished_stream_is_listed_and_restores_to_the_exact_bytes(make_daemon, ffmpeg, tmp_path):
    daemon = make_daemon().start()
    stream_id, path = finished_recording(daemon, ffmpeg, tmp_path)
    entry = remote_list(daemon)[stream_id]
    assert (entry["instance"], entry["status"], entry["assembled"]) == (
        "test-host",
        "complete",
        True,
    )
    assert entry["size"] == path.stat().st_size and entry["chunks"] >= 2
    assert entry["first_upload_at"] <= entry["last_upload_at"]
    out = tmp_path / "restored.mp4"
    restored = cli(daemon, "restore", stream_id, "-o", str(out))
    assert restored.returncode == 0, restored.stderr
    assert sha256_file(out) == sha256_file(path)
    assert not (tmp_path / "restored.mp4.part").exists()
    human = cli(daemon, "remote", "list").stdout
    assert stream_id in human and "complete" in human


@both_servers
def test_the_host_dies_mid_recording_and_the_recording_comes_back(
    make_daemon, ffmpeg, tmp_path, server
):
    daemon = make_daemon(stream={"idle_timeout": 60})
    daemon.start()
    stream_id, kept = the_host_dies(daemon, ffmpeg, tmp_path, "fragmented")

    entry = remote_list(daemon)[stream_id]
    assert entry["status"] == "unfinished" and entry["assembled"] is False
    raw = tmp_path / "raw.mp4"
    restored = cli(daemon, "restore", stream_id, "-o", str(raw))
    assert restored.returncode == 0, restored.stderr
    data = raw.read_bytes()
    assert len(data) == entry["size"] >= 6 * 64 * KiB
    assert kept.read_bytes().startswith(data), "exactly the bytes that reached S3"

    playable = tmp_path / "playable.mp4"
    made = cli(daemon, "restore", stream_id, "-o", str(playable), "--playable")
    assert made.returncode == 0, made.stderr
    assert (
        data.startswith(playable.read_bytes()) and mp4.inspect_bytes(playable.read_bytes()).playable
    )
    # About as long as the share of the recording that was uploaded.
    whole = duration(kept)
    expected = whole * playable.stat().st_size / kept.stat().st_size
    assert 0 < duration(playable) <= whole
    assert abs(duration(playable) - expected) <= max(2.0, expected / 4)

    # A chunk removed: the restore stops before it and says so.
    chunk = f"rec/test-host/{stream_id}/chunks/000002"
    server.client.remove_object(daemon.bucket, chunk)
    cut = tmp_path / "cut.mp4"
    short = cli(daemon, "restore", stream_id, "-o", str(cut))
    assert short.returncode == 0
    in_s3 = entry["chunks"] - 1
    assert f"chunk 2 is missing: restored 2 of the {in_s3} chunks in S3" in short.stderr
    assert cut.read_bytes() == data[: 2 * 64 * KiB]


def test_a_plain_mp4_cut_mid_recording_is_exact_but_cannot_be_made_playable(
    make_daemon, ffmpeg, tmp_path
):
    daemon = make_daemon(stream={"idle_timeout": 60}).start()
    stream_id, kept = the_host_dies(daemon, ffmpeg, tmp_path, "plain", chunks=4)
    refused = cli(daemon, "restore", stream_id, "-o", str(tmp_path / "p.mp4"), "--playable")
    assert refused.returncode == 4
    assert "cannot be made playable" in refused.stderr and "without --playable" in refused.stderr
    assert not (tmp_path / "p.mp4").exists()
    raw = tmp_path / "raw.mp4"
    assert cli(daemon, "restore", stream_id, "-o", str(raw)).returncode == 0
    assert kept.read_bytes().startswith(raw.read_bytes()) and raw.stat().st_size >= 4 * 64 * KiB


def test_a_chunk_with_other_bytes_is_named_and_the_output_not_written(
    make_daemon, ffmpeg, tmp_path, minio
):
    daemon = make_daemon().start()
    stream_id, path = finished_recording(daemon, ffmpeg, tmp_path)
    key = f"rec/test-host/{stream_id}/chunks/000001"
    minio.client.put_object(daemon.bucket, key, io.BytesIO(b"x" * 64 * KiB), 64 * KiB)
    out = tmp_path / "bad.mp4"
    bad = cli(daemon, "restore", stream_id, "-o", str(out))
    assert bad.returncode == 1
    assert "chunk 1 in S3 is not the bytes it was stored as" in bad.stderr and key in bad.stderr
    assert not out.exists(), "never left looking complete"

    # Its chunks gone, the whole object is there: the recording still comes back.
    for n in range(3):
        minio.client.remove_object(daemon.bucket, f"rec/test-host/{stream_id}/chunks/{n:06d}")
    whole = cli(daemon, "restore", stream_id, "-o", str(out))
    assert whole.returncode == 0, whole.stderr
    assert sha256_file(out) == sha256_file(path)


def test_an_interrupted_restore_goes_on_from_what_it_wrote_checked(make_daemon, ffmpeg, tmp_path):
    daemon = make_daemon().start()
    stream_id, path = finished_recording(daemon, ffmpeg, tmp_path)
    source = path.read_bytes()
    out = tmp_path / "again.mp4"
    # What an interrupted run leaves: the first chunk whole, the second damaged, no more.
    (tmp_path / "again.mp4.part").write_bytes(source[: 64 * KiB] + b"?" * 64 * KiB)
    again = cli(daemon, "restore", stream_id, "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert ", 1 already there," in again.stdout
    assert out.read_bytes() == source


def test_no_such_stream_an_unreadable_manifest_and_s3_away_are_clear_errors(
    make_daemon, tmp_path, minio
):
    daemon = make_daemon().start()
    (daemon.watch / "x.mp4").write_bytes(b"x" * 100 * KiB)
    stream_id = daemon.wait_for("stream_finished")[0]["stream_id"]
    key = f"rec/test-host/{stream_id}/metadata.json"
    minio.client.put_object(daemon.bucket, key, io.BytesIO(b"not json"), 8)
    unreadable = cli(daemon, "restore", stream_id, "-o", str(tmp_path / "u.mp4"))
    assert unreadable.returncode == 1 and "its metadata.json cannot be read" in unreadable.stderr
    assert not (tmp_path / "u.mp4").exists()
    missing = cli(daemon, "restore", "nope-20260101T000000Z", "-o", str(tmp_path / "x"))
    assert missing.returncode == 1 and "no stream 'nope-20260101T000000Z'" in missing.stderr
    away = {"STREAMER_S3_ENDPOINT": "127.0.0.1:9", "STREAMER_S3_CONNECT_TIMEOUT": "1"}
    listed = cli(daemon, "remote", "list", env=away)
    assert listed.returncode == 3 and "cannot read s3://" in listed.stderr
    assert "Traceback" not in listed.stderr
