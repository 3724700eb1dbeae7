"""What the checkpoint store records: streams, their chunks, and where each stands. Plain
msgspec values with no I/O, shared by the store, the policies and both processes."""

from __future__ import annotations

import enum
import os
from datetime import datetime
from typing import Annotated

from msgspec import Meta, Struct

from streamer import digests
from streamer.digests import CRC64NVME, Digest, combine, recorded
from streamer.mp4 import Mp4Facts

UTC = Annotated[datetime, Meta(tz=True)]


class StreamState(enum.Enum):
    ACTIVE = "active"
    COMPLETE = "complete"  # ended, every byte in S3, and a playable MP4
    PARTIAL = "partial"  # ended, but not a finished MP4, or its file went away first
    INVALID = "invalid"  # ended, but not an MP4 at all: uploaded anyway
    CANCELLED = "cancelled"  # stopped by an operator; not picked up again unless retried

    @property
    def finished(self) -> bool:
        return self is not StreamState.ACTIVE


class ChunkRecord(Struct, frozen=True, kw_only=True):
    index: int
    offset: int
    size: int
    etag: str
    uploaded_at: UTC
    # What identifies its bytes (streamer.digests says which is used when): the digest S3
    # checked it by, a signed sha256 or a CRC, and its crc64nvme, whatever it went with
    # (None in a record from before crc64nvme: the whole's cannot be combined then).
    sha256: str | None = None
    crc32c: str | None = None
    crc64nvme: str | None = None
    # Chunk objects are never overwritten: bytes the recorder rewrote go to a new revision's key.
    revision: int = 0
    reason: str | None = None  # why this revision was uploaded, if it is not the first
    # When the bytes were read (wall clock), and the file's mtime just before: completion
    # need not read them again if the file has not been written since (policy.settled).
    read_at_ns: int | None = None
    read_mtime_ns: int | None = None
    # This revision's bytes copied as a part into the stream's assembly upload (the part's
    # ETag, and which upload): a part of an upload since lost or replaced does not count.
    part_etag: str | None = None
    part_upload: str | None = None
    # Earlier revisions of this chunk this store wrote, (revision, ETag): superseded once
    # the stream's metadata.json lists this one, then deleted exactly so.
    superseded: tuple[tuple[int, str], ...] = ()

    @property
    def digest(self) -> Digest | None:
        return recorded(self.sha256, self.crc32c, self.crc64nvme)

    @property
    def quick_digest(self) -> Digest | None:
        """The cheapest of its digests to take again: its crc64nvme, where it has one."""
        return Digest(CRC64NVME, self.crc64nvme) if self.crc64nvme else self.digest

    def part_in(self, upload_id: str | None) -> str | None:
        """The ETag of this chunk's part in the upload, if it was copied there."""
        return self.part_etag if upload_id is not None and self.part_upload == upload_id else None


def whole_crc64nvme(chunks: list[ChunkRecord]) -> str | None:
    """The crc64nvme of the chunks' bytes one after another, combined from theirs without
    the bytes; None if one of them has none."""
    return combine((c.crc64nvme, c.size) for c in chunks)


class Assembled(Struct, frozen=True, kw_only=True):
    """The whole recording as one object, made from the chunks after completion."""

    key: str
    size: int
    etag: str
    method: str  # "compose" (server-side copy of the chunks) or "upload" (streamed from disk)
    # The crc64nvme S3 checked the object's bytes against as it joined the parts (their
    # crc64nvme, taken as it copied them), and keeps; None where it checked none.
    crc64nvme: str | None = None


class AssemblyUpload(Struct, frozen=True, kw_only=True):
    """The assembled object's multipart upload, begun while the stream is live: each
    committed chunk is copied into it as a part in the background, so that completion
    copies only the chunks the recorder rewrote, and the tail."""

    key: str
    upload_id: str
    content_type: str
    checked: bool = False  # begun asking S3 to check the whole's crc64nvme (ChunkStore)


class StreamRecord(Struct, kw_only=True):
    stream_id: str
    path: str
    inode: int
    device: int
    chunk_size: int
    first_seen_at: UTC
    # Its path below the watch directory (`cam1/late.mp4`); None in a record from before
    # folders were watched, whose file was at the top: its name.
    relative_path: str | None = None
    state: StreamState = StreamState.ACTIVE
    committed_bytes: int = 0
    chunk_count: int = 0
    reuploaded_chunks: int = 0
    # Revisions below this were used by chunks since dropped (the file shrank): never reuse.
    min_revision: int = 0
    head: bytes | None = None  # the file's first bytes as uploaded: another recording differs
    cancel_requested: bool = False  # set by `streamer streams cancel`, acted on by the daemon
    first_upload_at: UTC | None = None
    last_upload_at: UTC | None = None
    total_size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None  # of the whole file, with integrity.file_sha256
    # Of its chunks' bytes one after another, combined from theirs when it finished (None
    # if a chunk has none: uploaded before crc64nvme).
    crc64nvme: str | None = None
    completed_at: UTC | None = None
    status_reason: str | None = None
    mp4: Mp4Facts | None = None
    assembled: Assembled | None = None
    assembly: AssemblyUpload | None = None  # open while the stream is live
    # When retention deleted the local file, proven in S3, and why (see streamer.retention).
    source_deleted_at: UTC | None = None
    # When its chunk objects were deleted, the assembled object proven to hold every byte
    # (stream.keep_chunks off); None: they are in S3.
    chunks_deleted_at: UTC | None = None
    chunks_kept_because: str | None = None  # why they may not go (not asked again)
    deleted_because: str | None = None
    # The ETag of the metadata.json this store last wrote or saw in S3: the next write
    # of it goes only over that one (None: over none).
    manifest_etag: str | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def relative(self) -> str:
        """Its path below the watch directory."""
        return self.relative_path or self.name

    @property
    def whole(self) -> Digest | None:
        return digests.whole(self.sha256, self.crc64nvme)

    @property
    def checked_by_s3(self) -> bool:
        """Did S3 check the assembled object's bytes against the stream's crc64nvme as it
        joined the parts (and keep that checksum)?"""
        assembled = self.assembled
        return self.crc64nvme is not None and (
            assembled is not None and assembled.crc64nvme == self.crc64nvme
        )

    @property
    def position(self) -> Position:
        return Position(self.stream_id, self.chunk_count, self.committed_bytes)


class Position(Struct, frozen=True):
    """Where a stream's upload stands: the next chunk index and the byte offset it starts at."""

    stream_id: str
    index: int
    offset: int

    def __str__(self) -> str:
        return f"{self.stream_id}#{self.index:06d}@{self.offset}"
