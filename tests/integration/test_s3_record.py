"""S3 is the record: a checkpoint store that is behind S3 (a restored backup, a copy on a
second host) never writes over, downgrades or deletes what S3 holds; pruning deletes
exactly what this store wrote; a rewritten chunk leaves no orphan behind."""

from __future__ import annotations

import io
import os
import shutil
import time
from datetime import UTC, datetime

import msgspec
import pytest
from conftest import wait_until
from harness import AT_LEAST_ONE, cli
from recordings import record, sha256_file

from integration.servers import MinioUser, both_servers, chunk_store, manifest_of, object_bytes
from streamer import claim, manifest
from streamer.adoption import adopt
from streamer.checkpoint import CheckpointStore
from streamer.objectstore import ABSENT, Taken
from streamer.records import ChunkRecord, StreamRecord, StreamState

pytestmark = pytest.mark.integration

# Each uploader says it is behind, unless the halt that the first one brings comes first.
BEHIND = {"store_behind": range(1, 3), "uploader_died": 1, "halting": 1}
RETIRING = {"delete_after_upload": True, "min_age": 0}


def chunk_keys(server, daemon, stream_id) -> list[str]:
    prefix = f"rec/test-host/{stream_id}/chunks/"
    return sorted(o.object_name for o in server.client.list_objects(daemon.bucket, prefix, True))


def manifest_bytes(server, daemon, stream_id) -> bytes:
    return object_bytes(server.client, daemon.bucket, f"rec/test-host/{stream_id}/metadata.json")


def store_of(daemon) -> CheckpointStore:
    return CheckpointStore(str(daemon.config_path.parent / "checkpoint"), 1 << 30)


def finished_after_a_backup(make_daemon, ffmpeg, tmp_path):
    """A recording backed up while it grows, then finished (complete, pruned) and its file
    deleted by retention; the daemon stopped. Returns the daemon, the stream, the source,
    and the backup."""
    source = tmp_path / "source.mp4"
    assert record(ffmpeg, source, 3, "fragmented", live=False).wait(60) == 0
    data = source.read_bytes()
    daemon = make_daemon(stream={"keep_chunks": False}, retention=RETIRING).start()
    path = daemon.watch / "cam.mp4"
    with open(path, "wb") as f:
        f.write(data[: 64 * 1024 + 1])
    stream_id = daemon.wait_for("chunk_uploaded", index=0, timeout=30)[0]["stream_id"]
    backup = tmp_path / "backup"
    assert cli(daemon, "checkpoint", "backup", str(backup)).returncode == 0
    with open(path, "ab") as f:
        f.write(data[64 * 1024 + 1 :])
    daemon.wait_for("chunks_deleted", stream_id=stream_id, timeout=60)
    daemon.wait_for("source_deleted", stream_id=stream_id, timeout=60)
    assert daemon.stop() == 0
    return daemon, stream_id, source, backup


def finished_and_stopped(make_daemon, ffmpeg, tmp_path):
    """A real recording, finished with its chunks kept; the daemon stopped."""
    daemon = make_daemon().start()
    source = tmp_path / "source.mp4"
    assert record(ffmpeg, source, 3, "fragmented", live=False).wait(60) == 0
    shutil.copy(source, daemon.watch / "cam.mp4")
    stream_id = daemon.wait_for("stream_finished", timeout=60)[0]["stream_id"]
    assert daemon.stop() == 0
    return daemon, stream_id, source


def put_back(daemon, backup) -> None:
    checkpoint = daemon.config_path.parent / "checkpoint"
    shutil.rmtree(checkpoint)
    shutil.copytree(backup, checkpoint)


@both_servers
def test_a_restored_backup_is_behind_s3_stops_and_adopting_it_changes_nothing_there(
    make_daemon, server, ffmpeg, tmp_path
):
    daemon, stream_id, source, backup = finished_after_a_backup(make_daemon, ffmpeg, tmp_path)
    record_before = manifest_bytes(server, daemon, stream_id)
    assert msgspec.json.decode(record_before)["status"] == "complete"
    put_back(daemon, backup)

    daemon.expect(**BEHIND, exit_codes=(3,)).start(wait=False)
    assert daemon.process.wait(60) == 3
    behind = daemon.find("store_behind")[0]
    assert "streamer checkpoint adopt" in behind["error"]
    assert manifest_bytes(server, daemon, stream_id) == record_before

    adopted = cli(daemon, "checkpoint", "adopt", "--yes")
    assert adopted.returncode == 0, adopted.stderr
    assert "1 stream brought up to S3's records" in adopted.stdout
    shown = cli(daemon, "streams", "show", stream_id, "--json")
    assert msgspec.json.decode(shown.stdout)["state"] == "complete"

    daemon.start()
    time.sleep(3)  # a turn of the loop and a scan: nothing is to be done
    assert daemon.stop() == 0
    assert manifest_bytes(server, daemon, stream_id) == record_before
    out = tmp_path / "restored.mp4"
    restored = cli(daemon, "restore", stream_id, "-o", str(out))
    assert restored.returncode == 0, restored.stderr
    assert sha256_file(out) == sha256_file(source)


