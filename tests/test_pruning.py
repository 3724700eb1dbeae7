"""Pruning (stream.keep_chunks off; streamer/uploader/pruning.py) as the supervisor asks
for it (`Prune`): a finished stream's chunk objects are deleted only once its assembled
object is proven in S3, only those this store wrote (by their ETag), and then
metadata.json and the checkpoint say so; the supervisor is always answered (`Pruned`),
deleted or kept, and whether asking again could change that. In this process, on the
directory-backed store (tests/uploaders.py, tests/dirstore.py); the same against real
servers: tests/integration/test_pruning.py."""

from __future__ import annotations

import json
import logging
import os

import msgspec
import pytest
import urllib3
from dirstore import DirectoryStore, s3_error
from uploaders import INSTANCE, InProcess

from streamer import digests, manifest
from streamer.bodies import InMemory
from streamer.digests import SHA256
from streamer.messages import Prune, Pruned, StreamFinished
from streamer.records import ChunkRecord, StreamRecord

SIZE = 64 * 1024
MiB = 1024 * 1024
DATA = os.urandom(3 * SIZE + 100)  # four chunks; the whole uploaded from the file
NO_CHUNKS = {"keep_chunks": False}
COMPOSED = {"keep_chunks": False, "chunk_size": 5 * MiB}  # the whole joined by S3

no_chunks = pytest.mark.parametrize("uploader", [NO_CHUNKS], indirect=True)


