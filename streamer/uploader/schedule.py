"""Turn-taking: which owned stream goes next, and what its next step is (policy.next_step
decides; this carries it out). The upload window is shared by all the streams of the
uploader: a stream that finds it full waits until any chunk comes back."""

from __future__ import annotations

from streamer import fileio
from streamer.fileio import size_of
from streamer.messages import SourceRewritten
from streamer.policy import Complete, Pending, UploadChunk, Wait, next_step
from streamer.uploader.completion import Completion
from streamer.uploader.context import UploaderContext
from streamer.uploader.jobs import Job, JobPhase
from streamer.uploader.sending import Sender
from streamer.uploader.survey import Surveyor

IDLE_WAIT = 1.0


class Schedule:
    def __init__(
        self, ctx: UploaderContext, sender: Sender, surveyor: Surveyor, completion: Completion
    ):
        self.ctx = ctx
        self.sender = sender
        self.surveyor = surveyor
        self.completion = completion

    def next_job(self, now: float) -> Job | None:
        """The first runnable job; it then goes to the back, so streams take turns."""
        jobs = self.ctx.jobs
        for stream_id, job in jobs.items():
            if job.survey_at is not None and job.survey_at <= now:
                job.survey_at = None
                job.wake()
            if not job.waiting and job.backoff.due <= now:
                jobs[stream_id] = jobs.pop(stream_id)
                return job
        return None

    def wait_time(self, now: float) -> float:
        """Until the next retry or planned survey is due, up to IDLE_WAIT."""
        jobs = self.ctx.jobs.values()
        retries = [j.backoff.due - now for j in jobs if not j.waiting]
        surveys = [j.survey_at - now for j in jobs if j.survey_at is not None]
        return max(0.0, min([IDLE_WAIT, *retries, *surveys]))

    def step(self, job: Job) -> None:
        if job.finishing is not None:
            job.waiting = True  # woken when the finisher thread reports
            return
        if job.phase is JobPhase.ABANDONING:
            if job.in_flight or job.copying is not None:
                job.waiting = True  # what is on the wire lands first
                return
            self.completion.abandon(job)
            return
        record, ctx = job.record, self.ctx
        size = size_of(record)
        if self.rewritten(job, size):
            return
        held = job.in_flight.keys() | job.arrived.keys()
        room = ctx.window - ctx.outstanding()
        match next_step(
            record.chunk_count,
            record.committed_bytes,
            record.chunk_size,
            size,
            finishing=job.phase is JobPhase.FINISHING,
            in_flight=held,
            window=max(1, min(ctx.window, len(held) + room)),
        ):
            case UploadChunk() if room <= 0 and not held:
                job.waiting = True  # other streams fill the window: woken when one returns
                ctx.starved.add(record.stream_id)
            case UploadChunk() as chunk:
                self.sender.send(job, chunk)
            case Pending() if room <= 0:
                # Woken when any chunk of this uploader returns, not only its own: a
                # stream does not keep the slots it holds while others wait.
                job.waiting = True
                ctx.starved.add(record.stream_id)
            case Complete() if job.copying is not None or job.surveying is not None:
                job.waiting = True  # the part being copied, the survey, are taken first
            case Complete():
                self.completion.start(job)
            case Wait():
                job.waiting = True
                self.surveyor.plan(job)
            case Pending():
                job.waiting = True

    def rewritten(self, job: Job, size: int) -> bool:
        """Is the file, shorter than what was committed of it, another recording now? (The
        supervisor is told, and the stream waits to be ended.)"""
        record = job.record
        if size >= record.committed_bytes or job.shrank:
            return False
        if fileio.head_changed(record.path, record.head):
            # Not this recording any more: the supervisor ends it and starts a new one.
            self.ctx.events.put(SourceRewritten(stream_id=record.stream_id))
            job.waiting = True
            return True
        # A file truncated to write another recording over it is too short to tell at
        # first: it is looked at again until its first bytes can be compared.
        job.shrank = size >= len(record.head or b"")
        if job.shrank:
            self.ctx.log.warning(
                "stream_shrank",
                **job.log_fields,
                size=size,
                committed_bytes=record.committed_bytes,
            )
        return False
