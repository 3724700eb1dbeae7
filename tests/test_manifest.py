"""metadata.json as streamer writes and reads it: a finished stream's record built into
one, through its bytes and back, what its JSON carries (docs/metadata.md), who took the
stream's crc64nvme, its durations, one of an older schema, one that cannot be read, and
the records a store behind S3 is brought up to. Which of two records wins is
tests/test_policy.py's."""

from __future__ import annotations

import json
from datetime import timedelta

import msgspec
import pytest
from sample_records import LAYOUT, NOW, chunk, finished

from streamer import manifest
from streamer.digests import CRC32C, CRC64NVME, SHA256, Digest
from streamer.mp4 import Mp4Facts, Track
from streamer.records import Assembled, ChunkRecord, StreamState

MP4 = Mp4Facts(
    is_mp4=True,
    brand="isom",
    has_moov=True,
    playable=True,
    duration_seconds=28.5,
    tracks=[Track(track_id=1, kind="vide", codec="avc1", width=1920, height=1080)],
)
CRC = "0123456789abcdef"


def crc_chunk(index: int, **changes) -> ChunkRecord:
    """A chunk that went with its crc64nvme alone (over https)."""
    plain = msgspec.structs.replace(chunk(index), sha256=None, crc64nvme=f"{index:016x}")
    return msgspec.structs.replace(plain, **changes)


def built(**changes) -> manifest.Manifest:
    record = finished(**{"relative_path": "cam1/cam.mp4", "mp4": MP4, **changes})
    chunks = [chunk(0), crc_chunk(1, crc32c="e3069283"), crc_chunk(2, revision=1, reason="why")]
    return manifest.build(record, chunks, LAYOUT)


def test_a_built_record_comes_back_whole_through_its_bytes():
    made = built(crc64nvme=CRC, status_reason=None, source_deleted_at=NOW)
    data = manifest.encode(made)
    assert data.endswith(b"}\n") and data.startswith(b'{\n  "schema_version": 3,')
    assert manifest.decode(data) == made
    behind = finished(
        StreamState.ACTIVE, size=None, completed_at=None, relative_path="cam1/cam.mp4"
    )
    record, chunks = manifest.to_records(manifest.decode(data), behind, "etag-9")
    assert manifest.build(record, chunks, LAYOUT) == made


def test_metadata_json_carries_the_fields_the_docs_name():
    written = json.loads(manifest.encode(built()))
    assert list(written) == [
        *("schema_version", "stream_id", "status", "status_reason", "source", "total_size"),
        *("sha256", "crc64nvme", "crc64nvme_checked_by", "chunk_size", "chunk_count"),
        *("reuploaded_chunks", "chunks", "assembled", "chunks_deleted_at", "first_seen_at"),
        *("first_upload_at", "last_upload_at", "completed_at", "duration", "mp4"),
    ]
    assert (written["schema_version"], written["status"], written["chunk_count"]) == (
        3,
        "complete",
        3,
    )
    assert written["source"] == {
        "path": "/in/cam.mp4",
        "name": "cam.mp4",
        "relative_path": "cam1/cam.mp4",
        "inode": 7,
        "modified_at": "2026-12-06T00:00:29Z",
        "deleted_at": None,
    }
    first, second, third = written["chunks"]
    # Only the digests a chunk has: the one S3 checked it by, and its crc64nvme.
    assert set(first) - set(second) == {"sha256"} and "crc64nvme" not in first
    assert (second["crc32c"], second["crc64nvme"]) == ("e3069283", f"{1:016x}")
    assert third["key"] == "rec/host/cam-1/chunks/000002.r1"
    assert (third["revision"], third["reupload_reason"]) == (1, "why")
    assert first["uploaded_at"] == "2026-12-06T00:00:00Z" and first["offset"] == 0
    assert written["mp4"]["tracks"][0]["codec"] == "avc1"