class FailingStore(DirectoryStore):
    """The directory-backed S3, whose deletes (remove_if, as pruning deletes) fail with
    `error` once `after` of them went through, until `error` is None again."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.error: Exception | None = None
        self.after = 0
        self.asked: list[str] = []  # the keys pruning asked to delete

    def remove_if(self, key: str, etag: str) -> bool:
        self.asked.append(key)
        if self.error is not None and len(self.asked) > self.after:
            raise self.error
        return super().remove_if(key, etag)


@pytest.fixture
def failing(tmp_path):
    s3 = FailingStore(tmp_path / "s3", prefix="rec", instance=INSTANCE)
    made = InProcess(tmp_path, s3=s3, **NO_CHUNKS)
    yield made
    made.close()


def finished(uploader: InProcess, data: bytes = DATA) -> tuple[StreamRecord, list[ChunkRecord]]:
    record = uploader.track("cam.mp4", data)
    uploader.finish(record)
    uploader.run_until(lambda: uploader.of(StreamFinished))
    record = uploader.store.get_stream(record.stream_id)
    assert record.assembled is not None and record.chunks_deleted_at is None
    return record, uploader.store.chunks(record.stream_id)


def prune(uploader: InProcess, stream_id: str) -> Pruned:
    """Ask for the pruning as the supervisor does, and wait for the one answer."""
    before = len(uploader.of(Pruned))
    uploader.commands.put(Prune(stream_id=stream_id))
    uploader.run_until(lambda: len(uploader.of(Pruned)) > before)
    [answer] = uploader.of(Pruned)[before:]
    return answer


def chunk_objects(uploader: InProcess, stream_id: str) -> list[str]:
    return sorted(uploader.s3.listing(uploader.s3.layout.stream_prefix(stream_id) + "chunks/"))


def chunk_keys(uploader: InProcess, stream_id: str, chunks: list[ChunkRecord]) -> list[str]:
    return [uploader.s3.layout.chunk_key(stream_id, c.index, c.revision) for c in chunks]


def manifest_in_s3(uploader: InProcess, stream_id: str) -> manifest.Manifest:
    return manifest.decode(uploader.s3.get(uploader.s3.layout.manifest_key(stream_id)))


def manifest_etag(uploader: InProcess, stream_id: str) -> str:
    return uploader.s3.stat(uploader.s3.layout.manifest_key(stream_id)).etag


def logged(caplog, event: str) -> list[dict]:
    return [
        r.fields
        for r in caplog.records
        if r.name.startswith("streamer.uploader") and r.getMessage() == event
    ]


def flipped(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


@no_chunks
def test_a_proven_stream_loses_every_chunk_object_and_the_checkpoint_and_manifest_say_so(
    uploader, caplog
):
    caplog.set_level(logging.INFO, logger="streamer")
    record, chunks = finished(uploader)
    stream_id = record.stream_id
    assert not record.checked_by_s3, "uploaded from the file: proven by reading it back"
    assert chunk_objects(uploader, stream_id) == chunk_keys(uploader, stream_id, chunks)
    assert len(chunks) == 4

    answer = prune(uploader, stream_id)
    assert answer == Pruned(stream_id=stream_id, deleted=True, final=False)
    assert chunk_objects(uploader, stream_id) == []
    assert uploader.s3.get(record.assembled.key) == DATA, "the recording is the whole now"
    stored = uploader.store.get_stream(stream_id)
    assert stored.chunks_deleted_at is not None and stored.chunks_kept_because is None
    written = manifest_in_s3(uploader, stream_id)
    assert written.chunks_deleted_at == stored.chunks_deleted_at
    assert len(written.chunks) == 4, "metadata.json still says what was uploaded"
    assert stored.manifest_etag == manifest_etag(uploader, stream_id)
    assert stored.manifest_etag != record.manifest_etag, "metadata.json was written again"
    [deleted] = logged(caplog, "chunks_deleted")
    assert (deleted["chunks"], deleted["proven_by"]) == (4, "reading it back")
    assert deleted["kept"] == record.assembled.key
    assert logged(caplog, "objects_kept") == []


@pytest.mark.parametrize("uploader", [COMPOSED], indirect=True)
def test_a_whole_s3_checked_as_it_joined_it_is_proven_by_that_checksum_unread(
    uploader, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="streamer")
    data = os.urandom(11 * MiB)
    record, chunks = finished(uploader, data)
    assert record.checked_by_s3 and record.assembled.method == "compose"
    assert len(chunks) == 3
    read_back = []
    digest_of = uploader.s3.digest_of

    def spied(key, *args, **kwargs):
        read_back.append(key)
        return digest_of(key, *args, **kwargs)

    monkeypatch.setattr(uploader.s3, "digest_of", spied)
    answer = prune(uploader, record.stream_id)
    assert answer == Pruned(stream_id=record.stream_id, deleted=True)
    assert chunk_objects(uploader, record.stream_id) == []
    assert read_back == [], "S3's checksum proves it: 11 MiB are not read back"
    [deleted] = logged(caplog, "chunks_deleted")
    assert (deleted["chunks"], deleted["proven_by"]) == (3, "the crc64nvme S3 checked")


@pytest.mark.parametrize("uploader", [COMPOSED], indirect=True)
def test_a_whole_whose_checksum_in_s3_is_not_the_streams_keeps_the_chunks_for_good(uploader):
    data = os.urandom(11 * MiB)
    record, chunks = finished(uploader, data)
    s3 = uploader.s3
    sidecar = s3.root / ".sidecars" / s3.bucket / record.assembled.key
    meta = json.loads(sidecar.read_text())
    assert meta["crc64nvme"] == record.crc64nvme
    meta["crc64nvme"] = digests.of(digests.CRC64NVME, b"another").value
    sidecar.write_text(json.dumps(meta))

    answer = prune(uploader, record.stream_id)
    assert answer == Pruned(stream_id=record.stream_id, deleted=False, final=True)
    assert chunk_objects(uploader, record.stream_id) == chunk_keys(
        uploader, record.stream_id, chunks
    )
    stored = uploader.store.get_stream(record.stream_id)
    assert stored.chunks_deleted_at is None
    assert "crc64nvme in S3 is not the stream's" in stored.chunks_kept_because


def missing(s3: DirectoryStore, key: str) -> None:
    s3.remove(key)


def overwritten_in_place(s3: DirectoryStore, key: str) -> None:
    """Its bytes changed behind S3's back: the same size, ETag and checksum."""
    path = s3.root / s3.bucket / key
    path.write_bytes(flipped(path.read_bytes()))


def written_over(s3: DirectoryStore, key: str) -> None:
    """Another object of the same size put there: another ETag."""
    other = flipped(DATA)
    s3.put(key, InMemory(other), digests.of(SHA256, other), "video/mp4")


