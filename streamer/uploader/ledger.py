"""The ledger: chunks S3 confirmed are committed to the checkpoint store strictly in index
order, so a restart resumes from the last contiguous committed chunk."""

from __future__ import annotations

from concurrent.futures import Future

from streamer import metrics
from streamer.messages import ChunkCommitted, ChunkUploaded
from streamer.policy import copies_ahead
from streamer.records import ChunkRecord
from streamer.uploader.context import UploaderContext
from streamer.uploader.jobs import Job
from streamer.uploader.reports import Sent


class Ledger:
    def __init__(self, ctx: UploaderContext):
        self.ctx = ctx
        self.told_checksum_refused = False
        self.told_trailer_refused = False

    def chunk_returned(self, job: Job, index: int, future: Future, now: float) -> None:
        """A chunk came back from its sender thread. A failed one is sent again after the
        stream's backoff, and the chunks after it wait for it."""
        del job.in_flight[index]
        job.wake()
        self.ctx.wake_starved()
        if future.exception() is None:
            job.arrived[index] = future.result()
        elif job.backoff.due <= now:
            # Counted once: the chunks on the wire with it failed for the same reason.
            self.ctx.retry_later(job, future.exception(), now)
        self.land_in_order(job, now)

    def land_in_order(self, job: Job, now: float) -> None:
        """Commit the chunks that came back and follow the last committed, in one
        transaction however many they are."""
        landing: list[Sent] = []
        while (sent := job.arrived.pop(job.record.chunk_count + len(landing), None)) is not None:
            landing.append(sent)
        if not landing:
            return
        records = [sent.record() for sent in landing]
        try:
            self.ctx.s3_state(True)
            for chunk in records:
                end = chunk.offset + chunk.size
                self.ctx.events.put(ChunkUploaded(stream_id=job.stream_id, end=end))
            self.commit(job, records, landing[0].head)
        except Exception as exc:
            # In S3 but not committed: look there before sending them again.
            job.probe_below = max(job.probe_below, records[-1].index + 1)
            self.ctx.retry_later(job, exc, now)
            return
        for sent, committed in zip(landing, records, strict=True):
            self.landed(job, sent, committed)

    def landed(self, job: Job, sent: Sent, committed: ChunkRecord) -> None:
        ctx, record, chunk = self.ctx, job.record, sent.chunk
        if copies_ahead(ctx.config.stream.assemble, record.chunk_size, chunk.index, chunk.size):
            job.uncopied.append(committed)
        ctx.step_succeeded(job)
        fields = {
            **job.log_fields,
            "index": chunk.index,
            "offset": chunk.offset,
            "size": chunk.size,
            "digest": str(sent.digest),
        }
        refused = ctx.s3.checksum_refused
        if refused and not self.told_checksum_refused:
            self.told_checksum_refused = True
            ctx.log.warning(
                "checksum_refused",
                refused=refused,
                checksum=ctx.s3.checksum,
                message=f"S3 refuses x-amz-checksum-{refused}: chunks go with the next "
                "checksum it takes (sha256 is signed, and costs a sha256 of every byte)",
            )
        if ctx.s3.trailer_refused and not self.told_trailer_refused:
            self.told_trailer_refused = True
            ctx.log.warning(
                "trailer_refused",
                message="S3 refuses a checksum sent after the body (aws-chunked), or the "
                "body's signed pieces: each chunk is digested on a pass of its own before it "
                "is sent, read twice",
            )
        if sent.seconds is None:
            ctx.log.info("chunk_found_in_s3", **fields)
            return
        metrics.CHUNK_UPLOAD_SECONDS.observe(sent.seconds)
        metrics.CHUNKS_UPLOADED.inc()
        metrics.BYTES_UPLOADED.inc(chunk.size)
        ctx.log.info("chunk_uploaded", **fields, seconds=round(sent.seconds, 3))

    def commit(self, job: Job, chunks: list[ChunkRecord], head: bytes | None) -> None:
        with metrics.CHECKPOINT_COMMIT_SECONDS.time():
            job.record = self.ctx.store.commit_chunks(job.stream_id, chunks, head)
        self.ctx.checkpoint_state(True)
        self.ctx.events.put(
            ChunkCommitted(stream_id=job.stream_id, committed_bytes=job.record.committed_bytes)
        )
