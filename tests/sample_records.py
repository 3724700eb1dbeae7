"""Checkpoint records made by hand for the tests that need no uploader: a stream just seen
(`stream`) or finished unless told otherwise (`finished`), its chunks of 100 bytes
(`chunk`, `chunks`), at a fixed time (`NOW`); and chunks as a sender thread hands them
back (`chunk_record`), their bytes `fed` into the whole file's sha256 in turn."""

from datetime import UTC, datetime, timedelta

import msgspec

from streamer.digests import CRC64NVME, of
from streamer.layout import Layout
from streamer.records import ChunkRecord, StreamRecord, StreamState
from streamer.uploader.file_sha256 import PrefixHash

NOW = datetime(2026, 12, 6, tzinfo=UTC)
LAYOUT = Layout("rec", "host")


def stream(stream_id: str = "cam-1", path: str = "/in/cam.mp4") -> StreamRecord:
    return StreamRecord(
        stream_id=stream_id, path=path, inode=7, device=1, chunk_size=100, first_seen_at=NOW
    )


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


def chunks(count: int) -> list:
    return [chunk(i) for i in range(count)]


def chunk_record(offset: int, size: int, crc64nvme: str = "", **read) -> ChunkRecord:
    return ChunkRecord(
        index=offset // 200,
        offset=offset,
        size=size,
        crc64nvme=crc64nvme,
        etag="",
        uploaded_at=datetime.now(UTC),
        **read,
    )


def fed(prefix: PrefixHash, index: int, offset: int, part: bytes) -> str:
    """Feed chunk `index` as a sender thread does, in its turn; return its crc64nvme."""
    whole = prefix.take_turn(index, offset)
    whole.update(part)
    crc = of(CRC64NVME, part).value
    prefix.fed(index, len(part), crc)
    return crc
