"""The whole file's sha256 (integrity.file_sha256), whichever way it is taken: fed by the
sender threads in chunk order as they digest their chunks (`PrefixHash`, `feed_in_turn`),
taken on from there by a survey that reads only the tail, or read whole by a survey when
what was sent is no longer the file (`Taking`)."""

from __future__ import annotations

import hashlib
import threading

from streamer import bodies
from streamer.bodies import Head
from streamer.buffers import BufferPool
from streamer.config import Config
from streamer.digests import CRC64NVME, SHA256, Digest
from streamer.fileio import Span
from streamer.records import ChunkRecord, StreamRecord

# A chunk's first pass waits at most this long for the one before it to be digested (a
# pass that takes a moment; this only bounds the wait if that chunk never comes).
TURN_WAIT_S = 30.0


def wanted(config: Config, chunks: list[ChunkRecord]) -> bool:
    """Is the whole file's sha256 taken? With integrity.file_sha256, and for a stream with
    chunks from before crc64nvme, whose whole cannot be combined from its chunks'."""
    return config.integrity.file_sha256 or any(c.crc64nvme is None for c in chunks)


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


def feed_in_turn(
    span: Span,
    index: int,
    sent_hash: PrefixHash | None,
    algorithms: tuple[str, ...],
    head: Head | None = None,
) -> dict[str, Digest]:
    """A pass over a chunk for its digests by `algorithms` (and its file's `head`, with
    chunk 0), feeding the file's sha256 when its turn comes."""
    also = (head,) if head else ()
    whole = sent_hash.take_turn(index, span.offset) if sent_hash else None
    if whole is None:
        sums = bodies.digests_of(algorithms, span, *also)
        if sent_hash:
            sent_hash.seen(span.offset, sums[CRC64NVME].value)
        return sums
    try:
        sums = bodies.digests_of(algorithms, span, whole, *also)
    except BaseException:
        sent_hash.give_up()
        raise
    sent_hash.fed(index, span.size, sums[CRC64NVME].value)
    return sums


def sent_whole(sent: PrefixHash | None, chunks: list[ChunkRecord], size: int) -> str | None:
    """The file's sha256 as the sender threads took it, if they fed it exactly these
    chunks' bytes, in order, and those are the file's `size` bytes; else None."""
    covers = sum(c.size for c in chunks) == size
    whole = sent.state(chunks) if sent and covers else None
    return whole.hexdigest() if whole else None


class Taking:
    """The file's sha256 as a survey of `size` bytes takes it (if `wanted`): on from what
    the sender threads hashed, if that holds the chunks (only the tail is read); else fed
    every chunk's bytes on the survey's own pass (`feeds`)."""

    def __init__(self, sent: PrefixHash | None, chunks: list[ChunkRecord], size: int, wanted: bool):
        self.size = size
        self.wanted = wanted
        self.covered = sum(c.size for c in chunks)
        self.prefix = sent.state(chunks) if sent and self.covered <= size else None
        own = None if self.prefix or not wanted else hashlib.sha256()
        self.own = own
        self.feeds = () if own is None else (own,)

    def result(self, record: StreamRecord, buffers: BufferPool, stale: bool, ahead: bool):
        """The file's sha256 once the survey's pass is done: None if not wanted, or left to
        the sender threads (`ahead`: the tail is still to be sent). Chunks found `stale`
        mean what was sent is no longer the file: it is read whole."""
        if not self.wanted:
            return None
        if self.own is None and stale:
            return bodies.digest(SHA256, Span(record, 0, self.size, buffers)).value
        if self.own is None and ahead:
            return None
        whole = self.prefix if self.own is None else self.own
        if self.covered < self.size:  # the tail, not uploaded yet
            bodies.feed(Span(record, self.covered, self.size - self.covered, buffers), whole)
        return whole.hexdigest()
