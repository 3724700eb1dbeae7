"""A stream's chunks and its assembled object checked against S3, on the directory-backed
store (tests/dirstore.py): at each depth (the listing, the digest stored with each chunk,
its bytes read back), a chunk missing, another object at its key, bytes changed under the
same ETag, a gap, a short stream, chunks that together are not the stream; an assembled
object missing, another one, one whose crc64nvme in S3 is not the stream's, or whose
bytes are not."""

from __future__ import annotations

import os

import msgspec
import pytest
from dirstore import DirectoryStore
from sample_records import NOW, finished

from streamer import digests
from streamer.audit import assembled_problem, chunk_problems
from streamer.bodies import InMemory
from streamer.digests import CRC64NVME, SHA256
from streamer.layout import CHUNK_TAGS
from streamer.records import Assembled, ChunkRecord, StreamRecord

SIZE = 10
DATA = os.urandom(3 * SIZE)


@pytest.fixture
def s3(tmp_path):
    made = DirectoryStore(tmp_path / "s3", prefix="rec", instance="host")
    made.ensure_bucket(create=True)
    return made


def uploaded(s3: DirectoryStore, data: bytes = DATA, stream_id: str = "cam-1") -> list:
    """The chunks of `data` put in S3 as the uploader puts them, and their records."""
    records = []
    for index, offset in enumerate(range(0, len(data), SIZE)):
        piece = data[offset : offset + SIZE]
        key = s3.layout.chunk_key(stream_id, index)
        etag, _, crc = s3.put_chunk(key, InMemory(piece), None, CHUNK_TAGS)
        records.append(
            ChunkRecord(
                index=index,
                offset=offset,
                size=len(piece),
                etag=etag,
                uploaded_at=NOW,
                crc64nvme=crc.value,
            )
        )
    return records


def overwritten_in_place(s3: DirectoryStore, key: str, data: bytes) -> None:
    """The object's bytes changed behind S3's back: its ETag and checksum as they were."""
    (s3.root / s3.bucket / key).write_bytes(data)


def test_chunks_that_are_the_stream_have_no_problem_at_any_depth(s3):
    chunks = uploaded(s3)
    whole = digests.of(SHA256, DATA)
    done = []
    for look in ("listing", "stored", "bytes"):
        assert chunk_problems("cam-1", chunks, len(DATA), s3, look, done.append, whole) == []
    assert done == [1] * 9, "told of each chunk, at each depth"
    assert chunk_problems("cam-1", chunks, None, s3) == [], "any size"


def test_a_chunk_missing_from_s3_is_told_by_its_key(s3):
    chunks = uploaded(s3)
    s3.remove(s3.layout.chunk_key("cam-1", 1))
    assert chunk_problems("cam-1", chunks, len(DATA), s3) == [
        "chunk 1 is missing from S3 (rec/host/cam-1/chunks/000001)"
    ]
    revised = msgspec.structs.replace(chunks[0], revision=1)  # recorded at .r1, not there
    problems = chunk_problems("cam-1", [revised], None, s3)
    assert problems == ["chunk 0 is missing from S3 (rec/host/cam-1/chunks/000000.r1)"]


def test_another_object_at_a_chunk_s_key_is_not_the_one_uploaded(s3):
    chunks = uploaded(s3)
    key = s3.layout.chunk_key("cam-1", 2)
    s3.remove(key)
    s3.put_chunk(key, InMemory(b"x" * SIZE), None, CHUNK_TAGS)  # same size, other ETag
    (problem,) = chunk_problems("cam-1", chunks, len(DATA), s3)
    assert problem.startswith("chunk 2 in S3 is not the one uploaded: 10 bytes, ETag ")
    assert f"(recorded: 10 bytes, ETag {chunks[2].etag})" in problem


def test_a_digest_stored_with_a_chunk_is_compared_only_when_asked(s3):
    chunks = uploaded(s3)
    other = msgspec.structs.replace(chunks[0], crc64nvme="0" * 16)  # recorded otherwise
    recorded = [other, *chunks[1:]]
    assert chunk_problems("cam-1", recorded, len(DATA), s3) == []
    assert chunk_problems("cam-1", recorded, len(DATA), s3, "stored") == [
        "chunk 0: the digest stored with it is not the recorded"
    ]


