"""What an uploader's threads hand back to its main thread, as values: a chunk in S3
(`Sent`), a file compared with its chunks (`Survey`), parts copied (`Copied`), a stream
reconciled and assembled (`Finished`); and the sha256 of what was sent, which sender
threads feed in order as they digest their chunks (`PrefixHash`)."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from streamer import mp4
from streamer.digests import CRC64NVME, Digest
from streamer.messages import Finish
from streamer.policy import UploadChunk
from streamer.records import Assembled, AssemblyUpload, ChunkRecord

# A chunk's first pass waits at most this long for the one before it to be digested (a
# pass that takes a moment; this only bounds the wait if that chunk never comes).
TURN_WAIT_S = 30.0


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


class PrefixHash:
    """sha256 of a file's first `size` bytes, fed by the sender threads in chunk order, on
    their first pass over a chunk (the one that digests it): a thread waits its turn, until
    the chunks before its own are fed, so the first passes of one stream run one after
    another while its sends overlap. It keeps the crc64nvme each chunk was fed with, and
    holds for a list of chunks only if those are the ones they were committed with. A
    chunk read again with other bytes (sent again after its file was rewritten), a chunk
    that does not start where the bytes fed end, or a turn not finished, breaks it:
    completion then hashes the file itself."""

    def __init__(self, wait_s: float = TURN_WAIT_S):
        self._turns = threading.Condition()
        self._sha256 = hashlib.sha256()
        self._fed: dict[int, str] = {}  # crc64nvme, by offset
        self._wait_s = wait_s
        self._feeding = False  # a turn is taken: the sha256 is part way through a chunk
        self.next_index = 0
        self.size = 0
        self.broken = False

    def take_turn(self, index: int, offset: int):
        """Once chunks 0 to index-1 are fed, the sha256 to feed chunk `index` (at `offset`)
        to, then `fed`, or `give_up`; None if that chunk was fed before (`seen` checks it
        again) or the hash is broken."""
        with self._turns:
            ready = self._turns.wait_for(
                lambda: self.broken or self.next_index >= index, self._wait_s
            )
            if self.broken or self.next_index > index:
                return None
            if not ready or offset != self.size:
                self._break()  # a chunk before it never came, or did not end where it starts
                return None
            self._feeding = True
            return self._sha256

    def fed(self, index: int, size: int, crc64nvme: str) -> None:
        with self._turns:
            self._fed[self.size] = crc64nvme
            self.size += size
            self.next_index = index + 1
            self._feeding = False
            self._turns.notify_all()

    def give_up(self) -> None:
        """A turn taken was not finished (what was fed is not known), or the process stops
        (no thread is to wait for a chunk that will not come)."""
        with self._turns:
            self._break()

    def seen(self, offset: int, crc64nvme: str) -> None:
        """A chunk fed before was read again: with other bytes, the hash no longer holds."""
        with self._turns:
            if self._fed.get(offset) != crc64nvme:
                self._break()

    def _break(self) -> None:
        self.broken = True
        self._feeding = False
        self._turns.notify_all()

    def state(self, chunks: list[ChunkRecord]):
        """A copy of the sha256 of these chunks' bytes, the file's first ones, if it holds
        exactly those; else None."""
        with self._turns:
            held = not (self.broken or self._feeding) and self.size == sum(c.size for c in chunks)
            if held and all(self._fed.get(c.offset) == c.crc64nvme for c in chunks):
                return self._sha256.copy()
            return None


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