@no_chunks
@pytest.mark.parametrize(
    "damage, why",
    [
        (missing, "the assembled object is missing from S3"),
        (overwritten_in_place, "the assembled object's bytes are not the stream's"),
        (written_over, "the assembled object in S3 is not the one made"),
    ],
    ids=["missing", "overwritten-in-place", "written-over"],
)
def test_a_whole_object_not_proven_keeps_every_chunk_for_good_and_says_why(
    uploader, caplog, damage, why
):
    caplog.set_level(logging.INFO, logger="streamer")
    record, chunks = finished(uploader)
    stream_id = record.stream_id
    damage(uploader.s3, record.assembled.key)

    answer = prune(uploader, stream_id)
    assert answer == Pruned(stream_id=stream_id, deleted=False, final=True)
    assert chunk_objects(uploader, stream_id) == chunk_keys(uploader, stream_id, chunks)
    stored = uploader.store.get_stream(stream_id)
    assert stored.chunks_deleted_at is None
    assert stored.chunks_kept_because.startswith(f"NotProven: {why}")
    assert manifest_in_s3(uploader, stream_id).chunks_deleted_at is None
    assert stored.manifest_etag == record.manifest_etag == manifest_etag(uploader, stream_id)
    [kept] = logged(caplog, "chunks_kept")
    assert kept["final"] is True and why in kept["error"]
    assert logged(caplog, "chunks_deleted") == []

    # Recorded: no later ask reads the whole back again, whatever S3 holds by then.
    again = prune(uploader, stream_id)
    assert (again.deleted, again.final) == (False, True)
    assert len(chunk_objects(uploader, stream_id)) == len(chunks)


@no_chunks
def test_a_chunk_object_this_store_did_not_write_is_left_where_it_is(uploader, caplog):
    caplog.set_level(logging.INFO, logger="streamer")
    record, chunks = finished(uploader)
    stream_id = record.stream_id
    key = chunk_keys(uploader, stream_id, chunks)[2]
    other = b"someone else's" * 100
    uploader.s3.put(key, InMemory(other), digests.of(SHA256, other), "application/octet-stream")
    assert uploader.s3.stat(key).etag != chunks[2].etag

    answer = prune(uploader, stream_id)
    assert answer == Pruned(stream_id=stream_id, deleted=True)
    assert chunk_objects(uploader, stream_id) == [key]
    assert uploader.s3.get(key) == other
    assert uploader.store.get_stream(stream_id).chunks_deleted_at is not None
    [left] = logged(caplog, "objects_kept")
    assert left["keys"] == [key]
    assert left["reason"] == "not written by this store, or changed since"


@no_chunks
def test_the_earlier_revisions_this_store_wrote_go_too_and_are_forgotten(uploader):
    record, chunks = finished(uploader)
    stream_id, s3 = record.stream_id, uploader.s3
    # Chunk 1 as if the recorder rewrote it: revision 1 now, revision 0 superseded.
    earlier = chunks[1]
    data = s3.get(s3.layout.chunk_key(stream_id, 1, earlier.revision))
    etag = s3.put(
        s3.layout.chunk_key(stream_id, 1, earlier.revision + 1),
        InMemory(data),
        digests.of(SHA256, data),
        "application/octet-stream",
    )
    later = msgspec.structs.replace(
        earlier,
        revision=earlier.revision + 1,
        etag=etag,
        superseded=((earlier.revision, earlier.etag),),
    )
    uploader.store.replace_stream(record, [chunks[0], later, *chunks[2:]])
    assert len(chunk_objects(uploader, stream_id)) == 5

    assert prune(uploader, stream_id).deleted
    assert chunk_objects(uploader, stream_id) == []
    assert [c.superseded for c in uploader.store.chunks(stream_id)] == [()] * 4


@no_chunks
def test_a_stream_pruned_already_is_answered_and_nothing_more_is_done(uploader, monkeypatch):
    record, _ = finished(uploader)
    stream_id = record.stream_id
    assert prune(uploader, stream_id).deleted
    done = uploader.store.get_stream(stream_id)
    etag = manifest_etag(uploader, stream_id)
    prefix, asked = uploader.s3.layout.stream_prefix(stream_id), []
    for name in ("stat", "digest_of", "remove_if", "put", "listing"):
        real = getattr(uploader.s3, name)

        def spied(key, *args, _real=real, _name=name, **kwargs):
            if key.startswith(prefix):  # not the instance's claim, looked at now and then
                asked.append((_name, key))
            return _real(key, *args, **kwargs)

        monkeypatch.setattr(uploader.s3, name, spied)

    again = prune(uploader, stream_id)
    assert again == Pruned(stream_id=stream_id, deleted=False, final=True)
    assert asked == [], "S3 is not asked anything about the stream"
    stored = uploader.store.get_stream(stream_id)
    assert stored.chunks_deleted_at == done.chunks_deleted_at
    assert stored.chunks_kept_because is None
    assert manifest_etag(uploader, stream_id) == etag == stored.manifest_etag


