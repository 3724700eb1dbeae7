"""metadata.json: what a finished stream is, written next to its chunks."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from msgspec import Struct

from streamer import digests
from streamer.digests import Digest, recorded
from streamer.layout import Layout
from streamer.mp4 import Mp4Facts
from streamer.records import UTC as UTCTime
from streamer.records import Assembled, ChunkRecord, StreamRecord, StreamState

# 3: each chunk carries its crc64nvme, and the stream the crc64nvme of its chunks together
# (2: a chunk carries the digest S3 checked it by, sha256 or crc32c; 1: always sha256).
SCHEMA_VERSION = 3
# Who took the whole stream's crc64nvme: streamer, combining its chunks' (each checked by
# S3 as it arrived), or S3, checking the assembled object's bytes against it.
COMBINED_BY_STREAMER = "streamer"
CHECKED_BY_S3 = "s3"


class ManifestChunk(Struct, kw_only=True, omit_defaults=True):
    index: int
    key: str
    offset: int
    size: int
    # What identifies its bytes (streamer.digests): the digest S3 checked them by, a signed
    # sha256 or a CRC, and their crc64nvme (from schema 3), whatever they went with.
    sha256: str | None = None
    crc32c: str | None = None
    crc64nvme: str | None = None
    etag: str
    uploaded_at: UTCTime
    revision: int
    reupload_reason: str | None

    @property
    def digest(self) -> Digest | None:
        return recorded(self.sha256, self.crc32c, self.crc64nvme)


class Source(Struct, kw_only=True):
    path: str
    name: str
    # Below the watch directory (`cam1/2026-12-06/late.mp4`); None in a metadata.json
    # written before folders were watched.
    relative_path: str | None = None
    inode: int
    modified_at: UTCTime | None  # None when the file went away before it finished
    # When streamer deleted the file, once it was proven in S3 (retention); else None.
    deleted_at: UTCTime | None = None


class Duration(Struct, kw_only=True):
    # The span streamer watched the file being written: first seen to last modification.
    wall_seconds: float | None
    # The recording's own duration, from its MP4 boxes.
    media_seconds: float | None


class Manifest(Struct, kw_only=True):
    schema_version: int = SCHEMA_VERSION
    stream_id: str
    status: str
    status_reason: str | None
    source: Source
    total_size: int
    # Of the whole file, with integrity.file_sha256; None when off, or when the file went
    # away before it finished.
    sha256: str | None
    # Of the chunks' bytes one after another (the whole recording, or what was uploaded of
    # one that went away), and who took it; None where a chunk has none (schema 2).
    crc64nvme: str | None = None
    crc64nvme_checked_by: str | None = None
    chunk_size: int
    chunk_count: int
    reuploaded_chunks: int
    chunks: list[ManifestChunk]
    assembled: Assembled | None
    # The chunks were deleted then, the assembled object proven (stream.keep_chunks off):
    # `chunks` says what was uploaded; the recording is the assembled object.
    chunks_deleted_at: UTCTime | None = None
    first_seen_at: UTCTime
    first_upload_at: UTCTime | None
    last_upload_at: UTCTime | None
    completed_at: UTCTime
    duration: Duration
    mp4: Mp4Facts | None

    @property
    def whole(self) -> Digest | None:
        return digests.whole(self.sha256, self.crc64nvme)


def build(record: StreamRecord, chunks: list[ChunkRecord], layout: Layout) -> Manifest:
    assert record.completed_at is not None and record.total_size is not None
    modified_at = (
        datetime.fromtimestamp(record.mtime_ns / 1e9, UTC) if record.mtime_ns is not None else None
    )
    wall = (modified_at - record.first_seen_at).total_seconds() if modified_at else None
    return Manifest(
        stream_id=record.stream_id,
        status=record.state.value,
        status_reason=record.status_reason,
        source=Source(
            path=record.path,
            name=record.name,
            relative_path=record.relative,
            inode=record.inode,
            modified_at=modified_at,
            deleted_at=record.source_deleted_at,
        ),
        total_size=record.total_size,
        sha256=record.sha256,
        crc64nvme=record.crc64nvme,
        crc64nvme_checked_by=checked_by(record),
        chunk_size=record.chunk_size,
        chunk_count=len(chunks),
        reuploaded_chunks=record.reuploaded_chunks,
        chunks=[
            ManifestChunk(
                index=c.index,
                key=layout.chunk_key(record.stream_id, c.index, c.revision),
                offset=c.offset,
                size=c.size,
                sha256=c.sha256,
                crc32c=c.crc32c,
                crc64nvme=c.crc64nvme,
                etag=c.etag,
                uploaded_at=c.uploaded_at,
                revision=c.revision,
                reupload_reason=c.reason,
            )
            for c in chunks
        ],
        assembled=record.assembled,
        chunks_deleted_at=record.chunks_deleted_at,
        first_seen_at=record.first_seen_at,
        first_upload_at=record.first_upload_at,
        last_upload_at=record.last_upload_at,
        completed_at=record.completed_at,
        duration=Duration(
            wall_seconds=max(0.0, wall) if wall is not None else None,
            media_seconds=record.mp4.duration_seconds if record.mp4 else None,
        ),
        mp4=record.mp4,
    )


def checked_by(record: StreamRecord) -> str | None:
    """Who took the stream's crc64nvme (None: nobody could)."""
    if record.crc64nvme is None:
        return None
    return CHECKED_BY_S3 if record.checked_by_s3 else COMBINED_BY_STREAMER


