"""A recording back from S3 alone: `streamer remote list` and `streamer restore`, against
real servers and real ffmpeg recordings, also when the host died mid-recording."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import shutil
import subprocess
import sys
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from awscrt.checksums import crc64nvme
from harness import cli
from minio.commonconfig import CopySource
from recordings import record, sha256_file

from integration.servers import both_servers, chunk_store, manifest_of
from streamer import manifest, mp4
from streamer.bucket import find, listed, read_manifests
from streamer.layout import Layout
from streamer.records import ChunkRecord, StreamRecord, StreamState
from streamer.restore import InTheWay, restore

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


def finished_file(daemon, name: str, size: int = 200 * KiB, nth: int = 1) -> tuple[str, bytes]:
    """A file of random bytes (not an MP4: quick to make), uploaded and finished; `nth`:
    the nth stream at that path."""
    data = os.urandom(size)
    path = daemon.watch / name
    path.write_bytes(data)
    found = daemon.wait_for("stream_discovered", count=nth, path=str(path))
    stream_id = found[nth - 1]["stream_id"]
    daemon.wait_for("stream_finished", stream_id=stream_id, timeout=60)
    return stream_id, data


def restore_raw(daemon, *args, cwd, **run) -> subprocess.CompletedProcess:
    """`streamer restore` with its stdout as bytes (the recording, with `-o -`)."""
    command = [
        sys.executable,
        "-m",
        "streamer",
        "restore",
        *args,
        "--config",
        str(daemon.config_path),
    ]
    return subprocess.run(command, env=daemon.env, cwd=cwd, timeout=60, **run)


def chunk_key(stream_id: str, index: int) -> str:
    return f"rec/test-host/{stream_id}/chunks/{index:06d}"


def damage(server, bucket: str, key: str):
    """Other bytes, as many, put at `key` in place of its own; returns what puts its own
    back, with the object metadata they were stored with."""
    aside = f"aside/{key}"
    server.client.copy_object(bucket, aside, CopySource(bucket, key))
    size = server.client.stat_object(bucket, key).size
    server.client.put_object(bucket, key, io.BytesIO(b"?" * size), size)
    return lambda: server.client.copy_object(bucket, key, CopySource(bucket, aside))


def stored_with(server, bucket: str, key: str) -> dict:
    """The object metadata a chunk was stored with: the digest of its bytes."""
    metadata = server.client.stat_object(bucket, key).metadata
    return {k: v for k, v in metadata.items() if k.lower().startswith("x-amz-meta-")}


def unchanged(path) -> tuple:
    """What a file is, to compare before and after: its bytes, inode and mtime."""
    return path.read_bytes(), path.lstat().st_ino, path.lstat().st_mtime_ns


def left_beside(out) -> list[str]:
    """What restore left next to its output: its temporary file and that file's mark."""
    return sorted(p.name for p in out.parent.glob(f"{out.name}.*"))


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


def written_stream(
    client, bucket: str, layout: Layout, stream_id: str, chunks: int, size: int, threads: int = 8
) -> bytes:
    """A finished stream put straight into the bucket, laid out as streamer lays it out:
    `chunks` chunk objects of `size` random bytes (`threads` put at once), and its
    metadata.json as streamer builds it. Returns the recording's bytes."""
    data = os.urandom(chunks * size)
    pieces = [data[i * size : (i + 1) * size] for i in range(chunks)]

    def put(index: int) -> str:
        key, body = layout.chunk_key(stream_id, index), pieces[index]
        return client.put_object(bucket, key, io.BytesIO(body), len(body)).etag

    with ThreadPoolExecutor(threads) as pool:
        etags = list(pool.map(put, range(chunks)))
    now = datetime.now(UTC)
    record = StreamRecord(
        stream_id=stream_id, path=f"/input/{stream_id}.mp4", inode=1, device=1,
        chunk_size=size, first_seen_at=now, state=StreamState.COMPLETE, committed_bytes=len(data),
        chunk_count=chunks, first_upload_at=now, last_upload_at=now, total_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), completed_at=now,
    )  # fmt: skip
    recorded = [
        ChunkRecord(index=i, offset=i * size, size=size, etag=etag, uploaded_at=now,
                    sha256=hashlib.sha256(piece).hexdigest())
        for i, (piece, etag) in enumerate(zip(pieces, etags, strict=True))
    ]  # fmt: skip
    body = manifest.encode(manifest.build(record, recorded, layout))
    client.put_object(bucket, layout.manifest_key(stream_id), io.BytesIO(body), len(body))
    return data


