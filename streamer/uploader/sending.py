"""Sending chunks: a sender thread puts a chunk in S3 (or finds it there, after a crash),
read from the file once as it is sent and hashed on the way where the store sends its
checksum in a trailer (and on a pass before, for the file's sha256, where it is taken),
or else digested on one pass and sent on the next; it touches neither the checkpoint nor
the jobs, and reports what S3 holds as a `Sent`. Whatever it ends with comes back, on the
main thread, to `Ledger.chunk_returned`: a `Sent` is committed in chunk order; an error
goes to `UploaderContext.retry_later`, which classifies it (`failures.classify`) and parks
the stream with its backoff (`failures.Backoff`)."""

from __future__ import annotations

import functools
import time

from streamer import bodies
from streamer.bodies import Body, Checked, Head, Tapped
from streamer.digests import CRC64NVME, Digest
from streamer.fileio import HEAD_SIZE, Span
from streamer.layout import CHUNK_TAGS
from streamer.objectstore import ObjectStore, StoredObject, Taken
from streamer.policy import UploadChunk
from streamer.records import StreamRecord
from streamer.uploader import file_sha256
from streamer.uploader.context import UploaderContext
from streamer.uploader.file_sha256 import PrefixHash
from streamer.uploader.jobs import Job
from streamer.uploader.ledger import Ledger
from streamer.uploader.reports import Sent


def place_chunk(
    s3: ObjectStore,
    stream_id: str,
    index: int,
    revision: int,
    body: Body,
    sums: dict[str, Digest] | None,
    probe: bool,
) -> tuple[int, str, dict[str, Digest], Digest, float | None]:
    """Put a chunk's bytes under the first revision key, from `revision` on, that is free
    or already holds exactly these bytes; `probe` says one may be taken. `sums`: their
    digests, taken on a pass before, or None where the store `trails` (taken as they are
    sent). An object once written is never overwritten: bytes an unrecorded upload left
    there that the file no longer has stay, and these go to the next revision. Returns the
    revision, the ETag, the chunk's digests, the one S3 holds it by, and the seconds the
    PUT took (None: found in S3)."""
    while True:
        key = s3.layout.chunk_key(stream_id, index, revision)
        stored = s3.stat(key, checksum=True) if probe else None
        if stored is None:
            started = time.perf_counter()
            try:
                etag, sent, digest = s3.put_chunk(key, body, sums, CHUNK_TAGS)
                return revision, etag, sent, digest, time.perf_counter() - started
            except Taken:
                # Written by someone else since (another host under this instance name,
                # or an upload no checkpoint recorded): never overwritten.
                stored = s3.stat(key, checksum=True)
        if stored is not None:
            wanted = (*s3.chunk_algorithms, *((stored.digest.algorithm,) if stored.digest else ()))
            known = sums or bodies.digests_of(tuple(dict.fromkeys(wanted)), body)
            if same_bytes(stored, body, known):
                return revision, stored.etag, known, stored.digest, None
        revision += 1


def same_bytes(stored: StoredObject, body: Body, sums: dict[str, Digest]) -> bool:
    """Does the object hold exactly `body`'s bytes (whose digests are `sums`)? By the
    digest it was stored with, in its own algorithm."""
    if stored.digest is None or stored.size != len(body):
        return False
    known = sums.get(stored.digest.algorithm)
    return (known or bodies.digest(stored.digest.algorithm, body)) == stored.digest


def put_span(
    s3: ObjectStore,
    stream_id: str,
    index: int,
    revision: int,
    span: Span,
    probe: bool,
    sent_hash: PrefixHash | None = None,
) -> Sent:
    """Put chunk `index`, the bytes of `span`, in S3 unless S3 holds exactly these bytes
    already (`probe`: after a crash, an upload may have finished that no checkpoint
    recorded); `sent_hash`, the file's sha256, is fed them in turn. Where the store
    `trails`, the chunk is read once, hashed as it is sent (and once more before, for the
    sha256, if one is taken); else it is digested on a pass of its own, and read again as
    it is sent: bytes that are not the ones digested are stopped before the body is whole,
    and refused by S3."""
    head = Head(HEAD_SIZE) if index == 0 else None
    if s3.trails:
        if sent_hash is not None:
            file_sha256.feed_in_turn(span, index, sent_hash, (CRC64NVME,))
        body, sums = Tapped(span, head) if head else span, None
    else:
        sums = file_sha256.feed_in_turn(span, index, sent_hash, s3.chunk_algorithms, head)
        body = Checked(span, sums[CRC64NVME])
    revision, etag, sums, digest, seconds = place_chunk(
        s3, stream_id, index, revision, body, sums, probe
    )
    chunk = UploadChunk(index, span.offset, span.size)
    crc, read = sums[CRC64NVME].value, (span.read_at_ns, span.read_mtime_ns)
    return Sent(chunk, revision, digest, crc, etag, head.data if head else None, seconds, *read)


class Sender:
    def __init__(self, ctx: UploaderContext, ledger: Ledger):
        self.ctx = ctx
        self.ledger = ledger

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
            then=functools.partial(self.ledger.chunk_returned, job, chunk.index),
        )

    def transfer(
        self,
        record: StreamRecord,
        chunk: UploadChunk,
        revision: int,
        probe: bool,
        sent_hash: PrefixHash | None,
    ) -> Sent:
        """In a sender thread: the chunk in S3 (`put_span`)."""
        span = Span(record, chunk.offset, chunk.size, self.ctx.buffers)
        return put_span(
            self.ctx.s3, record.stream_id, chunk.index, revision, span, probe, sent_hash
        )
