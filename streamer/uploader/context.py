"""What every role of an uploader process works with, made once after the fork: the
settings, the checkpoint store, the S3 store, the read buffers, the door for background
work, the owned streams, and the one way a failed step is retried."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from minio.error import S3Error

from streamer import logs, metrics
from streamer.buffers import BufferPool
from streamer.checkpoint import CheckpointStore, CheckpointUnwritable
from streamer.config import Config
from streamer.failures import S3_TROUBLE, Backoff, classify, hint
from streamer.fileio import file_granularity_ns
from streamer.logs import describe
from streamer.messages import CheckpointState, Mailbox, S3State, StreamParked, StreamResumed
from streamer.objectstore import ObjectStore
from streamer.uploader.jobs import Job
from streamer.uploader.tasks import Handler, Tasks

# The log event of a failed step, by kind (failures.classify).
STEP_EVENTS = {"transient": "upload_retry", "rejected": "s3_rejected", "failed": "stream_failed"}


@dataclass(eq=False)
class UploaderContext:
    worker_id: int
    config: Config
    store: CheckpointStore
    s3: ObjectStore
    buffers: BufferPool
    tasks: Tasks
    events: Mailbox  # to the supervisor
    log: logs.EventLog
    clock: Callable[[], float]
    # How much coarser than a second file timestamps are, by filesystem (st_dev): a card
    # may be mounted in a folder below the watch directory.
    granularities: dict[int, int] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)  # by stream id
    starved: set[str] = field(default_factory=set)  # streams waiting for room in the window
    s3_reachable: bool | None = None
    bucket_missing: str = ""
    checkpoint_writable: bool = True

    def granularity_of(self, path: str) -> int:
        """How much coarser than a second the timestamps of the file at `path` may be."""
        return file_granularity_ns(path, self.granularities)

    @property
    def window(self) -> int:
        return self.config.stream.upload_window

    def submit(self, lane: str, job: Job, fn: Callable, *args, then: Handler) -> Future:
        """Background work for one owned stream, through the one door: its handler runs
        only while `job` is still the stream's, never on one concluded meanwhile."""

        def handle(future: Future, now: float) -> None:
            if self.jobs.get(job.stream_id) is job:
                then(future, now)

        return self.tasks.submit(lane, job.stream_id, fn, *args, then=handle)

    def outstanding(self) -> int:
        """Chunks on the wire or waiting for their turn to be committed. The window is
        shared by all the streams, so the chunks on the wire stay at `window`, however many
        streams this uploader owns."""
        return sum(job.held for job in self.jobs.values())

    def wake_starved(self) -> None:
        for stream_id in self.starved:
            if stream_id in self.jobs:
                self.jobs[stream_id].wake()
        self.starved.clear()

    def s3_state(
        self, reachable: bool, exc: Exception | None = None, bucket_missing: str = ""
    ) -> None:
        """Told to the supervisor when it changes: S3 answered or not, and, when it did,
        whether the bucket is missing (S3 reached all the same)."""
        if (reachable, bucket_missing) != (self.s3_reachable, self.bucket_missing):
            self.s3_reachable, self.bucket_missing = reachable, bucket_missing
            error = describe(exc) if exc else ""
            self.events.put(
                S3State(reachable=reachable, error=error, bucket_missing=bucket_missing)
            )

    def checkpoint_state(self, writable: bool, exc: Exception | None = None) -> None:
        """Told to the supervisor when it changes; it logs it and answers /readyz."""
        if writable != self.checkpoint_writable:
            self.checkpoint_writable = writable
            self.events.put(CheckpointState(writable=writable, error=describe(exc) if exc else ""))

    def retry_later(self, job: Job, exc: Exception, now: float) -> None:
        """A step of the stream failed: it is parked (the supervisor is told why, and
        until when), the others go on."""
        backoff = job.backoff
        kind, delay = self.fail(backoff, exc, now, STEP_EVENTS, **job.log_fields)
        job.told_parked = True
        reason = describe(exc)
        if kind == "rejected":
            reason += f" (will not heal by itself: {hint(exc, True)['hint']})"
        elif kind == "failed":
            reason += " (a bug: no fault explains it; its stream_failed line has the traceback)"
        self.events.put(
            StreamParked(
                stream_id=job.stream_id,
                reason=reason,
                delay=delay,
                failing_for=now - backoff.since,
                heals=kind == "transient",
                bug=kind == "failed",
            )
        )

    def step_succeeded(self, job: Job) -> None:
        """A step of the stream went through: parked no longer."""
        if job.told_parked:
            self.events.put(StreamResumed(stream_id=job.stream_id))
            job.told_parked = False
        job.backoff.succeeded()

    def fail(
        self, backoff: Backoff, exc: Exception, now: float, events: dict[str, str], **fields
    ) -> tuple[str, float]:
        """The one way a failed step is retried, wherever it failed: classified, counted,
        logged (`events` names the line for each kind) and scheduled again. Returns the
        kind and the delay."""
        kind = classify(exc)
        s3 = self.config.s3
        error = describe(exc)
        repeated = backoff.error == error
        backoff.error = error
        delay = backoff.failed(kind, now, s3.retry_base, s3.retry_cap)
        metrics.UPLOAD_ERRORS.labels(kind=kind).inc()
        metrics.UPLOAD_RETRIES.inc()
        # S3 refusing one object answered all the same: it is reached (the stream is
        # parked, and says why).
        if isinstance(exc, S3_TROUBLE) and not (isinstance(exc, S3Error) and kind == "rejected"):
            self.s3_state(False, exc)
        if isinstance(exc, CheckpointUnwritable):
            self.checkpoint_state(False, exc)
        fields |= {"error": error, "attempt": backoff.attempt, "delay": round(delay, 3)}
        if kind == "transient":
            self.log.warning(events[kind], **fields, **hint(exc, False))
        elif kind == "rejected":
            self.log.error(events[kind], **fields, **hint(exc, True))
        elif repeated:
            self.log.debug("step_failed_again", **fields)  # its traceback was logged once
        else:
            # A bug, or a file we cannot handle: it waits (stuck), the rest goes on.
            trace = "".join(traceback.format_exception(exc, limit=-8))  # where it was raised
            self.log.error(events[kind], **fields, traceback=trace)
        return kind, delay