def test_a_listing_keeps_each_streams_figures_not_its_objects_nor_its_metadata_json(
    make_daemon, minio, tmp_path
):
    daemon = make_daemon()
    s3 = chunk_store(minio, daemon.bucket)
    stream_id = "cam1-20261206T100000Z"
    written_stream(minio.client, daemon.bucket, Layout("rec", "short"), stream_id, 1, KiB)
    data = written_stream(minio.client, daemon.bucket, Layout("rec", "long"), stream_id, 1500, KiB)

    def kept(instance: str):
        """The stream listed and its metadata.json read, and the memory that takes."""
        tracemalloc.start()
        try:
            [stream] = read_manifests(s3, listed(s3, [instance]))
            return stream, tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    kept("short")  # the client's connections and caches, made once
    _, short = kept("short")
    long, memory = kept("long")
    assert (long.status, long.size, long.chunk_count) == ("complete", len(data), 1500)
    assert memory - short < 64 * KiB, "a stream's 1,500 chunks are not kept to list it"

    both = cli(daemon, "remote", "list", "--all-instances", "--json")
    assert [(s["instance"], s["chunks"], s["size"]) for s in json.loads(both.stdout)] == [
        ("long", 1500, len(data)),
        ("short", 1, KiB),
    ]
    out = tmp_path / "long.mp4"
    restored = cli(daemon, "restore", "cam1", "--instance", "long", "-o", str(out))
    assert restored.returncode == 0, restored.stderr
    assert out.read_bytes() == data


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
    assert left_beside(out) == []
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
    assert entry["status"] == "active" and entry["assembled"] is False
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