@no_chunks
def test_a_stream_the_store_does_not_know_is_answered_kept_for_good(uploader):
    assert prune(uploader, "nowhere-1") == Pruned(stream_id="nowhere-1", deleted=False, final=True)


@pytest.mark.parametrize("uploader", [{"assemble": False}], indirect=True)
def test_a_stream_without_a_whole_object_keeps_its_chunks_for_good(uploader):
    record = uploader.track("cam.mp4", DATA)
    uploader.finish(record)
    uploader.run_until(lambda: uploader.of(StreamFinished))
    stream_id = record.stream_id
    assert uploader.store.get_stream(stream_id).assembled is None
    answer = prune(uploader, stream_id)
    assert answer == Pruned(stream_id=stream_id, deleted=False, final=True)
    assert len(chunk_objects(uploader, stream_id)) == 4
    assert uploader.store.get_stream(stream_id).chunks_deleted_at is None


@no_chunks
def test_a_stream_still_being_written_keeps_its_chunks(uploader):
    record = uploader.track("cam.mp4", DATA[: 2 * SIZE])
    stream_id = record.stream_id
    uploader.run_until(lambda: uploader.store.get_stream(stream_id).chunk_count == 2)
    answer = prune(uploader, stream_id)
    assert (answer.deleted, answer.final) == (False, True)
    assert len(chunk_objects(uploader, stream_id)) == 2


@pytest.mark.parametrize(
    "error",
    [
        urllib3.exceptions.ProtocolError(
            "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")
        ),
        s3_error("SlowDown", 503, "chunks"),
    ],
    ids=["connection-cut", "slow-down"],
)
def test_s3_failing_midway_leaves_the_stream_unpruned_to_be_asked_again(failing, caplog, error):
    caplog.set_level(logging.INFO, logger="streamer")
    uploader, s3 = failing, failing.s3
    record, chunks = finished(uploader)
    stream_id = record.stream_id
    keys = chunk_keys(uploader, stream_id, chunks)
    s3.error, s3.after = error, 2

    answer = prune(uploader, stream_id)
    assert answer == Pruned(stream_id=stream_id, deleted=False, final=False)
    assert s3.asked == keys[:3], "stopped at the one that failed"
    assert chunk_objects(uploader, stream_id) == keys[2:]
    stored = uploader.store.get_stream(stream_id)
    assert stored.chunks_deleted_at is None and stored.chunks_kept_because is None
    assert manifest_in_s3(uploader, stream_id).chunks_deleted_at is None
    assert stored.manifest_etag == record.manifest_etag == manifest_etag(uploader, stream_id)
    [kept] = logged(caplog, "chunks_kept")
    assert kept["final"] is False and type(error).__name__ in kept["error"]

    # S3 back: asked again, the rest go (those gone already are no trouble).
    s3.error = None
    assert prune(uploader, stream_id) == Pruned(stream_id=stream_id, deleted=True)
    assert chunk_objects(uploader, stream_id) == []
    assert uploader.store.get_stream(stream_id).chunks_deleted_at is not None
    assert manifest_in_s3(uploader, stream_id).chunks_deleted_at is not None


def test_a_refusal_when_asked_again_after_deletes_went_leaves_the_rest_not_all(failing, caplog):
    """The deletes an earlier attempt made count: S3 refusing the next one is a refusal
    partway, not one from the first (which would keep chunks that are gone for good)."""
    caplog.set_level(logging.INFO, logger="streamer")
    uploader, s3 = failing, failing.s3
    record, chunks = finished(uploader)
    stream_id = record.stream_id
    keys = chunk_keys(uploader, stream_id, chunks)
    s3.error, s3.after = urllib3.exceptions.ProtocolError("connection cut"), 2
    assert prune(uploader, stream_id) == Pruned(stream_id=stream_id, deleted=False)

    asked = len(s3.asked)
    s3.error, s3.after = s3_error("AccessDenied", 403, "chunks"), asked + 2
    answer = prune(uploader, stream_id)
    assert s3.asked[asked:] == keys[:3], "the two gone, then the one refused"
    assert answer == Pruned(stream_id=stream_id, deleted=True)
    assert chunk_objects(uploader, stream_id) == keys[2:]
    stored = uploader.store.get_stream(stream_id)
    assert stored.chunks_deleted_at is not None and stored.chunks_kept_because is None
    [left] = logged(caplog, "objects_kept")
    assert left["keys"] == keys[2:] and "AccessDenied" in left["reason"]


