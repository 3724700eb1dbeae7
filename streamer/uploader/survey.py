"""Surveys: a file compared with its uploaded chunks, which of them no longer hold its
bytes, and its sha256. Completion surveys a stream at its idle size; a stream with nothing
left to send but its tail is surveyed ahead, once its file has been quiet a while, so
that completion need not (on a long recording, most of its time)."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import replace

from streamer import bodies
from streamer.buffers import BufferPool
from streamer.fileio import Span, stat_source
from streamer.logs import describe
from streamer.messages import Finish
from streamer.policy import SETTLED_NS, settled
from streamer.records import ChunkRecord, StreamRecord
from streamer.uploader import file_sha256
from streamer.uploader.context import UploaderContext
from streamer.uploader.file_sha256 import PrefixHash
from streamer.uploader.jobs import Job
from streamer.uploader.reports import Survey


def still_holds(
    survey: Survey | None,
    finish: Finish,
    chunks: list[ChunkRecord],
    sent: PrefixHash | None,
    granularity_ns: int = 0,
    sha256: bool = True,
) -> Survey | None:
    """The survey made ahead, with its sha256 (if `sha256`: one is wanted), if the file is
    still what it surveyed and every chunk committed since was read after its last write;
    else None: survey it now."""
    if survey is None or not survey.holds(finish):
        return None
    later = chunks[survey.checked :]
    final = finish.mtime_ns
    if not all(settled(c.read_at_ns, c.read_mtime_ns, final, granularity_ns) for c in later):
        return None
    if survey.sha256 is not None or not sha256:
        return survey
    # The tail has been sent since.
    whole = file_sha256.sent_whole(sent, chunks, finish.size)
    return replace(survey, sha256=whole) if whole else None


def survey(
    record: StreamRecord,
    chunks: list[ChunkRecord],
    size: int,
    mtime_ns: int,
    sent_hash: PrefixHash | None,
    buffers: BufferPool,
    ahead: bool = False,
    granularity_ns: int = 0,
    sha256: bool = True,
) -> Survey:
    """Compare the uploaded chunks with the file, of `size` bytes last written at
    `mtime_ns`. Chunks read after that write are known to hold its bytes (not read
    again); the file's sha256 (if `sha256`: one is wanted) is taken on from what the
    sender threads hashed, if the file still holds what they sent: one pass over the file
    instead of two. `ahead`: the tail is still to be sent."""
    taking = file_sha256.Taking(sent_hash, chunks, size, sha256)
    stale, drop_from = [], None
    for chunk in chunks:
        if chunk.offset >= size:
            drop_from = chunk.index
            break
        length = min(chunk.size, size - chunk.offset)
        known = settled(chunk.read_at_ns, chunk.read_mtime_ns, mtime_ns, granularity_ns)
        if known and length == chunk.size and not taking.feeds:
            continue
        span = Span(record, chunk.offset, length, buffers)
        shrank = length != chunk.size
        if shrank:
            stale.append((chunk.index, "file shrank"))
        if shrank or known:
            bodies.feed(span, *taking.feeds)
        elif bodies.digest(chunk.quick_digest.algorithm, span, *taking.feeds) != chunk.quick_digest:
            stale.append((chunk.index, "bytes changed after upload"))
    digest = taking.result(record, buffers, stale=bool(stale), ahead=ahead)
    return Survey(size, mtime_ns, digest, stale, drop_from, checked=len(chunks))


class Surveyor:
    def __init__(self, ctx: UploaderContext):
        self.ctx = ctx

    def quiet_after(self, path: str) -> float:
        """After half the idle timeout, and after policy.SETTLED_NS: what is read then is
        known to be the file's bytes if its mtime has not moved by completion."""
        settle_s = (SETTLED_NS + self.ctx.granularity_of(path)) / 1e9
        return max(self.ctx.config.stream.idle_timeout / 2, 1.5 * settle_s)

    def plan(self, job: Job) -> None:
        """Survey a stream with nothing to send but its tail ahead of completion, once its
        file has been quiet for half the idle timeout: it is most likely done."""
        ctx = self.ctx
        if job.surveying is not None or (job.survey_at or 0) > ctx.clock():
            return  # under way, or planned (or tried and failed) not long ago
        st = stat_source(job.record.path)
        planned = (st.st_size, st.st_mtime_ns)
        if job.quiet and (job.quiet.size, job.quiet.mtime_ns) == planned:
            return
        wait = self.quiet_after(job.record.path) - (time.time_ns() - st.st_mtime_ns) / 1e9
        if wait > 0:
            job.survey_at = ctx.clock() + wait
            return
        record = job.record
        # Nothing is on the wire (a Wait): the checkpoint lists every chunk sent so far.
        job.surveying = ctx.submit(
            "finisher",
            job,
            self.survey_quietly,
            record,
            ctx.store.chunks(record.stream_id),
            job.sent_hash,
            planned,
            then=lambda future, now: self.surveyed(job, future),
        )

    def survey_quietly(
        self,
        record: StreamRecord,
        chunks: list[ChunkRecord],
        sent_hash: PrefixHash | None,
        planned: tuple[int, int],
    ) -> Survey | None:
        """In a finisher thread, which may come to it late: the file compared at the size
        and mtime it was quiet at when planned, or None if it has changed since. (Any write
        since moves the mtime: it comes half an idle timeout after the planned one.)"""
        quiet = survey(
            record,
            chunks,
            *planned,
            sent_hash,
            self.ctx.buffers,
            ahead=True,
            granularity_ns=self.ctx.granularity_of(record.path),
            sha256=file_sha256.wanted(self.ctx.config, chunks),
        )
        st = stat_source(record.path)
        return quiet if (st.st_size, st.st_mtime_ns) == planned else None

    def surveyed(self, job: Job, future: Future) -> None:
        job.surveying = None
        job.wake()
        try:
            job.quiet = future.result()
        except Exception as exc:
            job.quiet = None
            job.survey_at = self.ctx.clock() + self.quiet_after(job.record.path)  # not at once
            self.ctx.log.warning("survey_failed", **job.log_fields, error=describe(exc))
            return
        if job.quiet is not None:
            self.log(job.quiet, while_quiet=True, log_fields=job.log_fields)

    def log(self, survey: Survey, while_quiet: bool, log_fields: dict) -> None:
        self.ctx.log.info(
            "stream_surveyed",
            **log_fields,
            size=survey.size,
            stale_chunks=[index for index, _ in survey.stale],
            while_quiet=while_quiet,
        )
