"""Sending chunks: a sender thread digests a chunk, then puts it in S3 (or finds it there,
after a crash), reading it from the file on each pass; it touches neither the checkpoint
nor the jobs, and reports what S3 holds as a `Sent`. The ledger commits it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from streamer import bodies
from streamer.bodies import Body, Checked, Head
from streamer.chunkstore import ChunkStore, StoredObject, Taken
from streamer.digests import CRC64NVME, Digest
from streamer.fileio import Span
from streamer.layout import CHUNK_TAGS
from streamer.policy import UploadChunk
from streamer.records import StreamRecord
from streamer.uploader.context import Context
from streamer.uploader.jobs import Job
from streamer.uploader.reports import PrefixHash, Sent
from streamer.uploader.tasks import Handler
from streamer.watcher import HEAD_SIZE


def place_chunk(
    s3: ChunkStore,
    stream_id: str,
    index: int,
    revision: int,
    body: Body,
    sums: dict[str, Digest],
    probe: bool,
) -> tuple[int, str, Digest, float | None]:
    """Put a chunk's bytes (whose digests are `sums`) under the first revision key, from
    `revision` on, that is free or already holds exactly these bytes; `probe` says one may
    be taken. An object once written is never overwritten: bytes an unrecorded upload left
    there that the file no longer has stay, and these go to the next revision. Returns the
    revision, the ETag, the digest S3 holds it by, and the seconds the PUT took (None:
    found in S3)."""
    while True:
        key = s3.layout.chunk_key(stream_id, index, revision)
        stored = s3.stat(key) if probe else None
        if stored is None:
            started = time.perf_counter()
            try:
                etag, digest = s3.put_chunk(key, body, sums, CHUNK_TAGS)
                return revision, etag, digest, time.perf_counter() - started
            except Taken:
                # Written by someone else since (another host under this instance name,
                # or an upload no checkpoint recorded): never overwritten.
                stored = s3.stat(key)
        if stored is not None and same_bytes(stored, body, sums):
            return revision, stored.etag, stored.digest, None
        revision += 1


def same_bytes(stored: StoredObject, body: Body, sums: dict[str, Digest]) -> bool:
    """Does the object hold exactly `body`'s bytes (whose digests are `sums`)? By the
    digest it was stored with, in its own algorithm."""
    if stored.digest is None or stored.size != len(body):
        return False
    known = sums.get(stored.digest.algorithm)
    return (known or bodies.digest(stored.digest.algorithm, body)) == stored.digest


@dataclass(frozen=True)
class Digested:
    """A chunk's first pass: its digests (`ChunkStore.chunk_algorithms`), the file's head
    with chunk 0, and the chunk to send, checked to read again as it did."""

    sums: dict[str, Digest]
    head: bytes | None
    body: Checked

    @property
    def crc64nvme(self) -> str:
        return self.sums[CRC64NVME].value


def digest_chunk(s3: ChunkStore, span: Span, index: int, *also) -> Digested:
    """Read a chunk once to digest it; `also`, other hashers, are fed its bytes too."""
    head = Head(HEAD_SIZE) if index == 0 else None
    sums = bodies.digests_of(s3.chunk_algorithms, span, *(h for h in (*also, head) if h))
    return Digested(sums, head.data if head else None, Checked(span, sums[CRC64NVME]))


class Sender:
    def __init__(self, ctx: Context, landed: Handler):
        self.ctx = ctx
        self.landed = landed  # takes a chunk back: ledger.Ledger.chunk_returned

    def send(self, job: Job, chunk: UploadChunk) -> None:
        record = job.record
        probe = chunk.index < job.probe_below
        job.in_flight[chunk.index] = self.ctx.submit(
            "sender",
            job,
            self.transfer,
            record,
            chunk,
            record.min_revision,
            probe,
            job.sent_hash,
            then=lambda future, now: self.landed(job, chunk.index, future, now),
        )

    def transfer(
        self,
        record: StreamRecord,
        chunk: UploadChunk,
        revision: int,
        probe: bool,
        sent_hash: PrefixHash | None,
    ) -> Sent:
        """In a sender thread: digest the chunk, then put it in S3 unless S3 holds exactly
        these bytes already (`probe`: after a crash, an upload may have finished that no
        checkpoint recorded). The PUT reads the file again as it sends: bytes that are not
        the ones digested are stopped before the body is whole, and refused by S3."""
        span = Span(record, chunk.offset, chunk.size, self.ctx.buffers)
        first = self.digest_in_turn(span, chunk.index, sent_hash)
        read_at_ns, mtime_ns = span.read_at_ns, span.read_mtime_ns
        revision, etag, digest, seconds = place_chunk(
            self.ctx.s3, record.stream_id, chunk.index, revision, first.body, first.sums, probe
        )
        crc = first.crc64nvme
        return Sent(chunk, revision, digest, crc, etag, first.head, seconds, read_at_ns, mtime_ns)

    def digest_in_turn(self, span: Span, index: int, sent_hash: PrefixHash | None) -> Digested:
        """The chunk's first pass, feeding the file's sha256 when its turn comes."""
        whole = sent_hash.take_turn(index, span.offset) if sent_hash else None
        if whole is None:
            first = digest_chunk(self.ctx.s3, span, index)
            if sent_hash:
                sent_hash.seen(span.offset, first.crc64nvme)
            return first
        try:
            first = digest_chunk(self.ctx.s3, span, index, whole)
        except BaseException:
            sent_hash.give_up()
            raise
        sent_hash.fed(index, span.size, first.crc64nvme)
        return first