@pytest.mark.parametrize("conditions", ["honoured", "refused"])
def test_a_store_behind_s3_never_downgrades_a_metadata_json(
    make_daemon, minio, proxy, ffmpeg, tmp_path, conditions
):
    """Without the claim's help (deleted), the conditional write of metadata.json alone
    keeps a restored store from writing over a complete record; a server that refuses
    conditions gets the same by a read first."""
    daemon, stream_id, source, backup = finished_after_a_backup(make_daemon, ffmpeg, tmp_path)
    record_before = manifest_bytes(minio, daemon, stream_id)
    put_back(daemon, backup)
    minio.client.remove_object(daemon.bucket, "rec/test-host/.owner")
    if conditions == "refused":
        proxy.set("refuse_conditions")
    restored = make_daemon(
        stream={"keep_chunks": False}, retention=RETIRING, s3={"endpoint": proxy.endpoint}
    ).start()
    reconciled = restored.wait_for("stream_reconciled", stream_id=stream_id, timeout=60)[0]
    assert (reconciled["was_status"], reconciled["status"]) == ("partial", "complete")
    assert manifest_bytes(minio, restored, stream_id) == record_before
    shown = cli(restored, "streams", "show", stream_id, "--json")
    assert msgspec.json.decode(shown.stdout)["state"] == "complete"
    out = tmp_path / "restored.mp4"
    assert cli(restored, "restore", stream_id, "-o", str(out)).returncode == 0
    assert sha256_file(out) == sha256_file(source)
    doctor = cli(restored, "doctor", "--json")
    detail = {c["name"]: c for c in msgspec.json.decode(doctor.stdout)["checks"]}
    expected = "honoured" if conditions == "honoured" else "refused by the server"
    assert detail["conditional writes"]["detail"].startswith(expected)


def test_a_copied_store_on_a_second_host_is_refused_and_writes_nothing(
    make_daemon, minio, tmp_path
):
    first = make_daemon(home="a").start()
    assert first.stop() == 0
    second = make_daemon(home="b")
    shutil.copytree(tmp_path / "a" / "checkpoint", tmp_path / "b" / "checkpoint")
    both = [first.start(wait=False), second.start(wait=False)]
    for daemon, data in zip(both, (b"A" * 200_000, b"B" * 200_000), strict=True):
        (daemon.watch / "front.mp4").write_bytes(data)

    def one_has_stopped():
        return any(d.process.poll() is not None for d in both)

    wait_until(one_has_stopped, 60, what="the copy to stop")
    [loser] = [d for d in both if d.process.poll() is not None]
    [winner] = [d for d in both if d is not loser]
    loser.expect(**BEHIND, exit_codes=(3,), run=-1)
    assert loser.process.returncode == 3 and loser.find("store_behind")
    finished = winner.wait_for("stream_finished", timeout=60)[0]
    assert not winner.find("store_behind")
    assert not loser.find("chunk_uploaded") and not loser.find("stream_finished")
    manifest = manifest_of(minio.client, winner.bucket, finished["stream_id"])
    whole = object_bytes(minio.client, winner.bucket, manifest["assembled"]["key"])
    assert whole == (winner.watch / "front.mp4").read_bytes()


def test_pruning_deletes_only_what_this_store_wrote(make_daemon, minio, ffmpeg, tmp_path):
    daemon, stream_id, _ = finished_and_stopped(make_daemon, ffmpeg, tmp_path)
    foreign = f"rec/test-host/{stream_id}/chunks/999999"
    minio.client.put_object(daemon.bucket, foreign, io.BytesIO(b"not streamer's"), 14)

    pruning = make_daemon(stream={"keep_chunks": False}).start()
    pruning.wait_for("chunks_deleted", stream_id=stream_id, timeout=60)
    assert chunk_keys(minio, pruning, stream_id) == [foreign]
    kept = pruning.find("objects_kept", stream_id=stream_id)[0]
    assert kept["keys"] == [foreign] and "not written by this store" in kept["reason"]


