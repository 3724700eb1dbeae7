"""Sending chunks: a sender thread reads a chunk once, digests it and puts it in S3 (or
finds it there, after a crash); it touches neither the checkpoint nor the jobs, and
reports what S3 holds as a `Sent`. The ledger commits it."""

from __future__ import annotations

import time

from streamer.chunkstore import ChunkStore, StoredObject, Taken
from streamer.digests import Digest
from streamer.fileio import read_into
from streamer.layout import CHUNK_TAGS
from streamer.policy import UploadChunk
from streamer.records import StreamRecord
from streamer.uploader.context import Context
from streamer.uploader.jobs import Job
from streamer.uploader.reports import PrefixHash, Sent
from streamer.uploader.tasks import Handler
from streamer.watcher import HEAD_SIZE


def place_chunk(
    s3: ChunkStore, stream_id: str, index: int, revision: int, data, digest: Digest, probe: bool
) -> tuple[int, str, Digest, float | None]:
    """Put a chunk's bytes under the first revision key, from `revision` on, that is free
    or already holds exactly these bytes; `probe` says one may be taken. An object once
    written is never overwritten: bytes an unrecorded upload left there that the file no
    longer has stay, and these go to the next revision. Returns the revision, the ETag,
    the digest S3 holds it by, and the seconds the PUT took (None: found in S3)."""
    while True:
        key = s3.layout.chunk_key(stream_id, index, revision)
        stored = s3.stat(key) if probe else None
        if stored is None:
            started = time.perf_counter()
            try:
                etag, digest = s3.put_chunk(key, data, digest, CHUNK_TAGS)
                return revision, etag, digest, time.perf_counter() - started
            except Taken:
                # Written by someone else since (another host under this instance name,
                # or an upload no checkpoint recorded): never overwritten.
                stored = s3.stat(key)
        if stored is not None and same_bytes(stored, data, digest):
            return revision, stored.etag, stored.digest, None
        revision += 1


def same_bytes(stored: StoredObject, data, digest: Digest) -> bool:
    """Does the object hold exactly `data` (whose digest is `digest`)? By the digest it
    was stored with, in its own algorithm."""
    if stored.digest is None or stored.size != len(data):
        return False
    if stored.digest.algorithm == digest.algorithm:
        return stored.digest == digest
    return stored.digest.matches(data)


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
        """In a sender thread: read the chunk once, digest it, and put it in S3 unless S3
        holds exactly these bytes already (`probe`: after a crash, an upload may have
        finished that no checkpoint recorded)."""
        buffers = self.ctx.buffers
        read_at_ns = time.time_ns()
        buffer = buffers.take(chunk.size)
        data = memoryview(buffer)[: chunk.size]
        try:
            mtime_ns = read_into(record, chunk.offset, data)
            s3 = self.ctx.s3
            head = bytes(data[:HEAD_SIZE]) if chunk.index == 0 else None
            revision, etag, digest, seconds = place_chunk(
                s3, record.stream_id, chunk.index, revision, data, s3.chunk_digest(data), probe
            )
        except BaseException:
            buffers.give(buffer)
            raise
        if sent_hash is None:
            buffers.give(buffer)
        else:
            sent_hash.feed(chunk.offset, data, buffer)  # S3 holds these bytes, sent or found
        return Sent(chunk, revision, digest, etag, head, seconds, read_at_ns, mtime_ns)
