"""What an uploader's threads hand back to its main thread, as values: a chunk in S3
(`Sent`), a file compared with its chunks (`Survey`), parts copied (`Copied`), a stream
reconciled and assembled (`Finished`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from streamer import mp4
from streamer.digests import CRC64NVME, Digest
from streamer.messages import Finish
from streamer.policy import UploadChunk
from streamer.records import Assembled, AssemblyUpload, ChunkRecord


@dataclass(frozen=True)
class Sent:
    """A sender thread's report: S3 holds this chunk's bytes."""

    chunk: UploadChunk
    revision: int
    digest: Digest  # what S3 checked it by
    crc64nvme: str  # taken on the same pass, whatever it was sent with
    etag: str
    head: bytes | None  # the file's first bytes, with chunk 0
    seconds: float | None  # None: found in S3 already, not sent again
    read_at_ns: int | None  # when its bytes were read, and the file's mtime just before
    read_mtime_ns: int | None  # (None: read at completion, settled by then)

    def record(self, reason: str | None = None) -> ChunkRecord:
        """What the checkpoint keeps of it; `reason`: why this revision was uploaded."""
        return ChunkRecord(
            index=self.chunk.index,
            offset=self.chunk.offset,
            size=self.chunk.size,
            **{CRC64NVME: self.crc64nvme, self.digest.algorithm: self.digest.value},
            etag=self.etag,
            uploaded_at=datetime.now(UTC),
            revision=self.revision,
            reason=reason,
            read_at_ns=self.read_at_ns,
            read_mtime_ns=self.read_mtime_ns,
        )


@dataclass(frozen=True)
class Survey:
    """The file's bytes at one size and mtime, against its uploaded chunks: its sha256,
    the chunks that no longer hold its bytes (index, why), and the first chunk past its
    end, if it shrank. A survey made ahead of completion leaves the sha256 to the sender
    threads (None), when they hold what the file holds: they hash its tail as they send
    it, and hashing it here too would be a third pass over it."""

    size: int
    mtime_ns: int
    sha256: str | None
    stale: list[tuple[int, str]]
    drop_from: int | None
    checked: int  # the chunks compared: those below this index

    def holds(self, finish: Finish) -> bool:
        return (self.size, self.mtime_ns) == (finish.size, finish.mtime_ns)


@dataclass(frozen=True)
class Copied:
    """The copier thread's report: these chunks are parts of the upload now; `error`
    stopped it before the rest. `unchecked`: why the upload is another than the stream's,
    begun without asking S3 to check the whole's crc64nvme."""

    upload: AssemblyUpload
    parts: list[tuple[ChunkRecord, str]]  # (chunk, part ETag)
    error: Exception | None
    unchecked: str | None = None


@dataclass(frozen=True)
class Finished:
    """A finisher thread's report: the stream's bytes are reconciled, and assembled, in S3."""

    finish: Finish
    sha256: str
    revised: list[tuple[ChunkRecord, bytes | None]]  # uploaded again; the head with chunk 0
    drop_from: int | None  # the first chunk past the file's end, if it shrank
    facts: mp4.Mp4Facts
    assembled: Assembled | None