def test_deletes_s3_refuses_from_the_first_keep_the_chunks_for_good(failing):
    uploader, s3 = failing, failing.s3
    record, chunks = finished(uploader)
    stream_id = record.stream_id
    s3.error, s3.after = s3_error("AccessDenied", 403, "chunks"), 0

    answer = prune(uploader, stream_id)
    assert answer == Pruned(stream_id=stream_id, deleted=False, final=True)
    assert chunk_objects(uploader, stream_id) == chunk_keys(uploader, stream_id, chunks)
    stored = uploader.store.get_stream(stream_id)
    assert stored.chunks_deleted_at is None
    assert "AccessDenied" in stored.chunks_kept_because
    assert len(s3.asked) == 1

    again = prune(uploader, stream_id)
    assert (again.deleted, again.final) == (False, True)
    assert len(s3.asked) == 1, "not asked again"


def test_deletes_refused_before_any_went_keep_the_chunks_though_one_was_not_ours(failing):
    uploader, s3 = failing, failing.s3
    record, chunks = finished(uploader)
    stream_id = record.stream_id
    keys = chunk_keys(uploader, stream_id, chunks)
    other = b"someone else's" * 100
    s3.put(keys[0], InMemory(other), digests.of(SHA256, other), "application/octet-stream")
    s3.error, s3.after = s3_error("AccessDenied", 403, "chunks"), 1

    answer = prune(uploader, stream_id)
    assert answer == Pruned(stream_id=stream_id, deleted=False, final=True)
    assert s3.asked == keys[:2] and chunk_objects(uploader, stream_id) == keys
    stored = uploader.store.get_stream(stream_id)
    assert stored.chunks_deleted_at is None and "AccessDenied" in stored.chunks_kept_because


def test_deletes_s3_refuses_partway_leave_the_rest_and_say_why(failing, caplog):
    caplog.set_level(logging.INFO, logger="streamer")
    uploader, s3 = failing, failing.s3
    record, chunks = finished(uploader)
    stream_id = record.stream_id
    keys = chunk_keys(uploader, stream_id, chunks)
    s3.error, s3.after = s3_error("AccessDenied", 403, "chunks"), 2

    answer = prune(uploader, stream_id)
    assert answer == Pruned(stream_id=stream_id, deleted=True)
    assert s3.asked == keys[:3], "no more deletes once S3 refused one"
    assert chunk_objects(uploader, stream_id) == keys[2:]
    assert uploader.store.get_stream(stream_id).chunks_deleted_at is not None
    [left] = logged(caplog, "objects_kept")
    assert left["keys"] == keys[2:]
    assert left["reason"].startswith("S3 refused the rest of the deletes: S3Error")
    assert "AccessDenied" in left["reason"]


@no_chunks
def test_chunks_deleted_when_metadata_json_cannot_be_written_are_still_recorded(
    uploader, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="streamer")
    record, _ = finished(uploader)
    stream_id = record.stream_id

    def refused(*args, **kwargs):
        raise ConnectionResetError("cut")

    monkeypatch.setattr(uploader.s3, "put", refused)
    assert prune(uploader, stream_id) == Pruned(stream_id=stream_id, deleted=True)
    assert chunk_objects(uploader, stream_id) == []
    stored = uploader.store.get_stream(stream_id)
    assert stored.chunks_deleted_at is not None
    assert stored.manifest_etag == record.manifest_etag == manifest_etag(uploader, stream_id)
    assert manifest_in_s3(uploader, stream_id).chunks_deleted_at is None
    [failed] = logged(caplog, "manifest_update_failed")
    assert "cut" in failed["error"]