def test_a_whole_object_with_the_recorded_etag_but_other_bytes_keeps_the_chunks(
    make_daemon, minio, ffmpeg, tmp_path
):
    daemon, stream_id, source = finished_and_stopped(make_daemon, ffmpeg, tmp_path)
    key = manifest_of(minio.client, daemon.bucket, stream_id)["assembled"]["key"]
    size = source.stat().st_size
    etag = minio.client.put_object(daemon.bucket, key, io.BytesIO(b"\0" * size), size).etag
    store = store_of(daemon)
    try:  # as if the server gave the other bytes the ETag that was recorded
        store.update_stream(
            stream_id,
            lambda r: msgspec.structs.replace(
                r, assembled=msgspec.structs.replace(r.assembled, etag=etag)
            ),
        )
    finally:
        store.close()

    again = make_daemon(stream={"keep_chunks": False}).expect("chunks_kept").start()
    kept = again.wait_for("chunks_kept", stream_id=stream_id, timeout=60)[0]
    assert kept["final"] is True and "bytes are not the stream's" in kept["error"]
    assert len(chunk_keys(minio, again, stream_id)) >= 2


def test_a_plain_mp4_leaves_no_superseded_revision_behind(make_daemon, minio, ffmpeg):
    daemon = make_daemon().start()
    path = daemon.watch / "plain.mp4"
    recorder = record(ffmpeg, path, 4, "plain")
    stream_id = daemon.wait_for("chunk_uploaded", index=0, timeout=30)[0]["stream_id"]
    assert recorder.wait(60) == 0
    daemon.wait_for("stream_finished", stream_id=stream_id, timeout=60)
    assert daemon.find("chunk_reuploaded", stream_id=stream_id, index=0), "ffmpeg patched it"
    manifest = manifest_of(minio.client, daemon.bucket, stream_id)
    listed = sorted(c["key"] for c in manifest["chunks"])
    assert any(k.endswith("/000000.r1") for k in listed)
    # 000000 goes once .r1 is listed, in a finisher thread after the stream finished.
    wait_until(lambda: chunk_keys(minio, daemon, stream_id) == listed, 10, what="000000 deleted")
    store = store_of(daemon)
    try:
        assert not any(c.superseded for c in store.chunks(stream_id))
    finally:
        store.close()


def test_an_adopt_of_another_store_s_instance_is_refused(make_daemon, tmp_path):
    first = make_daemon(home="a").start()
    assert first.stop() == 0
    other = make_daemon(home="b").expect(instance_taken=range(1, 3), uploader_died=1, halting=1)
    other.expect(exit_codes=(3,)).start(wait=False)
    assert other.process.wait(60) == 3
    adopted = cli(other, "checkpoint", "adopt", "--yes")
    assert adopted.returncode == 1 and "claimed by another checkpoint store" in adopted.stderr


def test_adopt_asks_first(make_daemon):
    daemon = make_daemon().start()
    assert daemon.stop() == 0
    declined = cli(daemon, "checkpoint", "adopt", stdin="n\n")
    assert declined.returncode == 1 and "Aborted" in declined.stderr


@both_servers
def test_a_whole_object_another_writer_put_at_its_key_is_never_written_over(make_daemon, server):
    daemon = make_daemon().start()
    (daemon.watch / "cam.mp4").write_bytes(os.urandom(200_000))
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    key = f"rec/test-host/{stream_id}/cam.mp4"
    server.client.put_object(daemon.bucket, key, io.BytesIO(b"theirs"), 6)
    daemon.expect(s3_rejected=AT_LEAST_ONE)  # again at every retry
    rejected = daemon.wait_for("s3_rejected", stream_id=stream_id, timeout=60)[0]
    assert "never written over" in rejected["hint"] and key in rejected["error"]
    assert object_bytes(server.client, daemon.bucket, key) == b"theirs"
    assert not daemon.find("stream_finished", stream_id=stream_id)


