"""Retention: a local file is deleted only once every byte of it is proven in S3, after
upload or under disk pressure, oldest first. Against a real MinIO, real ffmpeg recordings
and, for disk pressure, a real (tmpfs) filesystem that fills up."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import time
from datetime import datetime

import msgspec
import pytest
from harness import cli, scrape
from recordings import GrowingFile, record

from integration.daemons import FAST_RETRIES, assert_exact
from integration.servers import chunk_store, manifest_of, object_bytes
from streamer import retention
from streamer.checkpoint import CheckpointStore
from streamer.records import StreamState

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB
HOUR_NS = 3600 * 10**9
AFTER_UPLOAD = {"delete_after_upload": True, "min_age": 0}


@pytest.fixture(scope="module")
def recording(ffmpeg, tmp_path_factory):
    """A finished ffmpeg recording (about 1.5 MiB) that tests copy into their directories."""
    path = tmp_path_factory.mktemp("recording") / "source.mp4"
    assert record(ffmpeg, path, 6, "plain", live=False).wait(60) == 0
    return path


def place(recording, path, age_hours: float = 0, size: int | None = None):
    """A copy of the recording at `path` (cut to `size`: no moov box, so `partial`), with
    its mtime `age_hours` in the past."""
    data = recording.read_bytes()
    path.write_bytes(data[:size] if size else data)
    mtime = time.time_ns() - int(age_hours * HOUR_NS)
    os.utime(path, ns=(mtime, mtime))
    return path


def noise(path, size: int, age_hours: float = 0):
    """Not an MP4 at all: its stream finishes `invalid`."""
    path.write_bytes(os.urandom(size))
    mtime = time.time_ns() - int(age_hours * HOUR_NS)
    os.utime(path, ns=(mtime, mtime))
    return path


def deleted_names(daemon) -> list[str]:
    return [os.path.basename(e["path"]) for e in daemon.find("source_deleted")]


def finished_ids(daemon, count: int) -> dict[str, str]:
    """File name -> stream id, once `count` streams have finished."""
    daemon.wait_for("stream_finished", count=count, timeout=60)
    names = {e["stream_id"]: os.path.basename(e["path"]) for e in daemon.find("stream_discovered")}
    return {names[e["stream_id"]]: e["stream_id"] for e in daemon.find("stream_finished")}


def test_a_complete_stream_is_deleted_once_proven_and_its_bytes_stay(make_daemon, minio, recording):
    daemon = make_daemon(retention=AFTER_UPLOAD)
    place(recording, daemon.watch / "done.mp4")
    place(recording, daemon.watch / "cut.mp4", size=recording.stat().st_size // 2)
    noise(daemon.watch / "noise.mp4", 300 * KiB)
    daemon.start()
    ids = finished_ids(daemon, 3)
    deleted = daemon.wait_for("source_deleted")[0]
    assert deleted["stream_id"] == ids["done.mp4"] and deleted["reason"] == "uploaded"
    assert not (daemon.watch / "done.mp4").exists()

    # S3 holds exactly the recording (the copy the test kept), and says it was deleted.
    manifest = assert_exact(minio, daemon, ids["done.mp4"], recording)
    assert manifest["status"] == "complete" and manifest["source"]["deleted_at"]
    assert manifest["assembled"]["size"] == recording.stat().st_size
    assert scrape(daemon)["streamer_sources_deleted_total{reason=uploaded}"] == 1

    # A partial and an invalid stream are kept: never even asked about.
    time.sleep(3)
    assert deleted_names(daemon) == ["done.mp4"] and not daemon.find("source_kept")
    assert (daemon.watch / "cut.mp4").exists() and (daemon.watch / "noise.mp4").exists()
    assert manifest_of(minio.client, daemon.bucket, ids["cut.mp4"])["source"]["deleted_at"] is None

    # With retention.delete_partial, the partial one goes too (after a restart); the
    # invalid one never does.
    daemon.stop()
    again = make_daemon(retention={**AFTER_UPLOAD, "delete_partial": True}).start()
    again.wait_for("source_deleted", path=str(daemon.watch / "cut.mp4"))
    time.sleep(3)
    assert deleted_names(again) == ["done.mp4", "cut.mp4"]  # one log, both runs
    assert (daemon.watch / "noise.mp4").exists()


def test_a_file_whose_chunk_was_removed_from_s3_is_kept(make_daemon, minio, recording):
    daemon = make_daemon()
    place(recording, daemon.watch / "whole.mp4")
    place(recording, daemon.watch / "robbed.mp4")
    daemon.start()
    ids = finished_ids(daemon, 2)
    daemon.stop()
    chunk = f"rec/test-host/{ids['robbed.mp4']}/chunks/000003"
    minio.client.remove_object(daemon.bucket, chunk)

    again = make_daemon(retention=AFTER_UPLOAD).start()
    again.wait_for("source_deleted", stream_id=ids["whole.mp4"])
    kept = again.wait_for("source_kept")[0]
    assert kept["stream_id"] == ids["robbed.mp4"]
    assert "chunk 3 is missing from S3" in kept["kept_because"]
    assert (daemon.watch / "robbed.mp4").read_bytes() == recording.read_bytes()
    assert not (daemon.watch / "whole.mp4").exists()
    assert scrape(again)["streamer_sources_kept_total"] == 1


def test_a_file_still_open_for_writing_or_too_young_or_forgotten_is_kept(
    make_daemon, minio, recording
):
    # min_age leaves ample time to forget a stream before its file is old enough.
    daemon = make_daemon(retention={"delete_after_upload": True, "min_age": 20})
    for name in ("open.mp4", "young.mp4", "forgotten.mp4"):
        place(recording, daemon.watch / name)
    written_at = time.time()
    with open(daemon.watch / "open.mp4", "ab"):  # a recorder that paused, file still open
        daemon.start()
        ids = finished_ids(daemon, 3)
        forgot = cli(daemon, "streams", "forget", "--yes", ids["forgotten.mp4"])
        assert forgot.returncode == 0, forgot.stderr
        deleted = daemon.wait_for(
            "source_deleted", path=str(daemon.watch / "young.mp4"), timeout=60
        )[0]
        open_kept = daemon.wait_for("source_kept", stream_id=ids["open.mp4"])[0]
        forgotten_kept = daemon.wait_for("source_kept", stream_id=ids["forgotten.mp4"])[0]
    assert datetime.fromisoformat(deleted["ts"]).timestamp() - written_at >= 20
    assert open_kept["kept_because"] == "a process has the file open for writing"
    assert forgotten_kept["kept_because"] == "the stream is not in the checkpoint store"
    assert (daemon.watch / "open.mp4").read_bytes() == recording.read_bytes()
    assert (daemon.watch / "forgotten.mp4").exists()
    assert deleted_names(daemon) == ["young.mp4"]


def test_without_a_lease_retention_waits_ten_minutes_and_says_so_at_each_deletion(
    make_daemon, minio, recording
):
    """streamer without CAP_LEASE (the bounding set drops it, as a container not given it
    does), and recordings of another user: the kernel cannot tell streamer whether they
    are still open for writing. It says so at start, keeps each such file until its last
    write is ten minutes old whatever retention.min_age says (asking about it again only
    then), and warns at each such deletion; its own files it can lease."""
    daemon = make_daemon(
        wrapper=["setpriv", "--bounding-set", "-lease"],
        retention={"delete_after_upload": True, "min_age": 0},
    )
    old = place(recording, daemon.watch / "old.mp4", age_hours=1)
    # Old enough for min_age, young enough to be kept, and then to be asked about again
    # only once ten minutes old (later than a minute from now).
    young = place(recording, daemon.watch / "young.mp4", age_hours=520 / 3600)
    last_write = young.stat().st_mtime
    for path in (old, young):
        os.chown(path, 65534, 65534)
    mine = place(recording, daemon.watch / "mine.mp4")  # the daemon's own user's
    daemon.start()
    blind = daemon.wait_for("retention_blind")[0]
    assert blind["reason"].startswith("no CAP_LEASE") and blind["min_age"] == 0
    assert blind["blind_min_age"] == retention.BLIND_MIN_AGE == 600
    assert scrape(daemon)["streamer_retention_blind"] == 1
    ids = finished_ids(daemon, 3)

    kept = daemon.wait_for("source_kept", stream_id=ids["young.mp4"])[0]
    assert kept["kept_because"] == (
        "no lease could be taken on it (it is owned by uid 65534, and streamer runs as uid 0 "
        "without CAP_LEASE), so whether a process still has it open for writing cannot be "
        "known: it is kept until its last write is 10 minutes old"
    )
    assert young.read_bytes() == recording.read_bytes()
    daemon.wait_for("source_deleted", path=str(mine))
    warned = daemon.wait_for("source_deleted_blind", stream_id=ids["old.mp4"])[0]
    assert warned["path"] == str(old) and "uid 65534" in warned["blind_because"]

    deleted = daemon.wait_for("source_deleted", path=str(young), timeout=180)[0]
    assert datetime.fromisoformat(deleted["ts"]).timestamp() - last_write >= 600
    assert len(daemon.find("source_kept")) == 1, "asked about again before ten minutes"
    daemon.wait_for("source_deleted_blind", stream_id=ids["young.mp4"])
    assert not daemon.find("source_deleted_blind", stream_id=ids["mine.mp4"])
    assert sorted(deleted_names(daemon)) == ["mine.mp4", "old.mp4", "young.mp4"]


def test_a_file_changed_after_it_finished_is_a_new_generation_deleted_in_its_turn(
    make_daemon, minio, recording, tmp_path
):
    daemon = make_daemon(retention={"delete_after_upload": True, "min_age": 6})
    path = place(recording, daemon.watch / "again.mp4")
    daemon.start()
    first = daemon.wait_for("stream_finished")[0]["stream_id"]
    with open(path, "ab") as f:  # the recorder adds a box: still a complete MP4
        f.write(struct.pack(">I4s", 16, b"free") + bytes(8))
    kept = tmp_path / "again-as-changed.mp4"
    shutil.copy(path, kept)
    second = daemon.wait_for("stream_discovered", count=2)[1]["stream_id"]
    deleted = daemon.wait_for("source_deleted", timeout=60)[0]
    assert deleted["stream_id"] == second != first
    time.sleep(2)
    assert [e["stream_id"] for e in daemon.find("source_deleted")] == [second]
    assert_exact(minio, daemon, second, kept)
    assert assert_exact(minio, daemon, first, recording)["source"]["deleted_at"] is None


def test_s3_away_or_refusing_writes_never_costs_a_file(make_daemon, minio, proxy, recording):
    s3 = {"endpoint": proxy.endpoint, **FAST_RETRIES}
    daemon = make_daemon(s3=s3)
    place(recording, daemon.watch / "first.mp4")
    place(recording, daemon.watch / "second.mp4")
    daemon.start()
    ids = finished_ids(daemon, 2)
    daemon.stop()

    # S3 away: nothing can be proven, so nothing is deleted.
    proxy.set("refuse")
    away = make_daemon(s3=s3, retention=AFTER_UPLOAD).start()
    kept = away.wait_for("source_kept", count=2)
    assert all("could not finish the checks" in k["kept_because"] for k in kept)
    assert (daemon.watch / "first.mp4").exists() and (daemon.watch / "second.mp4").exists()
    away.stop()

    # S3 answers reads but refuses writes: every byte is proven, so the files go; the
    # metadata.json update fails loudly, and the checkpoint still records the deletion.
    proxy.set("refuse_puts")
    read_only = make_daemon(s3=s3, retention=AFTER_UPLOAD)
    read_only.expect(manifest_update_failed=2).start()
    read_only.wait_for("manifest_update_failed", count=2)
    assert not (daemon.watch / "first.mp4").exists()
    shown = json.loads(cli(read_only, "streams", "show", ids["first.mp4"], "--json").stdout)
    assert shown["source_deleted_at"] and shown["deleted_because"] == "uploaded"
    written = manifest_of(minio.client, daemon.bucket, ids["first.mp4"])
    assert written["source"]["deleted_at"] is None


def test_cancelled_and_active_streams_are_never_deleted_even_under_pressure(
    make_daemon, minio, recording
):
    # Every filesystem is "full" at 99.99 %: the guard deletes whatever it may.
    daemon = make_daemon(
        retention={**AFTER_UPLOAD, "min_free_percent": 99.99},
        stream={"chunk_size": 64 * KiB, "idle_timeout": 2},
    ).start()
    active = GrowingFile(daemon.watch / "active.mp4", total=4 * MiB, rate=64 * KiB).start()
    cancelled = GrowingFile(daemon.watch / "cancelled.mp4", total=512 * KiB, rate=64 * KiB)
    cancelled.start()
    cancelled_id = daemon.wait_for("stream_discovered", path=str(cancelled.path))[0]["stream_id"]
    assert cli(daemon, "streams", "cancel", cancelled_id).returncode == 0
    daemon.wait_for("stream_finished", stream_id=cancelled_id, status="cancelled")
    cancelled.wait()
    place(recording, daemon.watch / "done.mp4")
    daemon.wait_for("source_deleted", path=str(daemon.watch / "done.mp4"))

    pressure = daemon.wait_for("disk_pressure")[0]
    assert pressure["free_bytes"] < pressure["wanted_bytes"]
    time.sleep(3)
    assert deleted_names(daemon) == ["done.mp4"]
    assert active.path.exists() and cancelled.path.stat().st_size == 512 * KiB
    assert scrape(daemon)["streamer_disk_pressure"] == 1
    assert active.written < active.total, "the active stream should still be growing"


def test_only_a_proven_unchanged_regular_file_inside_the_directory_is_deleted(
    make_daemon, minio, recording, tmp_path, monkeypatch
):
    """The uploader's checks, made at the moment of deletion, called directly on the real
    checkpoint and S3 a daemon left: each made to fail on its own (check 2, a chunk gone
    from S3, and the lease have daemon tests above)."""
    daemon = make_daemon()
    names = (
        "touched.mp4", "linked.mp4", "plain.mp4", "unassembled.mp4", "unreadable.mp4",
        "swapped.mp4",
    )  # fmt: skip
    for name in names:
        place(recording, daemon.watch / name)
    daemon.start()
    ids = finished_ids(daemon, len(names))
    daemon.stop()
    s3 = chunk_store(minio, daemon.bucket)
    store = CheckpointStore(str(daemon.config_path.parent / "checkpoint"), 64 * MiB)

    def delete(name: str, directory=daemon.watch, **changes) -> None:
        stream_id = ids[name]
        record = msgspec.structs.replace(store.get_stream(stream_id), **changes)
        retention.delete_if_proven(record, store.chunks(stream_id), s3, str(directory), False)

    # 1. The stream finished complete (the supervisor asks only for those; the uploader
    # checks again, on the record as it is at that moment).
    with pytest.raises(retention.Kept, match="its stream finished partial, not complete"):
        delete("plain.mp4", state=StreamState.PARTIAL)
    # 3. The assembled object is in S3, as made.
    assembled = store.get_stream(ids["unassembled.mp4"]).assembled.key
    minio.client.remove_object(daemon.bucket, assembled)
    with pytest.raises(retention.Kept, match="the assembled object is missing from S3"):
        delete("unassembled.mp4")
    # 4. metadata.json is in S3 and reads back as this stream.
    manifest_key = f"rec/test-host/{ids['unreadable.mp4']}/metadata.json"
    minio.client.remove_object(daemon.bucket, manifest_key)
    with pytest.raises(retention.Kept, match=r"metadata\.json is missing from S3"):
        delete("unreadable.mp4")
    minio.client.put_object(daemon.bucket, manifest_key, io.BytesIO(b"{not json"), 9)
    with pytest.raises(retention.Kept, match=r"metadata\.json does not read back"):
        delete("unreadable.mp4")
    another = object_bytes(
        minio.client, daemon.bucket, f"rec/test-host/{ids['plain.mp4']}/metadata.json"
    )
    minio.client.put_object(daemon.bucket, manifest_key, io.BytesIO(another), len(another))
    with pytest.raises(retention.Kept, match="does not describe this stream as recorded"):
        delete("unreadable.mp4")
    assert (daemon.watch / "unassembled.mp4").exists()
    assert (daemon.watch / "unreadable.mp4").exists()

    touched = daemon.watch / "touched.mp4"
    os.utime(touched, ns=(time.time_ns(), time.time_ns()))
    with pytest.raises(retention.Kept, match="changed after it was uploaded"):
        delete("touched.mp4")
    assert touched.exists()

    outside = tmp_path / "outside.mp4"
    shutil.move(daemon.watch / "linked.mp4", outside)
    os.symlink(outside, daemon.watch / "linked.mp4")
    with pytest.raises(retention.Kept, match="symbolic link"):
        delete("linked.mp4")
    assert outside.read_bytes() == recording.read_bytes()

    # A writer renames a new file over the name after the last check, before the unlink
    # (the lease is taken at that moment): the new file is put back, not deleted.
    swapped = daemon.watch / "swapped.mp4"
    lease = retention._lease

    def rename_over(fd: int, st: os.stat_result) -> str | None:
        (daemon.watch / ".new").write_bytes(b"a new recording")
        os.rename(daemon.watch / ".new", swapped)
        return lease(fd, st)

    with monkeypatch.context() as patched:
        patched.setattr(retention, "_lease", rename_over)
        with pytest.raises(retention.Kept, match="another file was put at its name"):
            delete("swapped.mp4")
    assert swapped.read_bytes() == b"a new recording"
    assert sorted(p.name for p in daemon.watch.iterdir() if "swapped" in p.name) == ["swapped.mp4"]

    with pytest.raises(retention.Kept, match="not inside the watch directory"):
        delete("plain.mp4", directory=tmp_path / "another")
    delete("plain.mp4")
    assert not (daemon.watch / "plain.mp4").exists()
    store.close()


@pytest.fixture
def small_disk(tmpfs):
    """A real 32 MiB filesystem that the test can fill."""
    return tmpfs("disk", "32m")


def free_bytes(path) -> int:
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize


def fill(path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(b"\0" * size)


def test_the_free_space_guard_deletes_the_oldest_proven_files_and_nothing_else(
    make_daemon, minio, recording, small_disk
):
    size = recording.stat().st_size
    noise(small_disk / "invalid.mp4", size // 2, age_hours=5)
    place(recording, small_disk / "partial.mp4", age_hours=4, size=size // 2)
    for age, name in ((3, "a.mp4"), (2, "b.mp4"), (1, "c.mp4")):
        place(recording, small_disk / name, age_hours=age)
    threshold = free_bytes(small_disk) - size // 2
    daemon = make_daemon(
        watch={"directory": str(small_disk)}, retention={"min_free_bytes": threshold, "min_age": 0}
    ).start()
    ids = finished_ids(daemon, 5)
    time.sleep(2)
    assert not daemon.find("source_deleted"), "above the threshold, nothing is deleted"

    # 1.5 recordings short: the two oldest complete files go, the third stays.
    fill(small_disk / "filler-1.bin", 2 * size)
    daemon.wait_for("source_deleted", count=2)
    time.sleep(3)
    assert deleted_names(daemon) == ["a.mp4", "b.mp4"]
    assert {e["reason"] for e in daemon.find("source_deleted")} == {"disk_pressure"}
    assert free_bytes(small_disk) >= threshold

    # Short again: the last complete one goes, and then nothing may be deleted any more.
    fill(small_disk / "filler-2.bin", 2 * size)
    daemon.wait_for("disk_pressure")
    assert deleted_names(daemon) == ["a.mp4", "b.mp4", "c.mp4"]
    assert (small_disk / "invalid.mp4").exists() and (small_disk / "partial.mp4").exists()
    pressed = scrape(daemon)
    assert pressed["streamer_disk_pressure"] == 1
    assert 0 < pressed["streamer_disk_free_bytes"] < threshold
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        assert_exact(minio, daemon, ids[name], recording)

    (small_disk / "filler-2.bin").unlink()
    daemon.wait_for("disk_pressure_relieved")
    assert scrape(daemon)["streamer_disk_pressure"] == 0
