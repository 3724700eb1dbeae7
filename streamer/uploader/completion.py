"""Completion: a stream whose file the supervisor found idle is checked against its file
(every uploaded range, unless a survey while quiet did), what the recorder rewrote is
uploaded again, the whole is assembled, and the stream concludes with its metadata.json.
A stream whose file went away, or that an operator cancelled, concludes with what S3 has."""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime

import msgspec

from streamer import digests, metrics, mp4
from streamer.audit import chunk_problems
from streamer.checkpoint import UnknownStream
from streamer.failures import NotInS3
from streamer.fileio import Span, open_regular, stat_source, touching
from streamer.logs import describe
from streamer.messages import Finish, FinishDeclined, StreamFinished
from streamer.objectstore import ObjectStore
from streamer.policy import final_status
from streamer.publishing import Published, publish
from streamer.records import ChunkRecord, StreamRecord, whole_crc64nvme
from streamer.uploader import file_sha256
from streamer.uploader.assembly import Assembler, content_type
from streamer.uploader.context import UploaderContext
from streamer.uploader.file_sha256 import PrefixHash
from streamer.uploader.jobs import Job, JobPhase
from streamer.uploader.ledger import Ledger
from streamer.uploader.reports import Finished, Survey
from streamer.uploader.sending import put_span
from streamer.uploader.survey import Surveyor, still_holds, survey


def bring_up(
    ctx: UploaderContext, record: StreamRecord, published: Published
) -> tuple[StreamRecord, list[ChunkRecord]]:
    """S3's record of the stream is further along than this store's: the store takes it
    as it is, and S3 is left alone."""
    brought, chunks = published.records(record)
    ctx.store.replace_stream(brought, chunks)
    ctx.log.warning(
        "stream_reconciled",
        stream_id=record.stream_id,
        status=brought.state.value,
        size=brought.total_size,
        was_status=record.state.value,
        was_size=record.total_size,
    )
    return brought, chunks


def delete_superseded(
    ctx: UploaderContext, record: StreamRecord, chunks: list[ChunkRecord]
) -> None:
    """The earlier revisions of chunks the recorder rewrote, once metadata.json lists the
    later ones, deleted in a finisher thread: each only while it is the object this store
    wrote there. Their record stays until they are gone (pruning tries them again)."""
    keys = superseded_keys(ctx.s3, record.stream_id, chunks)
    if keys:
        ctx.tasks.submit(
            "finisher",
            record.stream_id,
            remove_exactly,
            ctx.s3,
            keys,
            then=lambda future, now: superseded_deleted(ctx, record.stream_id, future),
        )


def remove_exactly(s3: ObjectStore, keys: list[tuple[str, str]]) -> list[str]:
    """Delete each (key, ETag) while the key holds that very object; return those that
    did not (another object there now)."""
    return [k for k, etag in keys if not s3.remove_if(k, etag) and s3.stat(k) is not None]


def superseded_deleted(ctx: UploaderContext, stream_id: str, future: Future) -> None:
    if future.exception() is not None:
        ctx.log.warning("superseded_kept", stream_id=stream_id, error=describe(future.exception()))
        return
    with contextlib.suppress(UnknownStream):  # forgotten meanwhile: nothing to note
        ctx.store.forget_superseded(stream_id)
    if kept := future.result():
        ctx.log.warning("objects_kept", stream_id=stream_id, keys=kept, reason="changed since")


def superseded_keys(
    s3: ObjectStore, stream_id: str, chunks: list[ChunkRecord]
) -> list[tuple[str, str]]:
    """(key, ETag) of every earlier revision of `chunks` this store wrote."""
    return [
        (s3.layout.chunk_key(stream_id, c.index, revision), etag)
        for c in chunks
        for revision, etag in c.superseded
    ]


class FinishCalledOff(Exception):
    """The file changed while its stream was being finished: it goes on streaming."""

    def __init__(self, size: int):
        super().__init__(f"the file changed (now {size} bytes) while it was being finished")
        self.size = size


def check_still_idle(path: str, finish: Finish) -> None:
    st = stat_source(path)
    if (st.st_size, st.st_mtime_ns) != (finish.size, finish.mtime_ns):
        raise FinishCalledOff(st.st_size)


