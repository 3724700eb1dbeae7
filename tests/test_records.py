"""What the checkpoint store records, read without the store: which states are finished,
which digest a chunk is checked by and which is quickest to take again, the crc64nvme of
chunks together, a stream's name, path, whole digest and position, whether S3 checked its
assembled object, and the records through their encoding. A chunk's part in an assembly
upload is tests/test_checkpoint.py's."""

from __future__ import annotations

import os

import msgspec
import pytest
from awscrt.checksums import crc64nvme
from sample_records import NOW, chunk, finished

from streamer.digests import CRC32C, CRC64NVME, SHA256, Digest
from streamer.records import (
    Assembled,
    ChunkRecord,
    Position,
    StreamRecord,
    StreamState,
    whole_crc64nvme,
)


def crc_of(data: bytes) -> str:
    return f"{crc64nvme(data):016x}"


def plain(index: int = 0, **digests) -> ChunkRecord:
    """A chunk with the digests given, and no other."""
    return ChunkRecord(index=index, offset=0, size=10, etag="e", uploaded_at=NOW, **digests)


def assembled(crc: str | None) -> Assembled:
    return Assembled(key="k", size=300, etag="e-3", method="compose", crc64nvme=crc)


def test_every_state_but_active_is_finished():
    assert not StreamState.ACTIVE.finished
    for state in (StreamState.COMPLETE, StreamState.PARTIAL, StreamState.INVALID):
        assert state.finished, state
    assert StreamState.CANCELLED.finished


def test_a_chunk_is_checked_by_what_s3_checked_and_taken_again_by_its_crc64nvme():
    signed = plain(sha256="ab" * 32, crc64nvme="1" * 16)
    assert signed.digest == Digest(SHA256, "ab" * 32)
    assert signed.quick_digest == Digest(CRC64NVME, "1" * 16)
    crc32 = plain(crc32c="e3069283", crc64nvme="2" * 16)
    assert crc32.digest == Digest(CRC32C, "e3069283")
    assert crc32.quick_digest == Digest(CRC64NVME, "2" * 16)
    older = plain(sha256="cd" * 32)  # from before crc64nvme: its one digest
    assert older.quick_digest == older.digest == Digest(SHA256, "cd" * 32)
    assert plain().digest is None and plain().quick_digest is None


def test_the_crc64nvme_of_chunks_together_is_the_one_of_their_bytes_in_order():
    pieces = [os.urandom(n) for n in (100, 7, 4096)]
    chunks = [
        ChunkRecord(index=i, offset=0, size=len(p), etag="e", uploaded_at=NOW, crc64nvme=crc_of(p))
        for i, p in enumerate(pieces)
    ]
    assert whole_crc64nvme(chunks) == crc_of(b"".join(pieces))
    assert whole_crc64nvme(chunks[::-1]) != crc_of(b"".join(pieces))
    assert whole_crc64nvme([*chunks, plain(sha256="ab" * 32)]) is None, "one without: none"
    assert whole_crc64nvme([]) == crc_of(b"")


def test_a_stream_is_named_by_its_file_and_placed_by_its_path_below_the_watch_directory():
    record = finished(path="/watch/cam1/2026-12-06/late.mp4")
    assert record.name == "late.mp4" and record.relative == "late.mp4", "an older record"
    below = msgspec.structs.replace(record, relative_path="cam1/2026-12-06/late.mp4")
    assert below.relative == "cam1/2026-12-06/late.mp4" and below.name == "late.mp4"


def test_a_stream_s_whole_is_its_sha256_else_the_crc64nvme_of_its_chunks():
    assert finished(crc64nvme="1" * 16).whole == Digest(SHA256, "ab" * 32)
    assert finished(sha256=None, crc64nvme="1" * 16).whole == Digest(CRC64NVME, "1" * 16)
    assert finished(sha256=None).whole is None


def test_s3_checked_the_assembled_object_only_where_it_keeps_the_stream_s_crc64nvme():
    crc = "1" * 16
    assert finished(crc64nvme=crc, assembled=assembled(crc)).checked_by_s3
    assert not finished(crc64nvme=crc, assembled=assembled("2" * 16)).checked_by_s3
    assert not finished(crc64nvme=crc, assembled=assembled(None)).checked_by_s3
    assert not finished(crc64nvme=crc).checked_by_s3, "no assembled object"
    assert not finished(crc64nvme=None, assembled=assembled(None)).checked_by_s3


def test_a_stream_s_position_is_its_next_chunk_and_the_byte_it_starts_at():
    # Its committed bytes, not its chunks times the chunk size (the last may be short).
    record = finished(stream_id="cam2/late-20261206T221500Z", chunk_count=12, committed_bytes=1134)
    assert record.position == Position("cam2/late-20261206T221500Z", 12, 1134)
    assert str(record.position) == "cam2/late-20261206T221500Z#000012@1134"
    assert str(Position("s", 1234567, 0)) == "s#1234567@0"


def test_records_come_back_through_their_encoding_and_a_time_without_a_zone_is_refused():
    record = finished(crc64nvme="1" * 16, assembled=assembled("1" * 16), head=b"\x00ftyp")
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=StreamRecord)
    assert again == record and again.position == record.position
    written = chunk(3, revision=2)
    assert msgspec.json.decode(msgspec.json.encode(written), type=ChunkRecord) == written
    naive = msgspec.json.encode(written).replace(b"Z", b"")
    with pytest.raises(msgspec.ValidationError, match="timezone"):
        msgspec.json.decode(naive, type=ChunkRecord)