def test_an_interrupted_restore_goes_on_from_what_it_wrote_checked(
    make_daemon, ffmpeg, tmp_path, minio
):
    daemon = make_daemon().start()
    stream_id, path = finished_recording(daemon, ffmpeg, tmp_path)
    source = path.read_bytes()
    chunks = manifest_of(minio.client, daemon.bucket, stream_id)["chunks"]
    out = tmp_path / "again.mp4"
    # Interrupted by a chunk with other bytes: that one damaged, some others written.
    put_back = damage(minio, daemon.bucket, chunk_key(stream_id, 1))
    assert cli(daemon, "restore", stream_id, "-o", str(out)).returncode == 1
    assert left_beside(out) == ["again.mp4.part", "again.mp4.part.streamer"]
    held = (tmp_path / "again.mp4.part").read_bytes()
    spans = [slice(c["offset"], c["offset"] + c["size"]) for c in chunks]
    whole = [n for n, span in enumerate(spans) if held[span] == source[span]]
    assert 0 in whole and 1 not in whole
    put_back()
    again = cli(daemon, "restore", stream_id, "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert f", {len(whole)} already there," in again.stdout
    assert out.read_bytes() == source
    assert left_beside(out) == []


def test_an_output_that_is_there_is_refused_before_any_download_unless_forced(
    make_daemon, tmp_path
):
    daemon = make_daemon().start()
    stream_id, data = finished_file(daemon, "x.mp4")
    out = tmp_path / "precious.mp4"
    out.write_bytes(b"not to be lost")
    away = {"STREAMER_S3_ENDPOINT": "127.0.0.1:9", "STREAMER_S3_CONNECT_TIMEOUT": "1"}
    for env in ({}, away):  # S3 away: refused all the same, so before S3 is asked
        refused = cli(daemon, "restore", stream_id, "-o", str(out), env=env)
        assert refused.returncode == 1, refused.stderr
        assert f"{out} is there already: give --force" in refused.stderr
        assert out.read_bytes() == b"not to be lost" and left_beside(out) == []
    forced = cli(daemon, "restore", stream_id, "-o", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert out.read_bytes() == data and left_beside(out) == []


def test_a_temporary_file_that_is_not_this_restores_is_refused_and_left_as_it_is(
    make_daemon, tmp_path, minio
):
    daemon = make_daemon().start()
    stream_id, data = finished_file(daemon, "a.mp4")
    other, _ = finished_file(daemon, "b.mp4")
    assert daemon.stop() == 0
    # Another program's download, and a symbolic link to a file of the user's.
    victim = tmp_path / "victim"
    victim.write_bytes(b"the user's")
    (tmp_path / "download.mp4.part").write_bytes(b"a browser's download")
    (tmp_path / "linked.mp4.part").symlink_to(victim)
    for name in ("download.mp4", "linked.mp4"):
        partial = tmp_path / f"{name}.part"
        before = unchanged(partial)
        refused = cli(daemon, "restore", stream_id, "-o", str(tmp_path / name))
        assert refused.returncode == 1, refused.stderr
        assert f"{partial} is there, and no {partial}.streamer marks it" in refused.stderr
        assert unchanged(partial) == before
        assert not (tmp_path / name).exists() and left_beside(tmp_path / name) == [partial.name]
    assert victim.read_bytes() == b"the user's"

    # What an interrupted restore of another stream left.
    out = tmp_path / "shared.mp4"
    damage(minio, daemon.bucket, chunk_key(other, 1))
    assert cli(daemon, "restore", other, "-o", str(out)).returncode == 1
    partial = tmp_path / "shared.mp4.part"
    marker = tmp_path / "shared.mp4.part.streamer"
    before = unchanged(partial), unchanged(marker)
    refused = cli(daemon, "restore", stream_id, "-o", str(out))
    assert refused.returncode == 1
    assert f"does not mark it as restoring {stream_id}" in refused.stderr
    assert (unchanged(partial), unchanged(marker)) == before and not out.exists()
    # Its temporary file removed by hand: the mark left beside it is restore's, and goes.
    partial.unlink()
    restored = cli(daemon, "restore", stream_id, "-o", str(out))
    assert restored.returncode == 0, restored.stderr
    assert out.read_bytes() == data and left_beside(out) == []

    # A file at the mark's name that is not restore's mark, and a symbolic link there.
    (tmp_path / "notes.mp4.part.streamer").write_bytes(b"someone's notes")
    (tmp_path / "linked-mark.mp4.part.streamer").symlink_to(victim)
    for name in ("notes.mp4", "linked-mark.mp4"):
        foreign = tmp_path / f"{name}.part.streamer"
        before = unchanged(foreign)
        refused = cli(daemon, "restore", stream_id, "-o", str(tmp_path / name))
        assert refused.returncode == 1, refused.stderr
        assert f"{foreign} is there, and is not restore's mark" in refused.stderr
        assert unchanged(foreign) == before and left_beside(tmp_path / name) == [foreign.name]
    assert victim.read_bytes() == b"the user's"


def test_an_output_that_appears_while_restoring_is_not_replaced(make_daemon, tmp_path, minio):
    daemon = make_daemon().start()
    stream_id, data = finished_file(daemon, "x.mp4")
    s3 = chunk_store(minio, daemon.bucket)
    [stream] = find(s3, stream_id, None)
    out = tmp_path / "raced.mp4"

    def appears(size: int) -> None:
        if not out.exists():
            out.write_bytes(b"written meanwhile")

    with pytest.raises(InTheWay, match=f"{out} appeared while restoring"):
        restore(s3, stream, str(out), progress=appears)
    assert out.read_bytes() == b"written meanwhile"
    # Run again with --force: it goes on from the temporary file, whole already.
    forced = cli(daemon, "restore", stream_id, "-o", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert ", 4 already there," in forced.stdout
    assert out.read_bytes() == data and left_beside(out) == []


def test_a_wrong_or_hostile_metadata_json_writes_nothing(make_daemon, tmp_path, minio):
    daemon = make_daemon().start()
    stream_id, _ = finished_file(daemon, "x.mp4")  # chunks of 64, 64, 64 and 8 KiB
    other, _ = finished_file(daemon, "y.mp4")
    assert daemon.stop() == 0  # it has nothing more to do with these streams
    key = f"rec/test-host/{stream_id}/metadata.json"
    good = manifest_of(minio.client, daemon.bucket, stream_id)

    def giant_offset(m):
        m["chunks"][1]["offset"] = 2**70

    def overlap(m):
        m["chunks"][2]["offset"] -= 1

    def gap(m):
        for c in m["chunks"][2:]:
            c["offset"] += 1
        m["total_size"] += 1

    def another_streams_chunk(m):
        m["chunks"][1]["key"] = chunk_key(other, 1)

    def twice_the_same_chunk(m):
        m["chunks"][2]["key"] = m["chunks"][1]["key"]

    def an_index_twice(m):
        m["chunks"][2]["index"] = 1

    def negative_size(m):
        m["chunks"][3]["size"] = -1
        m["total_size"] -= 8 * KiB + 1

    def longer_than_a_chunk(m):
        m["chunks"][3]["size"] = 2**40
        m["total_size"] += 2**40 - 8 * KiB

    def not_its_size_in_s3(m):
        m["chunks"][3]["size"] = 4 * KiB
        m["total_size"] -= 4 * KiB

    def a_giant_chunk_size(m):
        m["chunk_size"] = 2**62
        m["chunks"][0]["size"] = 2**61
        for c in m["chunks"][1:]:
            c["offset"] += 2**61 - 64 * KiB
        m["total_size"] += 2**61 - 64 * KiB

    def not_its_total_size(m):
        m["total_size"] += 1

    expected = {
        giant_offset: "chunk 1 starts at byte 1180591620717411303424, not at 65536",
        overlap: "chunk 2 starts at byte 131071, not at 131072",
        gap: "chunk 2 starts at byte 131073, not at 131072",
        another_streams_chunk: f"chunk 1 is listed as chunk 1 at {chunk_key(other, 1)}, not at "
        f"{chunk_key(stream_id, 1)}",
        twice_the_same_chunk: f"chunk 2 is listed as chunk 2 at {chunk_key(stream_id, 1)}",
        an_index_twice: "chunk 2 is listed as chunk 1 at",
        negative_size: "chunk 3 is -1 bytes, not 0 to 65536",
        longer_than_a_chunk: "chunk 3 is 1099511627776 bytes, not 0 to 65536",
        not_its_size_in_s3: f"chunk 3 is 4096 bytes, and 8192 in S3 ({chunk_key(stream_id, 3)})",
        a_giant_chunk_size: "its chunk_size, 4611686018427387904, is not one S3 takes",
        not_its_total_size: "its chunks add up to 204800 bytes, not to its total_size, 204801",
    }
    let_through = []
    for wrong, reason in expected.items():
        manifest = json.loads(json.dumps(good))
        wrong(manifest)
        body = json.dumps(manifest).encode()
        minio.client.put_object(daemon.bucket, key, io.BytesIO(body), len(body))
        out = tmp_path / f"{wrong.__name__}.mp4"
        refused = cli(daemon, "restore", stream_id, "-o", str(out))
        said = f"its metadata.json is not to be trusted: {reason}"
        if refused.returncode != 1 or said not in refused.stderr or out.exists():
            let_through.append((wrong.__name__, refused.returncode, refused.stderr[-300:]))
        elif left_beside(out) != []:
            let_through.append((wrong.__name__, "left", left_beside(out)))
    assert let_through == []


def test_a_chunk_of_an_unfinished_stream_with_other_bytes_is_caught_as_it_arrives(
    make_daemon, tmp_path, minio
):
    daemon = make_daemon(stream={"idle_timeout": 60}).start()
    data = os.urandom(4 * 64 * KiB + 1000)  # its tail waits for the stream to finish
    (daemon.watch / "live.mp4").write_bytes(data)
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=4, stream_id=stream_id)
    assert daemon.stop() == 0  # the stream stays unfinished: no metadata.json
    out = tmp_path / "live.mp4"
    whole = cli(daemon, "restore", stream_id, "-o", str(out))
    assert whole.returncode == 0, whole.stderr
    assert out.read_bytes() == data[: 4 * 64 * KiB]

    # Chunk 2 with one bit changed, claiming the digest its own bytes were stored with
    # (S3 kept their crc64nvme, sent in a trailer; the forger says it in the object's
    # metadata, where streamer puts a digest sent in a header): there is no whole-file
    # digest to catch it later.
    key = chunk_key(stream_id, 2)
    assert stored_with(minio, daemon.bucket, key) == {}, "its CRC went in a trailer"
    original = data[2 * 64 * KiB : 3 * 64 * KiB]
    claims = {"x-amz-meta-crc64nvme": f"{crc64nvme(original):016x}"}
    forged = bytearray(original)
    forged[100] ^= 1
    minio.client.put_object(daemon.bucket, key, io.BytesIO(forged), len(forged), metadata=claims)
    assert {k.lower(): v for k, v in stored_with(minio, daemon.bucket, key).items()} == claims
    bad = tmp_path / "bad.mp4"
    caught = cli(daemon, "restore", stream_id, "-o", str(bad))
    assert caught.returncode == 1, caught.stderr
    assert "chunk 2 in S3 is not the bytes it was stored as" in caught.stderr
    assert key in caught.stderr and not bad.exists()


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


def test_a_recording_is_restored_by_its_name_the_newest_of_its_streams(make_daemon, tmp_path):
    daemon = make_daemon().start()
    older, old_data = finished_file(daemon, "x.mp4")
    (daemon.watch / "x.mp4").unlink()
    newer, new_data = finished_file(daemon, "x.mp4", size=10 * KiB, nth=2)  # one chunk
    into = tmp_path / "restored"
    into.mkdir()
    by_name = cli(daemon, "restore", "x", "-o", str(into))
    assert by_name.returncode == 0, by_name.stderr
    assert (into / "x.mp4").read_bytes() == new_data and left_beside(into / "x.mp4") == []
    assert f"restoring {newer} of instance test-host, the newest of 2 streams" in by_name.stderr
    assert "`streamer remote list --all-instances --name x` lists them" in by_name.stderr
    assert f"{newer}: invalid, 10.0 KiB in 1 piece, sha256 " in by_name.stdout
    again = cli(daemon, "restore", "x", "-o", str(into))
    assert again.returncode == 1 and f"{into / 'x.mp4'} is there already" in again.stderr

    # The file's name with its extension, and as JSON; a stream id still means its stream.
    as_json = cli(daemon, "restore", "x.mp4", "-o", str(tmp_path / "new.mp4"), "--json")
    assert as_json.returncode == 0, as_json.stderr
    said = json.loads(as_json.stdout)
    assert (said["stream_id"], said["output"], said["size"], said["pieces"]) == (
        newer, str(tmp_path / "new.mp4"), 10 * KiB, 1
    )  # fmt: skip
    assert (tmp_path / "new.mp4").read_bytes() == new_data
    by_id = cli(daemon, "restore", older, "-o", str(tmp_path / "old.mp4"))
    assert by_id.returncode == 0, by_id.stderr
    assert (tmp_path / "old.mp4").read_bytes() == old_data and "restoring" not in by_id.stderr


def test_a_name_of_several_recordings_lists_them_and_latest_takes_the_newest(
    make_daemon, tmp_path, minio
):
    daemon = make_daemon().start()
    cam1, _ = finished_file(daemon, "cam1.mp4")
    cam2, cam2_data = finished_file(daemon, "cam2.mp4", size=100 * KiB)
    out = tmp_path / "out.mp4"
    several = cli(daemon, "restore", "cam*", "-o", str(out))
    assert several.returncode == 2, several.stderr
    lines = several.stderr.splitlines()
    assert lines[0] == (
        "streamer: 'cam*' names 2 streams of several recordings: give a stream id, the "
        "recording's path, --instance, or --latest for the newest"
    )
    assert lines[1].split() == ["STREAM", "INSTANCE", "FIRST", "SEEN", "SIZE"]
    assert [line.split()[:2] for line in lines[2:]] == [[cam2, "test-host"], [cam1, "test-host"]]
    assert lines[2].endswith("100.0 KiB") and lines[3].endswith("200.0 KiB")
    assert not out.exists() and left_beside(out) == []
    for args in (["cam*", "--latest"], ["--latest"]):
        latest = cli(daemon, "restore", *args, "-o", str(out), "--force")
        assert latest.returncode == 0, latest.stderr
        assert out.read_bytes() == cam2_data
    neither = cli(daemon, "restore", "-o", str(out))
    assert (
        neither.returncode == 2
        and "give NAME (a stream id or a recording's name), or --latest" in neither.stderr
    )

    # The same name under another instance is another recording; --instance tells them apart.
    other = make_daemon(home="b", instance="other-host").start()
    theirs_out = tmp_path / "theirs.mp4"
    theirs, their_data = finished_file(other, "cam1.mp4", size=50 * KiB)
    both = cli(daemon, "restore", "cam1", "-o", str(theirs_out))
    assert both.returncode == 2 and theirs in both.stderr, both.stderr
    assert {line.split()[1] for line in both.stderr.splitlines()[2:]} == {"test-host", "other-host"}
    chosen = cli(
        daemon, "restore", "cam1", "--instance", "other-host", "-o", str(theirs_out), "--force"
    )
    assert chosen.returncode == 0, chosen.stderr
    assert theirs_out.read_bytes() == their_data
    # A stream id under two instances (its objects copied): listed, to be told by --instance.
    for found in minio.client.list_objects(daemon.bucket, f"rec/test-host/{cam2}/", recursive=True):
        key = found.object_name
        copied = key.replace("rec/test-host/", "rec/copy-host/", 1)
        minio.client.copy_object(daemon.bucket, copied, CopySource(daemon.bucket, key))
    twice = cli(daemon, "restore", cam2, "-o", str(tmp_path / "copy.mp4"))
    assert twice.returncode == 2, twice.stderr
    assert f"streamer: stream '{cam2}' is under several instances: give --instance" in twice.stderr
    assert {line.split()[1] for line in twice.stderr.splitlines()[2:]} == {"test-host", "copy-host"}


def test_a_name_that_matches_nothing_gets_the_nearest_names(make_daemon, tmp_path):
    daemon = make_daemon().start()
    finished_file(daemon, "garage.mp4", size=10 * KiB)
    out = tmp_path / "out.mp4"
    typo = cli(daemon, "restore", "garaeg", "-o", str(out))
    assert typo.returncode == 1, typo.stderr
    assert (
        f"no stream 'garaeg' of any instance in s3://{daemon.bucket}; the nearest: garage"
        in typo.stderr
    )
    far = cli(daemon, "restore", "yard", "--instance", "test-host", "-o", str(out))
    assert far.returncode == 1, far.stderr
    assert "; `streamer remote list --instance test-host` lists them" in far.stderr
    nobody = cli(daemon, "restore", "--latest", "--instance", "nobody", "-o", str(out))
    assert nobody.returncode == 1, nobody.stderr
    assert f"streamer: no streams of instance nobody in s3://{daemon.bucket}\n" == nobody.stderr
    assert not out.exists()


def test_a_recording_goes_to_stdout_each_chunk_checked_before_it_is_written(
    make_daemon, tmp_path, minio
):
    daemon = make_daemon().start()
    stream_id, data = finished_file(daemon, "x.mp4")  # chunks of 64, 64, 64 and 8 KiB
    assert daemon.stop() == 0
    here = tmp_path / "here"
    here.mkdir()
    piped = restore_raw(daemon, stream_id, "-o", "-", cwd=here, capture_output=True)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == data and list(here.iterdir()) == [], "no file named -"
    assert f"{stream_id}: invalid, 200.0 KiB in 4 pieces, sha256 " in piped.stderr.decode()
    assert piped.stderr.decode().rstrip().endswith("-> stdout")

    # A chunk with other bytes: what went out is the chunks before it, none of its bytes.
    put_back = damage(minio, daemon.bucket, chunk_key(stream_id, 2))
    bad = restore_raw(daemon, stream_id, "-o", "-", cwd=here, capture_output=True)
    assert bad.returncode == 1
    assert "chunk 2 in S3 is not the bytes it was stored as" in bad.stderr.decode()
    assert bad.stdout == data[: 2 * 64 * KiB]
    put_back()
    # Its chunks gone, from its whole object.
    for n in range(4):
        minio.client.remove_object(daemon.bucket, chunk_key(stream_id, n))
    whole = restore_raw(daemon, stream_id, "-o", "-", cwd=here, capture_output=True)
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout == data and "in 1 piece," in whole.stderr.decode()

    # Its reader gone: said, without telling to run it again.
    reader = subprocess.Popen(
        [sys.executable, "-m", "streamer", "restore", stream_id, "-o", "-", "--config",
         str(daemon.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=daemon.env, cwd=here,
    )  # fmt: skip
    assert reader.stdout.read(1000) == data[:1000]
    reader.stdout.close()
    stderr = reader.stderr.read().decode()
    assert reader.wait(60) == 3
    assert f"streamer: {stream_id}: stopped: BrokenPipeError" in stderr
    assert "run again" not in stderr and "Traceback" not in stderr

    # What cannot go with stdout is refused before anything is asked of S3.
    for extra, said in (
        (["--json"], "--json cannot go there"),
        (["--playable"], "--playable cuts the file once it is whole"),
    ):
        refused = restore_raw(daemon, stream_id, "-o", "-", *extra, cwd=here, capture_output=True)
        assert refused.returncode == 2 and said in refused.stderr.decode() and refused.stdout == b""
    terminal, other_end = pty.openpty()
    try:
        on_tty = restore_raw(
            daemon, stream_id, "-o", "-", cwd=here, stdout=terminal, stderr=subprocess.PIPE
        )
    finally:
        os.close(terminal)
        os.close(other_end)
    assert on_tty.returncode == 2
    assert "-o -: stdout is a terminal; send it to a pipe or a file" in on_tty.stderr.decode()
    assert list(here.iterdir()) == []


def test_remote_list_filters_by_name_and_upload_time_in_one_time_format(make_daemon):
    daemon = make_daemon().start()
    # A chunk uploaded at once, its tail once the file is idle: first and last upload differ.
    first, _ = finished_file(daemon, "front.mp4", size=74 * KiB)
    second, _ = finished_file(daemon, "back.mp4", size=10 * KiB)
    front, back = remote_list(daemon)[first], remote_list(daemon)[second]
    at = datetime.fromisoformat
    assert at(front["first_upload_at"]) < at(front["last_upload_at"]) < at(back["first_upload_at"])
    assert at(back["first_seen_at"]) > at(front["first_seen_at"])
    assert list(remote_list(daemon, "--name", "f*")) == [first]
    assert list(remote_list(daemon, "--name", "back.mp4")) == [second]

    def just_after(when: str) -> str:
        return (at(when) + timedelta(milliseconds=1)).isoformat()

    assert set(remote_list(daemon, "--since", just_after(front["first_upload_at"]))) == {
        first,
        second,
    }, "uploaded to since: its last upload counts"
    assert list(remote_list(daemon, "--since", just_after(front["last_upload_at"]))) == [second]
    assert set(remote_list(daemon, "--since", "1h")) == {first, second}
    assert list(remote_list(daemon, "--since", "1h", "--name", "front")) == [first]

    table = cli(daemon, "remote", "list").stdout
    assert " ago" not in table, "one time format in a table"
    assert remote_list(daemon)[second]["last_upload_at"][:19] in table.replace("Z", "")
    none = cli(daemon, "remote", "list", "--since", "2099-01-01T00:00Z", "--name", "f*")
    assert none.returncode == 0
    assert none.stdout.strip() == (
        "no streams named 'f*' of instance test-host uploaded to since 2099-01-01T00:00:00Z "
        f"in s3://{daemon.bucket}/rec/"
    )
    wrong = cli(daemon, "remote", "list", "--since", "yesterday")
    assert wrong.returncode == 2
    assert "Invalid value for '--since': 'yesterday' is not a time" in wrong.stderr


def test_one_file_name_in_two_folders_is_two_recordings_told_apart_by_their_path(
    make_daemon, tmp_path
):
    daemon = make_daemon().start()
    written = {}
    for camera in ("cam1", "cam2"):
        (daemon.watch / camera).mkdir()
        written[camera] = finished_file(daemon, f"{camera}/late.mp4", size=10 * KiB)
    (cam1, cam1_data), (cam2, _) = written["cam1"], written["cam2"]
    assert cam1.startswith("cam1/late-") and cam2.startswith("cam2/late-")
    out = tmp_path / "late.mp4"
    both = cli(daemon, "restore", "late", "-o", str(out))
    assert both.returncode == 2, both.stderr
    assert {line.split()[0] for line in both.stderr.splitlines()[2:]} == {cam1, cam2}
    assert not out.exists()
    by_path = cli(daemon, "restore", "cam1/late.mp4", "-o", str(tmp_path))
    assert by_path.returncode == 0, by_path.stderr
    assert out.read_bytes() == cam1_data
    assert list(remote_list(daemon, "--name", "cam2/*")) == [cam2]