class Completion:
    def __init__(
        self, ctx: UploaderContext, ledger: Ledger, surveyor: Surveyor, assembler: Assembler
    ):
        self.ctx = ctx
        self.ledger = ledger
        self.surveyor = surveyor
        self.assembler = assembler

    def start(self, job: Job) -> None:
        """Hand the stream's completion to a finisher thread; `finished` records its
        report. Streams falling idle together on one uploader so finish side by side."""
        record = job.record
        job.finishing = self.ctx.submit(
            "finisher",
            job,
            self.finish_stream,
            record,
            self.ctx.store.chunks(record.stream_id),
            job.finish,
            job.sent_hash,
            job.quiet,
            job.log_fields,
            then=lambda future, now: self.finished(job, future, now),
        )
        job.waiting = True

    def finish_stream(
        self,
        record: StreamRecord,
        chunks: list[ChunkRecord],
        finish: Finish,
        sent_hash: PrefixHash | None,
        quiet: Survey | None,
        log_fields: dict,
    ) -> Finished:
        """In a finisher thread: check every uploaded range against the file's final
        bytes (unless a survey while the file was quiet did, at the same size and mtime),
        upload again what the recorder rewrote, and assemble the whole object.
        Raises FinishCalledOff if the file changes meanwhile. Touches neither the checkpoint
        nor the jobs: `finished` records the outcome."""
        check_still_idle(record.path, finish)
        granularity = self.ctx.granularity_of(record.path)
        take_sha256 = file_sha256.wanted(self.ctx.config, chunks)
        quiet = still_holds(quiet, finish, chunks, sent_hash, granularity, take_sha256)
        if quiet is None:
            quiet = survey(
                record,
                chunks,
                finish.size,
                finish.mtime_ns,
                sent_hash,
                self.ctx.buffers,
                granularity_ns=granularity,
                sha256=take_sha256,
            )
            self.surveyor.log(quiet, while_quiet=False, log_fields=log_fields)
        revised = self.reconcile(record, chunks, quiet, log_fields)
        sha256, drop_from = quiet.sha256, quiet.drop_from
        with open_regular(record.path) as f, touching(record.path):
            facts = mp4.inspect_file(f)
        check_still_idle(record.path, finish)
        by_index = {c.index: c for c in chunks[:drop_from]} | {c.index: c for c, _ in revised}
        final = [by_index[i] for i in sorted(by_index)]
        if problems := chunk_problems(record.stream_id, final, finish.size, self.ctx.s3):
            raise NotInS3(problems[0])
        assembled = None
        if self.ctx.config.stream.assemble:
            kind = content_type(facts.is_mp4)
            whole = digests.whole(sha256, whole_crc64nvme(final))
            assembled = self.assembler.assemble(record, final, finish, whole, kind, log_fields)
            check_still_idle(record.path, finish)
        return Finished(finish, sha256, revised, drop_from, facts, assembled)

    def reconcile(
        self, record: StreamRecord, chunks: list[ChunkRecord], survey: Survey, log_fields: dict
    ) -> list[tuple[ChunkRecord, bytes | None]]:
        """Upload again the chunks that no longer hold the file's bytes; return them (with
        the file's head, for chunk 0)."""
        by_index = {c.index: c for c in chunks}
        revised = []
        for index, reason in survey.stale:
            chunk = by_index[index]
            length = min(chunk.size, survey.size - chunk.offset)
            span = Span(record, chunk.offset, length, self.ctx.buffers)
            revised.append(self.reupload(record, chunk, span, reason, log_fields))
        if survey.drop_from is not None:
            self.ctx.log.warning(
                "chunks_dropped", **log_fields, from_index=survey.drop_from, reason="file shrank"
            )
        return revised

    def reupload(
        self,
        record: StreamRecord,
        old: ChunkRecord,
        span: Span,
        reason: str,
        log_fields: dict,
    ) -> tuple[ChunkRecord, bytes | None]:
        # A crash after an earlier re-upload's PUT may have left its bytes at that key.
        revision = max(old.revision + 1, record.min_revision)
        sent = put_span(self.ctx.s3, record.stream_id, old.index, revision, span, probe=True)
        if sent.seconds is not None:
            metrics.BYTES_UPLOADED.inc(len(span))
        self.ctx.log.info(
            "chunk_reuploaded",
            **log_fields,
            index=old.index,
            offset=old.offset,
            size=len(span),
            revision=sent.revision,
            reason=reason,
        )
        # Read at completion: settled by then, whenever the pass began.
        settled = replace(sent, read_at_ns=None, read_mtime_ns=None)
        return settled.record(reason), sent.head

    def finished(self, job: Job, future: Future, now: float) -> None:
        """Record what a finisher thread reports: the chunks it uploaded again, then the
        stream's completion. A file that changed meanwhile goes on streaming."""
        job.finishing = None
        job.wake()
        if job.phase is JobPhase.ABANDONING:
            return  # the file went away, or an operator cancelled it: abandoned instead
        try:
            report = future.result()
        except FinishCalledOff as exc:
            job.finish = None
            job.move_to(JobPhase.STREAMING)
            self.ctx.events.put(FinishDeclined(stream_id=job.stream_id))
            self.ctx.log.info("finish_declined", **job.log_fields, size=exc.size)
            return
        if report.drop_from is not None:
            job.record = self.ctx.store.drop_chunks_from(job.stream_id, report.drop_from)
        for chunk, head in report.revised:
            self.ledger.commit(job, [chunk], head)
        state, reason = final_status(report.facts)
        self.conclude(
            job,
            state=state,
            status_reason=reason,
            total_size=report.finish.size,
            mtime_ns=report.finish.mtime_ns,
            sha256=report.sha256,
            mp4=report.facts,
            assembled=report.assembled,
        )

    def abandon(self, job: Job) -> None:
        """The file is gone, or an operator cancelled the stream: what S3 has is what the
        stream is."""
        reason, state = job.abandon
        self.ctx.log.warning(
            "stream_abandoned",
            **job.log_fields,
            reason=reason,
            uploaded_bytes=job.record.committed_bytes,
        )
        if job.record.assembly is not None:
            self.assembler.drop(job)
        self.conclude(
            job,
            state=state,
            status_reason=reason,
            total_size=job.record.committed_bytes,
        )

    def conclude(self, job: Job, **completion) -> None:
        """The manifest goes first, in a finisher thread (the loop never waits on S3): a
        finished stream always has its metadata.json."""
        ctx = self.ctx
        completion["completed_at"] = datetime.now(UTC)
        completion["assembly"] = None  # completed, or aborted
        chunks = ctx.store.chunks(job.stream_id)
        completion["crc64nvme"] = whole_crc64nvme(chunks)
        done = msgspec.structs.replace(job.record, **completion)
        job.finishing = ctx.submit(
            "finisher",
            job,
            publish,
            ctx.s3,
            done,
            chunks,
            then=lambda future, now: self.published(job, done, chunks, completion, future),
        )

    def published(
        self,
        job: Job,
        done: StreamRecord,
        chunks: list[ChunkRecord],
        completion: dict,
        future: Future,
    ) -> None:
        """Its metadata.json is in S3 (a failure to write it parks the stream, and its
        completion is tried again): the stream is concluded."""
        ctx, stream_id = self.ctx, job.stream_id
        job.finishing = None
        job.wake()
        published = future.result()
        if published.behind:
            done, chunks = bring_up(ctx, done, published)
        else:
            completion["manifest_etag"] = published.etag
            ctx.store.update_stream(stream_id, lambda r: msgspec.structs.replace(r, **completion))
            delete_superseded(ctx, done, chunks)
        self.assembler.forget(stream_id)
        job.move_to(JobPhase.CONCLUDED)
        del ctx.jobs[stream_id]
        ctx.wake_starved()
        metrics.STREAMS_FINISHED.labels(status=done.state.value).inc()
        ctx.events.put(
            StreamFinished(
                stream_id=stream_id,
                status=done.state.value,
                size=done.total_size if done.mtime_ns is not None else -1,
                mtime_ns=done.mtime_ns if done.mtime_ns is not None else -1,
            )
        )
        ctx.log.info(
            "stream_finished",
            **job.log_fields,
            status=done.state.value,
            reason=done.status_reason,
            size=done.total_size,
            chunks=len(chunks),
            reuploaded_chunks=done.reuploaded_chunks,
            sha256=done.sha256,
            crc64nvme=done.crc64nvme,
        )