def to_records(
    manifest: Manifest, record: StreamRecord, etag: str
) -> tuple[StreamRecord, list[ChunkRecord]]:
    """The stream as its metadata.json (with ETag `etag`) says it is, over `record`: what
    a store that is behind S3 is brought up to."""
    by_index = {c.index: c for c in record_chunks(manifest)}
    chunks = [by_index[i] for i in sorted(by_index)]
    modified = manifest.source.modified_at
    mtime_ns = round(modified.timestamp() * 1e9) if modified is not None else None
    brought = msgspec.structs.replace(
        record,
        state=StreamState(manifest.status),
        status_reason=manifest.status_reason,
        total_size=manifest.total_size,
        sha256=manifest.sha256,
        crc64nvme=manifest.crc64nvme,
        committed_bytes=sum(c.size for c in chunks),
        chunk_count=len(chunks),
        reuploaded_chunks=manifest.reuploaded_chunks,
        first_upload_at=manifest.first_upload_at,
        last_upload_at=manifest.last_upload_at,
        completed_at=manifest.completed_at,
        mtime_ns=record.mtime_ns if _same_instant(record.mtime_ns, mtime_ns) else mtime_ns,
        mp4=manifest.mp4,
        assembled=manifest.assembled,
        assembly=None,
        source_deleted_at=manifest.source.deleted_at,
        chunks_deleted_at=manifest.chunks_deleted_at,
        manifest_etag=etag,
    )
    return brought, chunks


def record_chunks(manifest: Manifest) -> list[ChunkRecord]:
    return [
        ChunkRecord(
            index=c.index,
            offset=c.offset,
            size=c.size,
            etag=c.etag,
            uploaded_at=c.uploaded_at,
            sha256=c.sha256,
            crc32c=c.crc32c,
            crc64nvme=c.crc64nvme,
            revision=c.revision,
            reason=c.reupload_reason,
        )
        for c in manifest.chunks
    ]


def _same_instant(ns: int | None, other: int | None) -> bool:
    """metadata.json keeps a time to the microsecond; the checkpoint, to the nanosecond."""
    return ns is not None and other is not None and abs(ns - other) < 1000


def encode(manifest: Manifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


def decode(data: bytes) -> Manifest:
    return msgspec.json.decode(data, type=Manifest)