@both_servers
@pytest.mark.parametrize("size", [100_000, 12 * 1024 * 1024])
def test_a_whole_object_made_again_from_the_same_bytes_is_taken_as_written(server, bucket, size):
    """A crash between the whole object's completion and its record: made again, the
    refused write finds the very same object there, and takes it."""
    s3 = chunk_store(server, bucket)
    data = os.urandom(size)
    first = s3.put_stream("rec/whole.mp4", io.BytesIO(data), size, "video/mp4", ABSENT)
    again = s3.put_stream("rec/whole.mp4", io.BytesIO(data), size, "video/mp4", ABSENT)
    assert again == first
    assert object_bytes(server.client, bucket, "rec/whole.mp4") == data
    other = bytes(reversed(data))
    with pytest.raises(Taken):
        s3.put_stream("rec/whole.mp4", io.BytesIO(other), size, "video/mp4", ABSENT)
    assert object_bytes(server.client, bucket, "rec/whole.mp4") == data
    assert s3.open_uploads("rec/whole.mp4") == [], "a refused upload is not left open"


def test_chunks_deleted_with_metadata_json_refused_are_recorded_as_deleted(
    make_daemon, minio, bucket, ffmpeg, tmp_path
):
    """The checkpoint never says the chunks are kept while S3 holds none of them."""
    _, stream_id, source = finished_and_stopped(make_daemon, ffmpeg, tmp_path)
    user = MinioUser(minio, bucket, tmp_path)
    user.refuse_puts("*/metadata.json")
    s3 = {"access_key": user.access_key, "secret_key": user.secret_key}

    pruning = make_daemon(s3=s3, stream={"keep_chunks": False})
    pruning.expect("manifest_update_failed").start()
    pruning.wait_for("chunks_deleted", stream_id=stream_id, timeout=60)
    refused = pruning.find("manifest_update_failed", stream_id=stream_id)[0]
    assert "AccessDenied" in refused["error"]
    assert chunk_keys(minio, pruning, stream_id) == []
    assert pruning.stop() == 0
    store = store_of(pruning)
    try:
        stream = store.get_stream(stream_id)
    finally:
        store.close()
    assert stream.chunks_deleted_at is not None and stream.chunks_kept_because is None
    out = tmp_path / "restored.mp4"
    restored = cli(pruning, "restore", stream_id, "-o", str(out))
    assert restored.returncode == 0, restored.stderr
    assert sha256_file(out) == sha256_file(source)


def test_adopt_refuses_while_a_daemon_runs_on_the_store(make_daemon):
    daemon = make_daemon().start()
    refused = cli(daemon, "checkpoint", "adopt", "--yes")
    assert refused.returncode == 1 and "another streamer daemon" in refused.stderr
    assert "stop it first" in refused.stderr


def test_a_metadata_json_deleted_behind_streamer_s_back_is_written_again(
    make_daemon, minio, ffmpeg, tmp_path
):
    daemon, stream_id, _ = finished_and_stopped(make_daemon, ffmpeg, tmp_path)
    minio.client.remove_object(daemon.bucket, f"rec/test-host/{stream_id}/metadata.json")
    pruning = make_daemon(stream={"keep_chunks": False}).start()
    pruning.wait_for("chunks_deleted", stream_id=stream_id, timeout=60)
    assert not pruning.find("manifest_update_failed")
    written = msgspec.json.decode(manifest_bytes(minio, pruning, stream_id))
    assert written["status"] == "complete" and written["chunks_deleted_at"]


def test_adopt_takes_s3_s_record_where_it_is_further_along_than_the_store_s(
    minio, bucket, tmp_path
):
    """The store holds a stream as partial (as a backup taken before it was retried and
    completed would): adopting it leaves S3's complete record as it is."""
    s3 = chunk_store(minio, bucket)
    store = CheckpointStore(str(tmp_path / "checkpoint"), 1 << 30)
    try:
        store.claim_instance("test-host", "test-host")
        now = datetime.now(UTC)
        chunk = ChunkRecord(index=0, offset=0, size=3, etag="e", uploaded_at=now, sha256="0" * 64)
        partial = StreamRecord(
            stream_id="cam-1",
            path="/gone/cam.mp4",
            inode=1,
            device=1,
            chunk_size=3,
            first_seen_at=now,
            state=StreamState.PARTIAL,
            total_size=3,
            committed_bytes=3,
            chunk_count=1,
            completed_at=now,
        )
        store.create_stream(partial)
        store.commit_chunk("cam-1", chunk)
        complete = msgspec.structs.replace(
            partial, state=StreamState.COMPLETE, sha256="ab" * 32, total_size=3
        )
        theirs = manifest.encode(manifest.build(complete, [chunk], s3.layout))
        key = s3.layout.manifest_key("cam-1")
        minio.client.put_object(bucket, key, io.BytesIO(theirs), len(theirs))

        done = adopt(s3, store)
        assert done.brought_up == ["cam-1"] and done.written == []
        assert object_bytes(minio.client, bucket, key) == theirs
        assert store.get_stream("cam-1").state is StreamState.COMPLETE
        assert done.claim is not None and done.claim.store == store.store_id()
    finally:
        store.close()