def test_who_took_the_stream_s_crc64nvme_is_said_beside_it():
    def assembled(crc: str | None) -> Assembled:
        return Assembled(key="k", size=300, etag="e", method="compose", crc64nvme=crc)

    assert built().crc64nvme_checked_by is None, "no crc64nvme: nobody took it"
    assert built(crc64nvme=CRC).crc64nvme_checked_by == manifest.COMBINED_BY_STREAMER
    by_s3 = built(crc64nvme=CRC, assembled=assembled(CRC))
    assert by_s3.crc64nvme_checked_by == manifest.CHECKED_BY_S3 == "s3"
    other = built(crc64nvme=CRC, assembled=assembled("f" * 16))
    assert other.crc64nvme_checked_by == manifest.COMBINED_BY_STREAMER == "streamer"
    assert built(crc64nvme=CRC, assembled=assembled(None)).crc64nvme_checked_by == "streamer"


def test_its_durations_are_the_span_watched_and_the_recording_s_own():
    assert built().duration == manifest.Duration(wall_seconds=29.0, media_seconds=28.5)
    early = int((NOW - timedelta(seconds=5)).timestamp() * 1e9)  # a clock set back
    assert built(mtime_ns=early).duration.wall_seconds == 0.0
    gone = built(mtime_ns=None, mp4=None)  # the file went away before it finished
    assert gone.source.modified_at is None
    assert gone.duration == manifest.Duration(wall_seconds=None, media_seconds=None)


def test_a_stream_s_whole_and_each_chunk_s_digest_are_read_from_what_it_carries():
    made = built(crc64nvme=CRC)
    assert made.whole == Digest(SHA256, "ab" * 32), "the file's sha256 first"
    assert built(sha256=None, crc64nvme=CRC).whole == Digest(CRC64NVME, CRC)
    assert built(sha256=None).whole is None
    assert [c.digest.algorithm for c in made.chunks] == [SHA256, CRC32C, CRC64NVME]


def test_a_record_of_an_older_schema_is_read_with_what_it_lacks_left_empty():
    older = json.loads(manifest.encode(built()))
    older["schema_version"] = 2
    for field in ("crc64nvme", "crc64nvme_checked_by", "chunks_deleted_at"):
        del older[field]
    del older["source"]["relative_path"], older["source"]["deleted_at"]
    read = manifest.decode(json.dumps(older).encode())
    assert read.schema_version == 2 and read.crc64nvme is None
    assert read.source.relative_path is None and read.chunks_deleted_at is None
    assert read.whole == Digest(SHA256, "ab" * 32)


@pytest.mark.parametrize(
    "change",
    [
        lambda doc: "not json at all",
        lambda doc: {k: v for k, v in doc.items() if k != "stream_id"},
        lambda doc: {**doc, "total_size": "300"},
        lambda doc: {**doc, "completed_at": "2026-12-06T00:00:30"},  # no time zone
        lambda doc: {**doc, "chunks": [{"index": 0}]},
    ],
    ids=["garbage", "field-missing", "wrong-type", "naive-time", "chunk-incomplete"],
)
def test_a_record_that_cannot_be_read_raises_a_decode_error(change):
    doc = json.loads(manifest.encode(built()))
    with pytest.raises(msgspec.DecodeError):
        manifest.decode(json.dumps(change(doc)).encode())


def test_a_store_brought_up_to_a_record_holds_its_chunks_in_order_and_its_mtime():
    made = built(crc64nvme=CRC)
    shuffled = msgspec.structs.replace(made, chunks=made.chunks[::-1])
    behind = finished(StreamState.ACTIVE, size=None, sha256=None, completed_at=None)
    record, chunks = manifest.to_records(shuffled, behind, "etag-1")
    assert [c.index for c in chunks] == [0, 1, 2]
    assert (record.committed_bytes, record.chunk_count, record.crc64nvme) == (300, 3, CRC)
    assert record.mtime_ns == behind.mtime_ns, "the same microsecond: the store's nanoseconds"
    later = finished(mtime_ns=behind.mtime_ns + 10**9)
    moved, _ = manifest.to_records(manifest.build(later, chunks, LAYOUT), behind, "etag-2")
    assert abs(moved.mtime_ns - later.mtime_ns) < 1000, "another instant: S3's"
    gone, _ = manifest.to_records(built(mtime_ns=None), behind, "etag-3")
    assert gone.mtime_ns is None and gone.state is StreamState.COMPLETE


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
