"""Taking over on purpose (`streamer checkpoint adopt`) on the directory-backed store
(tests/dirstore.py) and real checkpoint stores: every stream the store holds brought up
to its metadata.json in S3, or written over it where the store is further along, or left
alone (none in S3, or one that cannot be read); then the claim moved on to this store.
tests/integration/test_s3_record.py adopts a partial stream S3 holds complete, on MinIO."""

from __future__ import annotations

import pytest
from dirstore import DirectoryStore
from sample_records import NOW, chunks, finished

from streamer import claim, digests, manifest
from streamer.adoption import adopt
from streamer.bodies import InMemory
from streamer.checkpoint import CheckpointStore
from streamer.digests import SHA256
from streamer.publishing import publish
from streamer.records import AssemblyUpload, StreamRecord, StreamState

MAP_SIZE = 64 * 1024 * 1024


@pytest.fixture
def s3(tmp_path):
    made = DirectoryStore(tmp_path / "s3", prefix="rec", instance="host")
    made.ensure_bucket(create=True)
    return made


@pytest.fixture
def store(tmp_path):
    made = CheckpointStore(str(tmp_path / "store"), MAP_SIZE)
    made.claim_instance("host", "host")
    yield made
    made.close()


def holding(store: CheckpointStore, record: StreamRecord, count: int) -> None:
    """The store holds `record` and its first `count` chunks."""
    store.create_stream(record)
    store.replace_stream(record, chunks(count))


def active(**changes) -> StreamRecord:
    """A stream still being uploaded, as a backup taken while it was would hold it."""
    changes = {"chunk_count": 1, "committed_bytes": 100, "completed_at": None, **changes}
    return finished(StreamState.ACTIVE, size=None, sha256=None, **changes)


def in_s3(s3: DirectoryStore, stream_id: str = "cam-1") -> tuple[bytes, str] | None:
    return s3.read(s3.layout.manifest_key(stream_id))


def test_a_stream_s3_holds_no_record_of_is_left_to_resume_and_the_claim_is_taken(s3, store):
    holding(store, active(), 1)
    done = adopt(s3, store)
    assert (done.brought_up, done.written, done.unreadable, done.unchanged) == ([], [], [], 1)
    assert store.get_stream("cam-1") == active() and len(store.chunks("cam-1")) == 1
    assert in_s3(s3) is None, "nothing written for an unfinished stream"
    assert done.claim is not None and done.claim.store == store.store_id()
    assert claim.decode(s3.get(s3.layout.owner_key())) == done.claim


def test_a_live_stream_s3_holds_finished_is_brought_up_and_its_assembly_let_go(s3, store):
    key = s3.layout.assembled_key("cam-1", "cam.mp4")
    upload_id, _ = s3.begin_upload(key, "video/mp4")
    assembly = AssemblyUpload(key=key, upload_id=upload_id, content_type="video/mp4")
    holding(store, active(assembly=assembly), 1)
    ahead = publish(s3, finished(), chunks(3))
    done = adopt(s3, store)
    assert done.brought_up == ["cam-1"] and done.written == []
    record = store.get_stream("cam-1")
    assert (record.state, record.total_size, record.chunk_count) == (StreamState.COMPLETE, 300, 3)
    assert record.manifest_etag == ahead.etag and record.assembly is None
    assert store.chunks("cam-1") == chunks(3)
    assert s3.open_uploads(key) == [], "the upload S3's record has no use for is aborted"
    assert in_s3(s3)[1] == ahead.etag, "S3's record is left as it was"


def test_a_finished_stream_s3_holds_as_it_is_only_learns_the_record_s_etag(s3, store):
    holding(store, finished(), 3)  # a backup taken before it saw its write go through
    ahead = publish(s3, finished(), chunks(3))
    done = adopt(s3, store)
    assert (done.brought_up, done.written, done.unchanged) == ([], [], 1)
    assert store.get_stream("cam-1") == finished(manifest_etag=ahead.etag)
    assert in_s3(s3)[1] == ahead.etag


def test_a_stream_this_store_holds_further_along_is_written_over_s3_s(s3, store):
    publish(s3, finished(StreamState.PARTIAL, size=100, sha256=None), chunks(1))
    holding(store, finished(source_deleted_at=NOW), 3)
    done = adopt(s3, store)
    assert done.written == ["cam-1"] and done.brought_up == []
    data, etag = in_s3(s3)
    theirs = manifest.decode(data)
    assert (theirs.status, theirs.chunk_count, theirs.source.deleted_at) == ("complete", 3, NOW)
    assert store.get_stream("cam-1").manifest_etag == etag


def test_a_record_in_s3_that_cannot_be_read_is_reported_and_left_as_it_is(s3, store):
    holding(store, finished(), 3)
    key = s3.layout.manifest_key("cam-1")
    s3.put(key, InMemory(b"{not json"), digests.of(SHA256, b"{not json"), "application/json")
    before = in_s3(s3)
    done = adopt(s3, store)
    assert done.unreadable == ["cam-1"] and done.written == done.brought_up == []
    assert in_s3(s3) == before and store.get_stream("cam-1") == finished()
    assert done.claim is not None, "the claim is taken all the same"


def test_a_copy_of_a_store_behind_s3_takes_the_claim_over_and_may_start(s3, store, tmp_path):
    store.begin_start()
    claim.hold(s3, store)
    store.backup(str(tmp_path / "backup"))
    store.begin_start()
    moved = claim.hold(s3, store)  # the store went on after the copy was taken
    copy = CheckpointStore(str(tmp_path / "backup"), MAP_SIZE)
    try:
        done = adopt(s3, copy)
        assert (done.claim.store, done.claim.generation) == (moved.store, moved.generation + 1)
        copy.begin_start()
        assert claim.hold(s3, copy).generation == moved.generation + 2, "no longer behind"
    finally:
        copy.close()


def test_a_store_whose_instance_another_store_claims_is_refused_before_writing(s3, store, tmp_path):
    other = CheckpointStore(str(tmp_path / "other"), MAP_SIZE)
    try:
        other.claim_instance("host", "host")
        other.begin_start()
        claim.hold(s3, other)
    finally:
        other.close()
    holding(store, finished(source_deleted_at=NOW), 3)
    publish(s3, finished(StreamState.PARTIAL, size=100, sha256=None), chunks(1))
    before = (in_s3(s3), s3.read(s3.layout.owner_key()))
    with pytest.raises(claim.InstanceTaken):
        adopt(s3, store)
    assert (in_s3(s3), s3.read(s3.layout.owner_key())) == before
    assert store.get_stream("cam-1").manifest_etag is None
