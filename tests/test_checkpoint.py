"""The checkpoint store on real LMDB files, across real processes."""

import multiprocessing

import msgspec
import pytest
from sample_records import chunk, stream

from streamer.checkpoint import CheckpointStore, ChunkOutOfOrder, UnknownStream
from streamer.records import StreamState


@pytest.fixture
def store(tmp_path):
    s = CheckpointStore(str(tmp_path / "ck"), map_size=1 << 20)
    yield s
    s.close()


def test_chunks_commit_in_order_and_survive_reopening(store, tmp_path):
    store.create_stream(stream())
    for i in range(3):
        store.commit_chunk("cam-1", chunk(i))
    store.close()
    reopened = CheckpointStore(str(tmp_path / "ck"), map_size=1 << 20)
    record = reopened.get_stream("cam-1")
    assert (record.chunk_count, record.committed_bytes) == (3, 300)
    assert str(record.position) == "cam-1#000003@300"
    assert [c.index for c in reopened.chunks("cam-1")] == [0, 1, 2]
    assert reopened.stream_at("/in/cam.mp4").stream_id == "cam-1"
    reopened.close()


def test_a_gap_is_refused(store):
    store.create_stream(stream())
    with pytest.raises(ChunkOutOfOrder):
        store.commit_chunk("cam-1", chunk(1))


def test_chunks_that_land_together_commit_together_all_or_none(store):
    store.create_stream(stream())
    record = store.commit_chunks("cam-1", [chunk(0), chunk(1), chunk(2)], head=b"ftyp")
    assert (record.chunk_count, record.committed_bytes, record.head) == (3, 300, b"ftyp")
    with pytest.raises(ChunkOutOfOrder):
        store.commit_chunks("cam-1", [chunk(3), chunk(5)])
    record = store.get_stream("cam-1")
    assert (record.chunk_count, record.committed_bytes) == (3, 300), "chunk 3 is not in"
    assert [c.index for c in store.chunks("cam-1")] == [0, 1, 2]


def test_a_reupload_replaces_the_chunk_and_is_counted(store):
    store.create_stream(stream())
    store.commit_chunk("cam-1", chunk(0))
    store.commit_chunk("cam-1", chunk(1))
    record = store.commit_chunk("cam-1", chunk(1, size=40))
    assert (record.chunk_count, record.committed_bytes, record.reuploaded_chunks) == (2, 140, 1)


def test_drop_chunks_from(store):
    store.create_stream(stream())
    for i in range(4):
        store.commit_chunk("cam-1", chunk(i))
    record = store.drop_chunks_from("cam-1", 2)
    assert (record.chunk_count, record.committed_bytes) == (2, 200)
    assert [c.index for c in store.chunks("cam-1")] == [0, 1]


def test_parts_are_noted_only_on_the_chunk_revision_that_was_copied(store):
    store.create_stream(stream())
    for i in range(3):
        store.commit_chunk("cam-1", chunk(i))
    revised = msgspec.structs.replace(chunk(1), revision=1, etag="e1-r1")
    store.commit_chunk("cam-1", revised)
    store.drop_chunks_from("cam-1", 2)
    copied = [(chunk(0), "p0"), (chunk(1), "p1"), (chunk(2), "p2")]
    assert store.record_parts("cam-1", "up-1", copied) == 1
    first, second = store.chunks("cam-1")
    assert (first.part_in("up-1"), first.part_in("up-2"), first.part_in(None)) == ("p0", None, None)
    assert second.part_in("up-1") is None, "the part holds revision 0, the chunk is revision 1"


def test_chunks_of_one_stream_do_not_leak_into_another(store):
    store.create_stream(stream("cam"))
    store.create_stream(stream("cam-2", "/in/cam2.mp4"))
    store.commit_chunk("cam", chunk(0))
    store.commit_chunk("cam-2", chunk(0))
    assert len(store.chunks("cam")) == 1


def test_unknown_and_duplicate_streams(store):
    with pytest.raises(UnknownStream):
        store.get_stream("nope")
    store.create_stream(stream())
    with pytest.raises(Exception, match="exists already"):
        store.create_stream(stream())


def test_a_full_map_grows(store):
    store.create_stream(stream())
    for i in range(12000):  # about 2.5 MiB of records in a 1 MiB map
        store.commit_chunk("cam-1", chunk(i))
    assert store.get_stream("cam-1").chunk_count == 12000
    assert store._env.info()["map_size"] > 1 << 20


def _commit_in_child(path, start, count):
    store = CheckpointStore(path, map_size=1 << 20)
    for i in range(start, start + count):
        store.create_stream(stream(f"s{i}", f"/in/{i}.mp4"))
        store.commit_chunk(f"s{i}", chunk(0))
    store.close()


def test_processes_write_one_environment_each_with_its_own_handle(tmp_path):
    path = str(tmp_path / "ck")
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_commit_in_child, args=(path, n * 500, 500)) for n in range(3)]
    for c in children:
        c.start()
    for c in children:
        c.join(60)
        assert c.exitcode == 0
    store = CheckpointStore(path, map_size=1 << 20)
    assert sum(1 for _ in store.streams(StreamState.ACTIVE)) == 1500
    store.close()


def test_a_chunk_uploaded_again_carries_the_revisions_it_supersedes(store):
    store.create_stream(stream())
    store.commit_chunk("cam-1", chunk(0))
    store.commit_chunk("cam-1", chunk(1))
    store.commit_chunk("cam-1", msgspec.structs.replace(chunk(0), revision=1, etag="r1"))
    store.commit_chunk("cam-1", msgspec.structs.replace(chunk(0), revision=2, etag="r2"))
    first, second = store.chunks("cam-1")
    assert first.superseded == ((0, chunk(0).etag), (1, "r1")) and second.superseded == ()
    store.forget_superseded("cam-1")
    assert [c.superseded for c in store.chunks("cam-1")] == [(), ()]


def test_a_stream_brought_up_to_s3_s_record_takes_its_chunk_table_whole(store):
    store.create_stream(stream())
    for index in range(3):
        store.commit_chunk("cam-1", chunk(index))
    brought = msgspec.structs.replace(
        store.get_stream("cam-1"), state=StreamState.COMPLETE, chunk_count=2
    )
    store.replace_stream(brought, [chunk(0), chunk(1, size=50)])
    assert [c.size for c in store.chunks("cam-1")] == [100, 50]
    assert store.get_stream("cam-1").state is StreamState.COMPLETE
    assert [r.stream_id for r in store.active_streams()[0]] == []


def test_starts_not_seen_to_hold_the_claim_are_kept_until_one_does(store):
    store.claim_instance("host", "default")
    first = store.begin_start()
    second = store.begin_start()
    assert store.claim_starts() == (second, [first, second], False)
    store.confirm_claim(second)
    third = store.begin_start()
    assert store.claim_starts() == (third, [second, third], True)
    for _ in range(100):
        store.begin_start()
    kept = store.claim_starts()[1]
    assert len(kept) == 64 and kept[0] == second, "the last one confirmed is never let go"


def test_a_confirmation_keeps_the_starts_begun_since_and_never_undoes_a_later_one(store):
    """One uploader confirms the start it read while another (a clean stop) begins a new
    one and moves S3's claim on to it: the store must keep knowing the new one as its own."""
    store.claim_instance("host", "default")
    first = store.begin_start()
    stop = store.begin_start()
    store.confirm_claim(first)
    assert store.claim_starts() == (stop, [first, stop], True)
    store.confirm_claim(stop)
    store.confirm_claim(first)  # late
    assert store.claim_starts() == (stop, [stop], True)