def test_a_whole_object_made_before_its_finishing_was_called_off_is_made_again(
    make_daemon, minio, proxy
):
    """The file grows again while its whole object is being uploaded: finishing is called
    off after the object is made, and the next finishing makes it again over it (its own),
    instead of finding the key taken for good."""
    daemon = make_daemon(s3={"endpoint": proxy.endpoint}).start()
    path = daemon.watch / "cam.mp4"
    data = os.urandom(320 * 1024)
    path.write_bytes(data)
    stream_id = daemon.wait_for("chunk_uploaded", index=4, timeout=30)[0]["stream_id"]
    before = proxy.uploaded
    proxy.set("throttle", rate=40_000)  # the whole object takes seconds to go up
    wait_until(lambda: proxy.uploaded > before + 60_000, 60, what="the whole object going up")
    with open(path, "ab") as f:
        f.write(b"more")
    daemon.wait_for("finish_declined", stream_id=stream_id, timeout=60)
    proxy.set("pass")
    finished = daemon.wait_for("stream_finished", stream_id=stream_id, timeout=60)[0]
    assert finished["size"] == len(data) + 4
    key = manifest_of(minio.client, daemon.bucket, stream_id)["assembled"]["key"]
    assert object_bytes(minio.client, daemon.bucket, key) == data + b"more"


def test_a_backup_put_back_after_a_crash_is_behind_s3_too(make_daemon, tmp_path):
    """No clean stop moved the claim on after the backup: the backup itself knows it is
    one."""
    daemon = make_daemon().start()
    (daemon.watch / "cam.mp4").write_bytes(os.urandom(100_000))
    daemon.wait_for("stream_finished")
    backup = tmp_path / "backup"
    assert cli(daemon, "checkpoint", "backup", str(backup)).returncode == 0
    daemon.kill()
    put_back(daemon, backup)
    daemon.expect(**BEHIND, exit_codes=(3,)).start(wait=False)
    assert daemon.process.wait(60) == 3 and daemon.find("store_behind")
    assert cli(daemon, "checkpoint", "adopt", "--yes").returncode == 0
    daemon.start()
    assert daemon.stop() == 0


def test_a_daemon_whose_store_was_adopted_elsewhere_stops_while_it_runs(make_daemon, tmp_path):
    first = make_daemon(home="a").start()
    second = make_daemon(home="b")
    backup = tmp_path / "b" / "checkpoint"
    assert cli(first, "checkpoint", "backup", str(backup)).returncode == 0
    adopted = cli(second, "checkpoint", "adopt", "--yes")
    assert adopted.returncode == 0, adopted.stderr
    first.expect(**BEHIND, exit_codes=(3,), run=-1)
    assert first.process.wait(60) == 3 and first.find("store_behind")
    second.start()
    (second.watch / "cam.mp4").write_bytes(os.urandom(100_000))
    second.wait_for("stream_finished")
    assert second.stop() == 0


def test_an_uploader_holding_the_claim_while_another_stops_is_not_behind(minio, bucket, tmp_path):
    """Uploader 1 is still looking at the claim when uploader 0, stopping cleanly, begins
    a new start and moves the claim on to it: uploader 1 sees a start of its own store,
    and the store knows it as its own for the next daemon."""
    s3 = chunk_store(minio, bucket)
    store = CheckpointStore(str(tmp_path / "checkpoint"), 1 << 30)
    try:
        store.claim_instance("test-host", "test-host")
        store.begin_start()
        claim.hold(s3, store)

        class StopMeanwhile:
            """S3 as uploader 1 reads it: uploader 0 stops just before the read."""

            layout, bucket = s3.layout, s3.bucket

            def read(self, key):
                claim.move_on(s3, store)
                self.read = s3.read
                return s3.read(key)

        held = claim.hold(StopMeanwhile(), store)
        assert held.start == store.claim_starts()[0]
        store.begin_start()  # the next daemon
        assert claim.hold(s3, store).generation == held.generation + 1
    finally:
        store.close()
