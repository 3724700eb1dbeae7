"""The decisions behind S3 as the record, without a server: which metadata.json wins, what
a store brought up to it holds, and what the instance's claim says to a start."""

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from streamer import manifest
from streamer.layout import Layout
from streamer.policy import ClaimVerdict, OtherRecording, claim_verdict, reconciled_record
from streamer.records import Assembled, ChunkRecord, StreamRecord, StreamState

NOW = datetime(2026, 12, 6, tzinfo=UTC)
LAYOUT = Layout("rec", "host")


def chunk(index: int, size: int = 100, revision: int = 0) -> ChunkRecord:
    return ChunkRecord(
        index=index,
        offset=index * 100,
        size=size,
        etag=f"e{index}.{revision}",
        uploaded_at=NOW,
        sha256=f"{index:064x}",
        revision=revision,
    )


def finished(state=StreamState.COMPLETE, size=300, sha256="ab" * 32, **changes) -> StreamRecord:
    record = StreamRecord(
        stream_id="cam-1",
        path="/in/cam.mp4",
        inode=7,
        device=1,
        chunk_size=100,
        first_seen_at=NOW,
        state=state,
        total_size=size,
        committed_bytes=size or 0,
        chunk_count=(size or 0) // 100,
        sha256=sha256,
        completed_at=NOW + timedelta(seconds=30),
        mtime_ns=int((NOW + timedelta(seconds=29)).timestamp() * 1e9) + 123,
    )
    return msgspec.structs.replace(record, **changes)


def record_of(record: StreamRecord) -> manifest.Manifest:
    count = (record.total_size or 0) // 100
    return manifest.build(record, [chunk(i) for i in range(count)], LAYOUT)


COMPLETE = record_of(finished())
PARTIAL = record_of(finished(StreamState.PARTIAL, size=100, sha256=None))


def test_a_record_further_along_in_s3_is_never_replaced_by_a_lesser_one():
    assert reconciled_record(PARTIAL, COMPLETE) == COMPLETE
    cancelled = record_of(finished(StreamState.CANCELLED, size=200, sha256=None))
    assert reconciled_record(cancelled, COMPLETE) == COMPLETE
    assert reconciled_record(PARTIAL, cancelled) == cancelled, "more bytes over fewer"


def test_a_record_further_along_in_this_store_goes_over_s3_s():
    assert reconciled_record(COMPLETE, PARTIAL) == COMPLETE


def test_what_either_learned_after_the_end_is_kept_whichever_wins():
    deleted = record_of(finished(source_deleted_at=NOW))
    pruned = record_of(finished(chunks_deleted_at=NOW))
    merged = reconciled_record(pruned, deleted)
    assert merged.source.deleted_at == NOW and merged.chunks_deleted_at == NOW
    assert reconciled_record(PARTIAL, deleted) == deleted


def test_another_recording_is_never_written_over():
    other = record_of(finished(sha256="cd" * 32))
    with pytest.raises(OtherRecording, match="another recording"):
        reconciled_record(COMPLETE, other)
    with pytest.raises(OtherRecording):
        reconciled_record(COMPLETE, msgspec.structs.replace(COMPLETE, stream_id="cam-2"))


def test_without_the_file_s_sha256_another_recording_is_told_by_its_crc64nvme():
    ours = msgspec.structs.replace(COMPLETE, sha256=None, crc64nvme="1" * 16)
    theirs = msgspec.structs.replace(ours, crc64nvme="2" * 16)
    with pytest.raises(OtherRecording, match="crc64nvme:2222"):
        reconciled_record(ours, theirs)
    with pytest.raises(OtherRecording):
        reconciled_record(msgspec.structs.replace(ours, sha256="ab" * 32), theirs)
    assert reconciled_record(ours, msgspec.structs.replace(ours, source=COMPLETE.source)) == ours
    # A partial record holds fewer bytes: its CRC is not the whole's.
    partial = msgspec.structs.replace(PARTIAL, crc64nvme="3" * 16)
    assert reconciled_record(partial, ours) == ours
    assert reconciled_record(ours, msgspec.structs.replace(ours, total_size=200)) == ours


def test_a_store_brought_up_to_s3_s_record_holds_what_it_says():
    behind = finished(
        StreamState.ACTIVE,
        size=None,
        sha256=None,
        committed_bytes=100,
        chunk_count=1,
        completed_at=None,
    )
    assembled = Assembled(key="rec/host/cam-1/cam.mp4", size=300, etag="whole-2", method="compose")
    ahead = finished(assembled=assembled, chunks_deleted_at=NOW, source_deleted_at=NOW)
    chunks = [chunk(0), chunk(1), chunk(2, revision=1)]
    record = manifest.build(ahead, chunks, LAYOUT)
    brought, brought_chunks = manifest.to_records(record, behind, "etag-1")
    assert brought_chunks == chunks
    assert brought.state is StreamState.COMPLETE and brought.manifest_etag == "etag-1"
    assert (brought.total_size, brought.committed_bytes, brought.chunk_count) == (300, 300, 3)
    assert brought.assembled == assembled and brought.assembly is None
    assert brought.chunks_deleted_at == NOW and brought.source_deleted_at == NOW
    assert manifest.build(brought, brought_chunks, LAYOUT) == record
    assert brought.mtime_ns is not None and abs(brought.mtime_ns - ahead.mtime_ns) < 1000


@pytest.mark.parametrize(
    ("store", "start", "own", "confirmed", "expected"),
    [
        (None, None, ["s2"], False, ClaimVerdict.MOVE_ON),  # unclaimed
        ("other", "x", ["s2"], True, ClaimVerdict.TAKEN),
        ("mine", "s2", ["s1", "s2"], True, ClaimVerdict.HELD),  # a sibling moved it on
        ("mine", "s1", ["s1", "s2"], True, ClaimVerdict.MOVE_ON),
        ("mine", "s0", ["s1", "s2"], True, ClaimVerdict.BEHIND),  # moved on by a copy
        ("mine", "s0", ["s1", "s2"], False, ClaimVerdict.BEHIND),
        # A claim from before starts were named: this store's until it names one.
        ("mine", None, ["s1", "s2"], False, ClaimVerdict.MOVE_ON),
        ("mine", None, ["s2"], True, ClaimVerdict.BEHIND),
    ],
)
def test_the_claim_tells_a_start_what_to_do(store, start, own, confirmed, expected):
    assert claim_verdict(store, start, "mine", "s2", own, confirmed) is expected