def test_bytes_changed_under_the_same_etag_are_found_only_by_reading_them(s3):
    chunks = uploaded(s3)
    overwritten_in_place(s3, s3.layout.chunk_key("cam-1", 1), b"y" * SIZE)
    assert chunk_problems("cam-1", chunks, len(DATA), s3, "stored") == []
    assert chunk_problems("cam-1", chunks, len(DATA), s3, "bytes") == [
        "chunk 1: the bytes in S3 differ from those recorded"
    ]


def test_chunks_that_leave_a_gap_or_fall_short_of_the_stream_are_told(s3):
    chunks = uploaded(s3)
    assert chunk_problems("cam-1", [chunks[0], chunks[2]], None, s3) == [
        "chunk 2 starts at 20, not 10"
    ]
    assert chunk_problems("cam-1", chunks[:2], len(DATA), s3) == ["the chunks hold 20 bytes of 30"]


def test_chunks_each_as_recorded_but_not_together_the_stream_s_whole_are_told(s3):
    chunks = uploaded(s3)
    other = digests.of(SHA256, DATA[::-1])
    (problem,) = chunk_problems("cam-1", chunks, len(DATA), s3, "bytes", whole=other)
    together = digests.of(SHA256, DATA)
    assert problem == f"the chunks together are not the stream: {together}"
    crc = digests.of(CRC64NVME, DATA)
    assert chunk_problems("cam-1", chunks, len(DATA), s3, "bytes", whole=crc) == []


def made(s3: DirectoryStore, data: bytes = DATA, **changes) -> StreamRecord:
    """A finished stream whose assembled object S3 checked and keeps the crc64nvme of."""
    key = s3.layout.assembled_key("cam-1", "cam.mp4")
    crc = digests.of(CRC64NVME, data)
    etag = s3.put(key, InMemory(data), crc, "video/mp4")
    assembled = Assembled(key=key, size=len(data), etag=etag, method="compose", crc64nvme=crc.value)
    record = finished(size=len(DATA), sha256=digests.of(SHA256, DATA).value, crc64nvme=crc.value)
    return msgspec.structs.replace(record, assembled=assembled, **changes)


def test_an_assembled_object_as_made_has_no_problem_and_one_missing_or_another_is_told(s3):
    record = made(s3)
    assert record.checked_by_s3
    for look in ("stat", "checksum", "bytes"):
        assert assembled_problem(record, s3, look) is None, look
    shorter = msgspec.structs.replace(record, total_size=len(DATA) + 1)
    assert "is not the one made: 30 bytes" in assembled_problem(shorter, s3)
    other = msgspec.structs.replace(record.assembled, etag="another")
    assert "ETag another" in assembled_problem(msgspec.structs.replace(record, assembled=other), s3)
    s3.remove(record.assembled.key)
    assert assembled_problem(record, s3) == (
        "the assembled object is missing from S3 (rec/host/cam-1/cam.mp4)"
    )


def test_an_assembled_object_whose_crc64nvme_in_s3_is_not_the_stream_s_is_told(s3):
    changed = DATA[:-1] + bytes([DATA[-1] ^ 1])  # S3 checked and keeps another crc64nvme
    record = made(s3, changed, sha256=None)
    record = msgspec.structs.replace(
        record,
        crc64nvme=digests.of(CRC64NVME, DATA).value,
        assembled=msgspec.structs.replace(
            record.assembled, crc64nvme=digests.of(CRC64NVME, DATA).value
        ),
    )
    assert assembled_problem(record, s3, "stat") is None
    assert assembled_problem(record, s3, "checksum") == (
        "the assembled object's crc64nvme in S3 is not the stream's (rec/host/cam-1/cam.mp4)"
    )
    assert "bytes are not the stream's" in assembled_problem(record, s3, "bytes")


def test_an_assembled_object_s_bytes_changed_under_its_etag_are_found_by_reading_them(s3):
    record = made(s3)
    overwritten_in_place(s3, record.assembled.key, DATA[::-1])
    assert assembled_problem(record, s3, "checksum") is None, "S3's checksum, as it was kept"
    assert assembled_problem(record, s3, "bytes") == (
        "the assembled object's bytes are not the stream's (rec/host/cam-1/cam.mp4)"
    )
    unchecked = msgspec.structs.replace(record, crc64nvme=None)  # S3 kept none: read back
    assert "bytes are not the stream's" in assembled_problem(unchecked, s3, "checksum")
    unknown = msgspec.structs.replace(record, sha256=None, crc64nvme=None)
    assert assembled_problem(unknown, s3, "bytes") is None, "nothing to compare them with"
