"""An uploader process: owns the streams the supervisor assigns, uploads their chunks,
commits each to the checkpoint store in chunk order, and finalises a stream when told it
is idle.

Up to `stream.upload_window` chunks (of one stream or several) are in flight at once,
each read, hashed and sent by a sender thread; as many streams can be finished at once by
finisher threads (read again, assembled in S3). A copier thread copies each committed chunk
into its stream's assembly upload while the stream is live, so completion has little left
to copy. Everything else (commands, the checkpoint
store, decisions) happens in the main loop. A chunk is committed only after every chunk
before it, so a restart resumes from the last contiguous committed chunk, and on stop the
chunks in flight land and are committed before the process exits.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import enum
import functools
import hashlib
import itertools
import os
import select
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_all
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import msgspec

from streamer import logs, manifest, metrics, mp4, naming, retention
from streamer.bandwidth import TokenBucket
from streamer.buffers import BufferPool
from streamer.checkpoint import CheckpointError, CheckpointStore, UnknownStream
from streamer.childproc import EXIT_BOOT_ERROR, EXIT_OK, FORK_BLOCKED_SIGNALS
from streamer.chunkstore import ChunkStore, PartSource, UploadGone
from streamer.config import Config, MiB
from streamer.failures import (
    S3_TROUBLE,
    Backoff,
    NotInS3,
    classify,
    describe,
    hint,
)
from streamer.fileio import HashingReader, SourceChanged, read_into, size_of
from streamer.messages import (
    Abandon,
    Assign,
    ChunkCommitted,
    ChunkUploaded,
    Finish,
    FinishDeclined,
    Grow,
    Mailbox,
    Moved,
    Retire,
    Retired,
    S3State,
    SourceRewritten,
    Stop,
    StreamFinished,
)
from streamer.policy import (
    SETTLED_NS,
    Finalise,
    Pending,
    UploadChunk,
    Wait,
    assembly_method,
    copies_ahead,
    final_status,
    next_step,
    settled,
    upload_to_finish,
)
from streamer.records import Assembled, AssemblyUpload, ChunkRecord, StreamRecord, StreamState
from streamer.watcher import HEAD_SIZE, Watcher

IDLE_WAIT = 1.0
COPY_BATCH = 4  # parts the copier copies before the loop records them
PR_SET_PDEATHSIG = 1
M_MMAP_THRESHOLD = -3

# The log event of a failed step, by kind (failures.classify).
STEP_EVENTS = {"transient": "upload_retry", "rejected": "s3_rejected", "failed": "stream_failed"}
BUCKET_EVENTS = {"transient": "s3_unreachable", "rejected": "s3_rejected", "failed": "s3_rejected"}


class FinishCalledOff(Exception):
    """The file changed while its stream was being finished: it goes on streaming."""

    def __init__(self, size: int):
        super().__init__(f"the file changed (now {size} bytes) while it was being finished")
        self.size = size


@dataclass(frozen=True)
class Sent:
    """A sender thread's report: S3 holds this chunk's bytes."""

    chunk: UploadChunk
    revision: int
    sha256: str
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
            sha256=self.sha256,
            etag=self.etag,
            uploaded_at=_utcnow(),
            revision=self.revision,
            reason=reason,
            read_at_ns=self.read_at_ns,
            read_mtime_ns=self.read_mtime_ns,
        )


class PrefixHash:
    """sha256 of a file's first `size` bytes, fed by sender threads as their chunks reach
    S3, in any order: a chunk that comes back early waits, in its buffer, for those before
    it. Fed twice at one offset (a chunk sent again), it is no longer trusted."""

    def __init__(self, buffers: BufferPool):
        self._lock = threading.Lock()
        self._sha256 = hashlib.sha256()
        self._buffers = buffers
        self._early: dict[int, tuple[memoryview, bytearray]] = {}
        self.size = 0
        self.broken = False

    def feed(self, offset: int, data: memoryview, buffer: bytearray) -> None:
        """`data`, a view of `buffer`, which this takes: given back to the pool once its
        bytes are hashed, or no longer wanted."""
        with self._lock:
            if offset < self.size or offset in self._early:
                self.broken = True
                for _, held in self._early.values():
                    self._buffers.give(held)
                self._early = {}
            if self.broken:
                self._buffers.give(buffer)
                return
            self._early[offset] = (data, buffer)
            while (early := self._early.pop(self.size, None)) is not None:
                part, held = early
                self._sha256.update(part)
                self.size += len(part)
                self._buffers.give(held)

    def state(self, size: int):
        """A copy of the sha256 of the first `size` bytes, to go on with, if this is what it
        holds; else None."""
        with self._lock:
            whole = not self.broken and self.size == size
            return self._sha256.copy() if whole else None


@dataclass(frozen=True)
class Copied:
    """The copier thread's report: these chunks are parts of the upload now; `error`
    stopped it before the rest."""

    upload: AssemblyUpload
    parts: list[tuple[ChunkRecord, str]]  # (chunk, part ETag)
    error: Exception | None


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


def still_holds(
    survey: Survey | None, finish: Finish, chunks: list[ChunkRecord], sent: PrefixHash | None
) -> Survey | None:
    """The survey made ahead, with its sha256, if the file is still what it surveyed and
    every chunk committed since was read after its last write; else None: survey it now."""
    if survey is None or not survey.holds(finish):
        return None
    later = chunks[survey.checked :]
    if not all(settled(c.read_at_ns, c.read_mtime_ns, finish.mtime_ns) for c in later):
        return None
    if survey.sha256 is not None:
        return survey
    # The tail has been sent since: the sender threads' sha256 is the file's, unless a
    # chunk was fed to it twice (sent again after a failed commit).
    whole = sent.state(finish.size) if sent else None
    return replace(survey, sha256=whole.hexdigest()) if whole else None


@dataclass(frozen=True)
class Finished:
    """A finisher thread's report: the stream's bytes are reconciled, and assembled, in S3."""

    finish: Finish
    sha256: str
    revised: list[tuple[ChunkRecord, bytes | None]]  # uploaded again; the head with chunk 0
    drop_from: int | None  # the first chunk past the file's end, if it shrank
    facts: mp4.Mp4Facts
    assembled: Assembled | None


class Phase(enum.Enum):
    """A stream's life in the uploader that owns it (the supervisor's side of it is
    supervisor.Phase). Every change goes through Job.move_to, along _PHASE_MOVES.

    STREAMING   it sends chunks as its file grows
    FINISHING   the supervisor found its file idle: a finisher thread checks, reconciles
                and assembles it; back to STREAMING if the file changes meanwhile
    ABANDONING  its file is gone, or an operator cancelled it: once the chunks on the wire
                have landed, what S3 has is the stream
    CONCLUDED   metadata.json is written and the checkpoint says finished; the job goes
    """

    STREAMING = "streaming"
    FINISHING = "finishing"
    ABANDONING = "abandoning"
    CONCLUDED = "concluded"


_PHASE_MOVES = {
    Phase.STREAMING: {Phase.FINISHING, Phase.ABANDONING},
    Phase.FINISHING: {Phase.STREAMING, Phase.ABANDONING, Phase.CONCLUDED},
    Phase.ABANDONING: {Phase.CONCLUDED},
    Phase.CONCLUDED: set(),
}


@dataclass
class Job:
    """One owned stream, as this uploader sees it."""

    record: StreamRecord
    phase: Phase = Phase.STREAMING
    finish: Finish | None = None  # the idle size and mtime it is finishing at
    waiting: bool = False  # nothing to do until the file changes or a chunk comes back
    # Chunks below this index may be in S3 already, uncommitted (sent before a restart, or
    # before a failed commit): look before sending them.
    probe_below: int = 0
    in_flight: dict[int, Future] = field(default_factory=dict)  # by chunk index
    # Chunks S3 confirmed, waiting for the chunks before them to be committed first.
    arrived: dict[int, Sent] = field(default_factory=dict)
    # The sha256 of what this process sent, from the first byte; None for a resumed
    # stream, whose earlier chunks finalisation reads again.
    sent_hash: PrefixHash | None = None
    # Why it is abandoning, and as what (file gone, or cancelled).
    abandon: tuple[str, StreamState] | None = None
    finishing: Future | None = None  # its completion, under way in a finisher thread
    # The file compared with its chunks once it had been quiet a while (in a finisher
    # thread), ahead of completion: used then if the file has not changed since.
    surveying: Future | None = None
    quiet: Survey | None = None
    survey_at: float | None = None  # when the file will have been quiet long enough
    # Committed chunks not copied into the assembly upload yet, oldest first, and the
    # copier's work on them (or on beginning the upload), if under way.
    uncopied: collections.deque[ChunkRecord] = field(default_factory=collections.deque)
    copying: Future | None = None
    copy_backoff: Backoff = field(default_factory=Backoff)
    shrank: bool = False
    backoff: Backoff = field(default_factory=Backoff)  # its steps: chunks, completion
    log_fields: dict = field(default_factory=dict)

    def wake(self) -> None:
        self.waiting = False

    def move_to(self, phase: Phase) -> None:
        assert phase in _PHASE_MOVES[self.phase], (
            f"{self.record.stream_id}: {self.phase} -> {phase}"
        )
        self.phase = phase


def main(
    worker_id: int,
    config: Config,
    commands: Mailbox,
    events: Mailbox,
    parent_pid: int,
    inherited_fds: list[int],
    bandwidth: TokenBucket | None,
) -> None:
    """Entry point in the forked child; its exit code tells the supervisor how it ended."""
    uploader = Uploader(worker_id, config, commands, events, parent_pid, inherited_fds, bandwidth)
    raise SystemExit(uploader.run())


class Uploader:
    def __init__(
        self,
        worker_id: int,
        config: Config,
        commands: Mailbox,
        events: Mailbox,
        parent_pid: int,
        inherited_fds: list[int],
        bandwidth: TokenBucket | None = None,
        clock=time.monotonic,
    ):
        self.worker_id = worker_id
        self.config = config
        self.commands = commands
        self.events = events
        self.inherited_fds = inherited_fds
        self.bandwidth = bandwidth
        self.clock = clock
        self.parent_pid = parent_pid
        self.jobs: dict[str, Job] = {}
        self.stopping = False
        self.bucket_ready = False
        self.bucket_backoff = Backoff()
        self.s3_reachable: bool | None = None
        self.log = logs.EventLog(f"uploader.{worker_id}")

    def run(self) -> int:
        try:
            self.init_process()
        except CheckpointError as exc:
            self.log.error("uploader_boot_failed", error=str(exc))
            return EXIT_BOOT_ERROR
        self.log.info("uploader_started", worker=self.worker_id)
        while not self.stopping:
            self.loop(self.clock())
        self.settle()
        self.store.close()
        self.log.info("uploader_stopped", worker=self.worker_id)
        return EXIT_OK

    def init_process(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        # Die with the supervisor: an orphan would keep uploading streams it no longer owns.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # Chunk buffers are large. glibc would raise its mmap threshold after the first one
        # is freed and then keep freed buffers in each thread's arena; with a fixed
        # threshold each is mapped on its own, and one the pool lets go of (an idle
        # uploader) goes back to the system.
        libc.mallopt(M_MMAP_THRESHOLD, MiB)
        if os.getppid() != self.parent_pid:
            os._exit(EXIT_OK)
        signal.set_wakeup_fd(-1)  # the supervisor's wakeup pipe, closed just below
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the supervisor's
        signal.signal(signal.SIGTERM, self.handle_term)
        # A lease taken before a deletion (streamer.retention) is broken by SIGIO, whose
        # default is to terminate: the lease is let go at once anyway.
        signal.signal(signal.SIGIO, signal.SIG_IGN)
        # The supervisor blocked these around the fork, so none reached its handlers here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED_SIGNALS)
        for fd in self.inherited_fds:
            os.close(fd)
        logs.configure(self.config.log.level, self.config.log.format)
        self.store = CheckpointStore(self.config.checkpoint.path, self.config.checkpoint.map_size)
        self.window = self.config.stream.upload_window
        # After half the idle timeout, and after policy.SETTLED_NS: what is read then is
        # known to be the file's bytes if its mtime has not moved by completion.
        self.quiet_after = max(self.config.stream.idle_timeout / 2, 1.5 * SETTLED_NS / 1e9)
        self.s3 = ChunkStore(
            self.config.s3, self.config.instance, 2 * self.window + 2, self.bandwidth
        )
        self.senders = ThreadPoolExecutor(self.window, thread_name_prefix="sender")
        self.buffers = BufferPool()
        # Completions (reading the file again, assembling in S3) take their own threads:
        # they would otherwise hold the senders live streams need, and wait for the part
        # copies they hand to the senders.
        self.finishers = ThreadPoolExecutor(self.window, thread_name_prefix="finisher")
        # One thread: part copies are S3's work, and run behind the uploads, not beside them.
        self.copier = ThreadPoolExecutor(1, thread_name_prefix="copier")
        # Sender threads name the stream here when a chunk comes back, and write a byte to
        # the pipe to wake the main loop.
        self.returned: collections.deque[str] = collections.deque()
        # Retire commands being carried out by sender threads: (record, reason, future).
        self.retirements: dict[str, tuple[StreamRecord, str, Future]] = {}
        self.busy: set[str] = set()  # streams with chunks outstanding
        self.starved: set[str] = set()  # streams waiting for room in the window
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def handle_term(self, signum, frame) -> None:
        self.stopping = True

    def loop(self, now: float) -> None:
        if not self.bucket_ready and now >= self.bucket_backoff.due:
            self.check_bucket(now)
        self.collect(now)
        self.collect_retirements()
        job = self.next_job(now) if self.bucket_ready else None
        if job is None and not self.outstanding():
            self.buffers.release()  # nothing on the wire: an idle uploader holds no chunk
        self.handle_commands(timeout=0 if job else self.wait_time(now))
        if job and not self.stopping and job.record.stream_id in self.jobs:
            self.work_on(job, now)

    def check_bucket(self, now: float) -> None:
        """S3 is asked first thing, so /readyz tells whether S3 works before any file comes."""
        try:
            self.s3.ensure_bucket(self.config.s3.create_bucket)
        except Exception as exc:
            self.fail(self.bucket_backoff, exc, now, BUCKET_EVENTS)
            return
        self.bucket_ready = True
        self.s3_state(True)

    def s3_state(self, reachable: bool, exc: Exception | None = None) -> None:
        if reachable != self.s3_reachable:
            self.s3_reachable = reachable
            metrics.S3_REACHABLE.set(1 if reachable else 0)
            self.events.put(S3State(reachable=reachable, error=describe(exc) if exc else ""))

    # Commands

    def handle_commands(self, timeout: float) -> None:
        ready, _, _ = select.select([self.commands.fileno(), self.wake_r], [], [], timeout)
        if self.wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 4096)
        message = self.commands.get(0)
        while message is not None:
            self.handle(message)
            message = self.commands.get(0)

    def handle(self, message) -> None:
        match message:
            case Assign(stream_id=stream_id):
                self.adopt(stream_id)
            case Grow(stream_id=stream_id) if stream_id in self.jobs:
                self.jobs[stream_id].wake()
            case Finish(stream_id=stream_id) if stream_id in self.jobs:
                job = self.jobs[stream_id]
                job.finish = message
                job.move_to(Phase.FINISHING)
                job.wake()
            case Moved(stream_id=stream_id) if stream_id in self.jobs:
                job = self.jobs[stream_id]
                job.record = self.store.get_stream(stream_id)
                job.backoff.retry_now()
                job.wake()
            case Abandon(stream_id=stream_id, reason=reason, status=status) if (
                stream_id in self.jobs
            ):
                job = self.jobs[stream_id]
                job.abandon = (reason, StreamState(status))
                job.move_to(Phase.ABANDONING)
                job.backoff.retry_now()
                job.wake()
            case Retire(stream_id=stream_id, reason=reason):
                self.retire(stream_id, reason)
            case Stop():
                self.stopping = True

    def adopt(self, stream_id: str) -> None:
        record = self.store.get_stream(stream_id)
        job = Job(
            record=record,
            probe_below=record.chunk_count + self.window,
            sent_hash=PrefixHash(self.buffers) if record.chunk_count == 0 else None,
            log_fields={"stream_id": stream_id},
        )
        if record.chunk_count:
            job.uncopied.extend(self.not_copied(record))
        self.jobs[stream_id] = job
        self.log.info("stream_adopted", stream_id=stream_id, position=str(record.position))

    # Scheduling

    def next_job(self, now: float) -> Job | None:
        """The first runnable job; it then goes to the back, so streams take turns."""
        for stream_id, job in self.jobs.items():
            if job.survey_at is not None and job.survey_at <= now:
                job.survey_at = None
                job.wake()
            if not job.waiting and job.backoff.due <= now:
                self.jobs[stream_id] = self.jobs.pop(stream_id)
                return job
        return None

    def wait_time(self, now: float) -> float:
        if not self.bucket_ready:
            return max(0.0, min(IDLE_WAIT, self.bucket_backoff.due - now))
        retries = [j.backoff.due - now for j in self.jobs.values() if not j.waiting]
        surveys = [j.survey_at - now for j in self.jobs.values() if j.survey_at is not None]
        return max(0.0, min([IDLE_WAIT, *retries, *surveys]))

    def work_on(self, job: Job, now: float) -> None:
        try:
            self.step(job)
        except Exception as exc:
            self.retry_later(job, exc, now)

    def retry_later(self, job: Job, exc: Exception, now: float) -> None:
        """A step of the stream failed: it waits, the others go on."""
        self.fail(job.backoff, exc, now, STEP_EVENTS, **job.log_fields)

    def fail(
        self, backoff: Backoff, exc: Exception, now: float, events: dict[str, str], **fields
    ) -> None:
        """The one way a failed step is retried, wherever it failed: classified, counted,
        logged (`events` names the line for each kind) and scheduled again."""
        kind = classify(exc)
        s3 = self.config.s3
        delay = backoff.failed(kind, now, s3.retry_base, s3.retry_cap)
        metrics.UPLOAD_ERRORS.labels(kind=kind).inc()
        metrics.UPLOAD_RETRIES.inc()
        if isinstance(exc, S3_TROUBLE):
            self.s3_state(False, exc)
        fields |= {"error": describe(exc), "attempt": backoff.attempt, "delay": round(delay, 3)}
        if kind == "transient":
            self.log.warning(events[kind], **fields, **hint(exc, False))
        elif kind == "rejected":
            self.log.error(events[kind], **fields, **hint(exc, True))
        else:
            # A bug, or a file we cannot handle: it waits, the rest goes on.
            trace = "".join(traceback.format_exception(exc, limit=5))
            self.log.error(events[kind], **fields, traceback=trace)

    def step(self, job: Job) -> None:
        if job.finishing is not None:
            job.waiting = True  # woken when the finisher thread reports
            return
        if job.phase is Phase.ABANDONING:
            if job.in_flight or job.copying is not None:
                job.waiting = True  # what is on the wire lands first
                return
            self.abandon(job, *job.abandon)
            return
        record = job.record
        size = size_of(record)
        if size < record.committed_bytes and not job.shrank:
            if Watcher.head_changed(record.path, record.head):
                # Not this recording any more: the supervisor ends it and starts a new one.
                self.events.put(SourceRewritten(stream_id=record.stream_id))
                job.waiting = True
                return
            # A file truncated to write another recording over it is too short to tell at
            # first: it is looked at again until its first bytes can be compared.
            job.shrank = size >= len(record.head or b"")
            if job.shrank:
                self.log.warning(
                    "stream_shrank",
                    **job.log_fields,
                    size=size,
                    committed_bytes=record.committed_bytes,
                )
        held = job.in_flight.keys() | job.arrived.keys()
        room = self.window - self.outstanding()
        match next_step(
            record.chunk_count,
            record.committed_bytes,
            record.chunk_size,
            size,
            finishing=job.phase is Phase.FINISHING,
            in_flight=held,
            window=max(1, min(self.window, len(held) + room)),
        ):
            case UploadChunk() if room <= 0 and not held:
                job.waiting = True  # other streams fill the window: woken when one returns
                self.starved.add(record.stream_id)
            case UploadChunk() as chunk:
                self.send(job, chunk)
            case Pending() if room <= 0:
                # Woken when any chunk of this uploader returns, not only its own: a
                # stream does not keep the slots it holds while others wait.
                job.waiting = True
                self.starved.add(record.stream_id)
            case Finalise() if job.copying is not None or job.surveying is not None:
                job.waiting = True  # the part being copied, the survey, are taken first
            case Finalise():
                self.start_finishing(job)
            case Wait():
                job.waiting = True
                self.plan_survey(job)
            case Pending():
                job.waiting = True

    # Chunks

    def send(self, job: Job, chunk: UploadChunk) -> None:
        record = job.record
        probe = chunk.index < job.probe_below
        future = self.senders.submit(
            self.transfer, record, chunk, record.min_revision, probe, job.sent_hash
        )
        job.in_flight[chunk.index] = future
        self.busy.add(record.stream_id)
        future.add_done_callback(functools.partial(self.came_back, record.stream_id))

    def transfer(
        self,
        record: StreamRecord,
        chunk: UploadChunk,
        revision: int,
        probe: bool,
        sent_hash: PrefixHash | None,
    ) -> Sent:
        """In a sender thread: read the chunk once, hash it, and put it in S3 unless S3
        holds exactly these bytes already (`probe`: after a crash, an upload may have
        finished that no checkpoint recorded). Touches neither the checkpoint nor the
        jobs."""
        read_at_ns = time.time_ns()
        buffer = self.buffers.take(chunk.size)
        data = memoryview(buffer)[: chunk.size]
        try:
            mtime_ns = read_into(record, chunk.offset, data)
            sha256 = hashlib.sha256(data).hexdigest()
            head = bytes(data[:HEAD_SIZE]) if chunk.index == 0 else None
            revision, etag, seconds = self.place_chunk(
                record.stream_id, chunk.index, revision, data, sha256, probe
            )
        except BaseException:
            self.buffers.give(buffer)
            raise
        if sent_hash is None:
            self.buffers.give(buffer)
        else:
            sent_hash.feed(chunk.offset, data, buffer)  # S3 holds these bytes, sent or found
        return Sent(chunk, revision, sha256, etag, head, seconds, read_at_ns, mtime_ns)

    def outstanding(self) -> int:
        """Chunks this uploader has on the wire or waiting for their turn to be committed.
        The window is shared by all its streams, so the chunk buffers it holds stay at
        `window`, however many streams it owns."""
        total = 0
        for stream_id in list(self.busy):
            job = self.jobs.get(stream_id)
            held = len(job.in_flight) + len(job.arrived) if job else 0
            if not held:
                self.busy.discard(stream_id)
            total += held
        return total

    def wake_starved(self) -> None:
        for stream_id in self.starved:
            if stream_id in self.jobs:
                self.jobs[stream_id].wake()
        self.starved.clear()

    def came_back(self, stream_id: str, future: Future) -> None:
        """From a sender or finisher thread: a chunk or a completion of this stream is
        done."""
        self.returned.append(stream_id)
        self.wake(future)

    def wake(self, future: Future) -> None:
        """From a sender thread: wake the main loop."""
        with contextlib.suppress(BlockingIOError):  # full: the loop wakes anyway
            os.write(self.wake_w, b"\0")

    def collect(self, now: float) -> None:
        """Take back what the threads finished, stream by stream. Whatever goes wrong in
        handling one stream's results (S3 refusing its metadata.json, say) parks that
        stream with a backoff, as a failed step does: it never ends the process."""
        while self.returned:
            job = self.jobs.get(self.returned.popleft())
            if job is None:
                continue
            try:
                self.take_back(job, now)
            except Exception as exc:
                self.retry_later(job, exc, now)
        self.copy_ahead(now)

    def take_back(self, job: Job, now: float) -> None:
        """A stream's part copies, survey, completion and chunks that came back. Chunks are
        committed strictly in index order; a failed one is sent again after its backoff,
        and those after it wait for it."""
        if job.copying is not None and job.copying.done():
            self.copied(job, now)
        if job.surveying is not None and job.surveying.done():
            self.surveyed(job)
        if job.finishing is not None and job.finishing.done():
            self.finished(job, now)
            return
        done = sorted(i for i, future in job.in_flight.items() if future.done())
        if not done:
            return
        job.wake()
        self.wake_starved()
        errors = []
        for index in done:
            future = job.in_flight.pop(index)
            if future.exception() is None:
                job.arrived[index] = future.result()
            else:
                errors.append(future.exception())
        if errors:
            self.retry_later(job, errors[0], now)
        self.land_in_order(job, now)

    def land_in_order(self, job: Job, now: float) -> None:
        while (sent := job.arrived.pop(job.record.chunk_count, None)) is not None:
            try:
                self.land(job, sent)
            except Exception as exc:
                # In S3 but not committed: look there before sending it again.
                job.probe_below = max(job.probe_below, sent.chunk.index + 1)
                self.retry_later(job, exc, now)
                return

    def land(self, job: Job, sent: Sent) -> None:
        record, chunk = job.record, sent.chunk
        self.s3_state(True)
        self.events.put(ChunkUploaded(stream_id=record.stream_id, end=chunk.offset + chunk.size))
        committed = sent.record()
        self.commit(job, committed, sent.head)
        if copies_ahead(self.config.stream.assemble, record.chunk_size, chunk.index, chunk.size):
            job.uncopied.append(committed)
        job.backoff.succeeded()
        fields = {
            **job.log_fields,
            "index": chunk.index,
            "offset": chunk.offset,
            "size": chunk.size,
        }
        if sent.seconds is None:
            self.log.info("chunk_found_in_s3", **fields)
            return
        metrics.CHUNK_UPLOAD_SECONDS.observe(sent.seconds)
        metrics.CHUNKS_UPLOADED.inc()
        metrics.BYTES_UPLOADED.inc(chunk.size)
        self.log.info("chunk_uploaded", **fields, seconds=round(sent.seconds, 3))

    def settle(self) -> None:
        """On stop: chunks, completions and deletions not yet started are dropped; those
        under way finish and are recorded (the supervisor's grace period bounds the
        wait)."""
        for job in self.jobs.values():
            for index, future in list(job.in_flight.items()):
                if future.cancel():
                    del job.in_flight[index]
        for stream_id, (_, _, future) in list(self.retirements.items()):
            if future.cancel():
                del self.retirements[stream_id]
        for job in self.jobs.values():
            if job.finishing is not None and job.finishing.cancel():
                job.finishing = None
            if job.copying is not None and job.copying.cancel():
                job.copying = None
            if job.surveying is not None and job.surveying.cancel():
                job.surveying = None
        wait_for_all(
            [f for job in self.jobs.values() for f in job.in_flight.values()]
            + [job.finishing for job in self.jobs.values() if job.finishing is not None]
            + [job.copying for job in self.jobs.values() if job.copying is not None]
            + [job.surveying for job in self.jobs.values() if job.surveying is not None]
            + [future for _, _, future in self.retirements.values()]
        )
        self.collect(self.clock())
        self.collect_retirements()
        self.senders.shutdown(wait=False)
        self.finishers.shutdown(wait=False)
        self.copier.shutdown(wait=False)

    def place_chunk(
        self, stream_id: str, index: int, revision: int, data, sha256: str, probe: bool
    ) -> tuple[int, str, float | None]:
        """Put a chunk's bytes under the first revision key, from `revision` on, that is
        free or already holds exactly these bytes; `probe` says one may be taken. An
        object once written is never overwritten: bytes an unrecorded upload left there
        that the file no longer has stay, and these go to the next revision. Returns the
        revision, the ETag, and the seconds the PUT took (None: found in S3)."""
        while True:
            key = self.s3.layout.chunk_key(stream_id, index, revision)
            stored = self.s3.stat(key) if probe else None
            if stored is None:
                started = time.perf_counter()
                etag = self.s3.put(key, data, sha256, "application/octet-stream")
                return revision, etag, time.perf_counter() - started
            if stored.size == len(data) and stored.sha256 == sha256:
                return revision, stored.etag, None
            revision += 1

    def commit(self, job: Job, chunk: ChunkRecord, head: bytes | None) -> None:
        with metrics.CHECKPOINT_COMMIT_SECONDS.time():
            job.record = self.store.commit_chunk(job.record.stream_id, chunk, head)
        self.events.put(
            ChunkCommitted(
                stream_id=job.record.stream_id, committed_bytes=job.record.committed_bytes
            )
        )

    # Survey while quiet

    def plan_survey(self, job: Job) -> None:
        """A stream with nothing to send but its tail, whose file has been quiet for half
        the idle timeout, is most likely done: compare its file with its chunks now, so
        that completion need not (on a long recording, most of its time)."""
        if job.surveying is not None or (job.survey_at or 0) > self.clock():
            return  # under way, or planned (or tried and failed) not long ago
        st = os.stat(job.record.path)
        planned = (st.st_size, st.st_mtime_ns)
        if job.quiet and (job.quiet.size, job.quiet.mtime_ns) == planned:
            return
        wait = self.quiet_after - (time.time_ns() - st.st_mtime_ns) / 1e9
        if wait > 0:
            job.survey_at = self.clock() + wait
            return
        record = job.record
        # Nothing is on the wire (a Wait): the checkpoint lists every chunk sent so far.
        job.surveying = self.finishers.submit(
            self.survey_quietly, record, self.store.chunks(record.stream_id), job.sent_hash, planned
        )
        job.surveying.add_done_callback(functools.partial(self.came_back, record.stream_id))

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
        quiet = self.survey(record, chunks, *planned, sent_hash, ahead=True)
        st = os.stat(record.path)
        return quiet if (st.st_size, st.st_mtime_ns) == planned else None

    def surveyed(self, job: Job) -> None:
        future, job.surveying = job.surveying, None
        job.wake()
        try:
            job.quiet = future.result()
        except Exception as exc:
            job.quiet = None
            job.survey_at = self.clock() + self.quiet_after  # not at once again
            self.log.warning("survey_failed", **job.log_fields, error=describe(exc))
            return
        if job.quiet is not None:
            self.log_survey(job.quiet, while_quiet=True, log_fields=job.log_fields)

    def log_survey(self, survey: Survey, while_quiet: bool, log_fields: dict) -> None:
        self.log.info(
            "stream_surveyed",
            **log_fields,
            size=survey.size,
            stale_chunks=[index for index, _ in survey.stale],
            while_quiet=while_quiet,
        )

    # Assembly while live

    def copy_ahead(self, now: float) -> None:
        """Give the copier thread its next work: a few committed chunks of one stream to
        copy into its assembly upload (or the upload to begin). Only while this uploader
        has no chunk on the wire, and one batch at a time: a copy is S3's work, and would
        slow the uploads down if it ran beside them."""
        if self.stopping or self.outstanding():
            return
        if any(job.copying is not None for job in self.jobs.values()):
            return
        job = next((j for j in self.jobs.values() if self.copyable(j, now)), None)
        if job is None:
            return
        record, upload = job.record, job.record.assembly
        if upload is None:
            job.copying = self.copier.submit(self.begin_assembly, record)
        else:
            batch = list(itertools.islice(job.uncopied, COPY_BATCH))
            job.copying = self.copier.submit(self.copy_parts, record.stream_id, upload, batch)
        job.copying.add_done_callback(functools.partial(self.came_back, record.stream_id))

    def copyable(self, job: Job, now: float) -> bool:
        if not job.uncopied or job.copy_backoff.due > now:
            return False
        if job.phase is not Phase.STREAMING:
            return False  # completion copies what is left, several at a time
        upload = job.record.assembly
        # Renamed since the upload began: completion assembles afresh, under the new name.
        return upload is None or upload.key == self.assembled_key(job.record)

    def begin_assembly(self, record: StreamRecord) -> AssemblyUpload:
        """In the copier thread. The content type is judged from the file's first bytes;
        should the finished file say otherwise, completion assembles afresh."""
        key = self.assembled_key(record)
        content_type = _content_type(mp4.inspect_bytes(record.head or b"").is_mp4)
        upload_id = self.s3.begin_upload(key, content_type)
        return AssemblyUpload(key=key, upload_id=upload_id, content_type=content_type)

    def copy_parts(
        self, stream_id: str, upload: AssemblyUpload, chunks: list[ChunkRecord]
    ) -> Copied:
        """In the copier thread: chunk N becomes part N + 1."""
        parts: list[tuple[ChunkRecord, str]] = []
        try:
            for chunk in chunks:
                source = self.part_source(stream_id, chunk, None)
                etag = self.s3.copy_part(upload.key, upload.upload_id, chunk.index + 1, source)
                parts.append((chunk, etag))
        except Exception as exc:
            return Copied(upload, parts, exc)
        return Copied(upload, parts, None)

    def copied(self, job: Job, now: float) -> None:
        """Record what the copier thread reports."""
        future, job.copying = job.copying, None
        job.wake()
        stream_id = job.record.stream_id
        try:
            report = future.result()
        except Exception as exc:
            self.copy_failed(job, "assembly_begin_failed", exc, now)
            return
        if isinstance(report, AssemblyUpload):
            job.record = self.store.update_stream(
                stream_id, lambda r: msgspec.structs.replace(r, assembly=report)
            )
            self.log.info("assembly_begun", **job.log_fields, key=report.key)
            return
        self.store.record_parts(stream_id, report.upload.upload_id, report.parts)
        for _ in report.parts:
            job.uncopied.popleft()
        metrics.PARTS_COPIED.labels(when="live").inc(len(report.parts))
        if isinstance(report.error, UploadGone):
            self.lost_assembly(job, report.error, now)
        elif report.error is not None:
            self.copy_failed(job, "part_copy_failed", report.error, now)
        else:
            job.copy_backoff.succeeded()

    def copy_failed(self, job: Job, event: str, exc: Exception, now: float) -> None:
        events = {"transient": event, "rejected": event, "failed": STEP_EVENTS["failed"]}
        self.fail(job.copy_backoff, exc, now, events, **job.log_fields)

    def lost_assembly(self, job: Job, error: UploadGone, now: float) -> None:
        """S3 aborted the upload (MinIO expires one after a day by default): begin another,
        and copy every chunk into it."""
        self.copy_failed(job, "assembly_upload_lost", error, now)
        job.record = self.store.update_stream(
            job.record.stream_id, lambda r: msgspec.structs.replace(r, assembly=None)
        )
        job.uncopied = collections.deque(self.not_copied(job.record))

    def not_copied(self, record: StreamRecord) -> list[ChunkRecord]:
        """The committed chunks, of those copied ahead, not in the stream's upload yet."""
        upload_id = record.assembly.upload_id if record.assembly else None
        return [
            c
            for c in self.store.chunks(record.stream_id)
            if copies_ahead(self.config.stream.assemble, record.chunk_size, c.index, c.size)
            and c.part_in(upload_id) is None
        ]

    def part_source(self, stream_id: str, chunk: ChunkRecord, upload_id: str | None) -> PartSource:
        key = self.s3.layout.chunk_key(stream_id, chunk.index, chunk.revision)
        return PartSource(key, chunk.size, chunk.etag, chunk.part_in(upload_id))

    def assembled_key(self, record: StreamRecord) -> str:
        return self.s3.layout.assembled_key(record.stream_id, naming.object_name(record.name))

    # Completion

    def start_finishing(self, job: Job) -> None:
        """Hand the stream's completion to a finisher thread; `finished` records its
        report. Streams falling idle together on one uploader so finish side by side."""
        record = job.record
        job.finishing = self.finishers.submit(
            self.finish_stream,
            record,
            self.store.chunks(record.stream_id),
            job.finish,
            job.sent_hash,
            job.quiet,
            job.log_fields,
        )
        job.finishing.add_done_callback(functools.partial(self.came_back, record.stream_id))
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
        _check_still_idle(record.path, finish)
        quiet = still_holds(quiet, finish, chunks, sent_hash)
        if quiet is None:
            quiet = self.survey(record, chunks, finish.size, finish.mtime_ns, sent_hash)
            self.log_survey(quiet, while_quiet=False, log_fields=log_fields)
        revised = self.reconcile(record, chunks, quiet, log_fields)
        sha256, drop_from = quiet.sha256, quiet.drop_from
        facts = mp4.inspect_file(record.path)
        _check_still_idle(record.path, finish)
        by_index = {c.index: c for c in chunks[:drop_from]} | {c.index: c for c, _ in revised}
        final = [by_index[i] for i in sorted(by_index)]
        if why := retention.chunks_discrepancy(record.stream_id, final, finish.size, self.s3):
            raise NotInS3(why)
        assembled = None
        if self.config.stream.assemble:
            content_type = _content_type(facts.is_mp4)
            assembled = self.assemble(record, final, finish, sha256, content_type, log_fields)
            _check_still_idle(record.path, finish)
        return Finished(finish, sha256, revised, drop_from, facts, assembled)

    def finished(self, job: Job, now: float) -> None:
        """Record what a finisher thread reports: the chunks it uploaded again, then the
        stream's completion. A file that changed meanwhile goes on streaming."""
        future, job.finishing = job.finishing, None
        job.wake()
        if job.phase is Phase.ABANDONING:
            return  # the file went away, or an operator cancelled it: abandoned instead
        try:
            report = future.result()
        except FinishCalledOff as exc:
            job.finish = None
            job.move_to(Phase.STREAMING)
            self.events.put(FinishDeclined(stream_id=job.record.stream_id))
            self.log.info("finish_declined", **job.log_fields, size=exc.size)
            return
        except Exception as exc:
            self.retry_later(job, exc, now)
            return
        stream_id = job.record.stream_id
        if report.drop_from is not None:
            job.record = self.store.drop_chunks_from(stream_id, report.drop_from)
        for chunk, head in report.revised:
            self.commit(job, chunk, head)
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

    def abandon(self, job: Job, reason: str, state: StreamState) -> None:
        """The file is gone, or an operator cancelled the stream: what S3 has is what the
        stream is."""
        self.log.warning(
            "stream_abandoned",
            **job.log_fields,
            reason=reason,
            uploaded_bytes=job.record.committed_bytes,
        )
        if job.record.assembly is not None:
            self.copier.submit(self.drop_assembly, job.record.assembly, job.log_fields)
        self.conclude(
            job,
            state=state,
            status_reason=reason,
            total_size=job.record.committed_bytes,
        )

    def conclude(self, job: Job, **completion) -> None:
        completion["completed_at"] = _utcnow()
        completion["assembly"] = None  # completed, or aborted
        stream_id = job.record.stream_id
        done = msgspec.structs.replace(job.record, **completion)
        chunks = self.store.chunks(stream_id)
        # The manifest goes first: a finished stream always has its metadata.json.
        self.put_manifest(done, chunks)
        self.store.update_stream(stream_id, lambda r: msgspec.structs.replace(r, **completion))
        job.move_to(Phase.CONCLUDED)
        del self.jobs[stream_id]
        self.wake_starved()
        metrics.STREAMS_FINISHED.labels(status=done.state.value).inc()
        self.events.put(
            StreamFinished(
                stream_id=stream_id,
                status=done.state.value,
                size=done.total_size if done.mtime_ns is not None else -1,
                mtime_ns=done.mtime_ns if done.mtime_ns is not None else -1,
            )
        )
        self.log.info(
            "stream_finished",
            **job.log_fields,
            status=done.state.value,
            reason=done.status_reason,
            size=done.total_size,
            chunks=len(chunks),
            reuploaded_chunks=done.reuploaded_chunks,
            sha256=done.sha256,
        )

    def drop_assembly(self, upload: AssemblyUpload, log_fields: dict) -> None:
        """In the copier thread: an abandoned stream is not assembled. If S3 is away, the
        server's own expiry of stale uploads (or a lifecycle rule) removes it."""
        try:
            self.s3.abort_upload(upload.key, upload.upload_id)
        except Exception as exc:
            self.log.warning("assembly_abort_failed", **log_fields, error=describe(exc))

    def put_manifest(self, record: StreamRecord, chunks: list[ChunkRecord]) -> None:
        body = manifest.encode(manifest.build(record, chunks, self.s3.layout))
        self.s3.put(
            self.s3.layout.manifest_key(record.stream_id),
            body,
            hashlib.sha256(body).hexdigest(),
            "application/json",
        )

    @contextlib.contextmanager
    def reading(self, record: StreamRecord, offset: int, size: int) -> Iterator[memoryview]:
        """`size` bytes of the file from `offset`, in a buffer of the pool that is this
        caller's until the block ends."""
        buffer = self.buffers.take(size)
        try:
            data = memoryview(buffer)[:size]
            read_into(record, offset, data)
            yield data
        finally:
            self.buffers.give(buffer)

    def sha256_of(self, record: StreamRecord, size: int) -> str:
        whole = hashlib.sha256()
        for offset in range(0, size, record.chunk_size):
            with self.reading(record, offset, min(record.chunk_size, size - offset)) as data:
                whole.update(data)
        return whole.hexdigest()

    def survey(
        self,
        record: StreamRecord,
        chunks: list[ChunkRecord],
        size: int,
        mtime_ns: int,
        sent_hash: PrefixHash | None,
        ahead: bool = False,
    ) -> Survey:
        """Compare the uploaded chunks with the file, of `size` bytes last written at
        `mtime_ns`. Chunks read after that write are known to hold its bytes (not read
        again); the file's sha256 is taken on from what the sender threads hashed, if the
        file still holds what they sent: one pass over the file instead of two. `ahead`:
        the tail is still to be sent."""
        covered = sum(c.size for c in chunks)
        prefix = sent_hash.state(covered) if sent_hash and covered <= size else None
        whole = None if prefix else hashlib.sha256()
        stale, drop_from = [], None
        for chunk in chunks:
            if chunk.offset >= size:
                drop_from = chunk.index
                break
            length = min(chunk.size, size - chunk.offset)
            known = settled(chunk.read_at_ns, chunk.read_mtime_ns, mtime_ns)
            if known and length == chunk.size and whole is None:
                continue
            with self.reading(record, chunk.offset, length) as data:
                if whole is not None:
                    whole.update(data)
                if length != chunk.size:
                    stale.append((chunk.index, "file shrank"))
                elif not known and hashlib.sha256(data).hexdigest() != chunk.sha256:
                    stale.append((chunk.index, "bytes changed after upload"))
        if whole is None and stale:
            sha256 = self.sha256_of(record, size)  # what was sent is no longer the file
        elif whole is None and ahead:
            sha256 = None
        else:
            whole = prefix if whole is None else whole
            if covered < size:  # the tail, not uploaded yet
                with self.reading(record, covered, size - covered) as data:
                    whole.update(data)
            sha256 = whole.hexdigest()
        return Survey(size, mtime_ns, sha256, stale, drop_from, checked=len(chunks))

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
            with self.reading(record, chunk.offset, length) as data:
                sha256 = hashlib.sha256(data).hexdigest()
                revised.append(self.reupload(record, chunk, data, sha256, reason, log_fields))
        if survey.drop_from is not None:
            self.log.warning(
                "chunks_dropped", **log_fields, from_index=survey.drop_from, reason="file shrank"
            )
        return revised

    def reupload(
        self,
        record: StreamRecord,
        old: ChunkRecord,
        data: memoryview,
        sha256: str,
        reason: str,
        log_fields: dict,
    ) -> tuple[ChunkRecord, bytes | None]:
        # A crash after an earlier re-upload's PUT may have left its bytes at that key.
        first = max(old.revision + 1, record.min_revision)
        revision, etag, seconds = self.place_chunk(
            record.stream_id, old.index, first, data, sha256, probe=True
        )
        if seconds is not None:
            metrics.BYTES_UPLOADED.inc(len(data))
        self.log.info(
            "chunk_reuploaded",
            **log_fields,
            index=old.index,
            offset=old.offset,
            size=len(data),
            revision=revision,
            reason=reason,
        )
        head = bytes(data[:HEAD_SIZE]) if old.index == 0 else None
        chunk = UploadChunk(old.index, old.offset, len(data))
        sent = Sent(chunk, revision, sha256, etag, head, seconds, None, None)
        return sent.record(reason), head

    def assemble(
        self,
        record: StreamRecord,
        chunks: list[ChunkRecord],
        finish: Finish,
        sha256: str,
        content_type: str,
        log_fields: dict,
    ) -> Assembled:
        """The whole recording as one object: joined in S3 from the chunks where S3 allows
        (finishing the upload the chunks were copied into while live), else streamed from
        the file (checked against the sha256 just computed)."""
        key = self.assembled_key(record)
        method = assembly_method([c.size for c in chunks])
        upload = upload_to_finish(record.assembly, key, content_type, method)
        if record.assembly is not None and upload is None:
            self.s3.abort_upload(record.assembly.key, record.assembly.upload_id)
        if method == "compose":
            etag, ahead = self.compose(record, chunks, key, content_type, upload, log_fields)
        else:
            ahead = 0
            with open(record.path, "rb") as f:
                reader = HashingReader(f)
                etag = self.s3.put_stream(key, reader, finish.size, content_type)
            if reader.hexdigest() != sha256:
                raise SourceChanged(f"{record.path} changed while it was being assembled")
        self.abort_strays(key, log_fields)
        self.log.info(
            "stream_assembled",
            **log_fields,
            key=key,
            method=method,
            size=finish.size,
            parts_copied_live=ahead,
        )
        return Assembled(key=key, size=finish.size, etag=etag, method=method)

    def compose(
        self,
        record: StreamRecord,
        chunks: list[ChunkRecord],
        key: str,
        content_type: str,
        upload: AssemblyUpload | None,
        log_fields: dict,
    ) -> tuple[str, int]:
        """The object's ETag, and how many of its parts were copied while live."""
        if upload is not None:
            parts = [self.part_source(record.stream_id, c, upload.upload_id) for c in chunks]
            ahead = sum(1 for p in parts if p.copied)
            try:
                etag = self.s3.compose(key, parts, content_type, self.senders, upload.upload_id)
            except UploadGone as exc:
                self.log.warning("assembly_upload_lost", **log_fields, error=str(exc))
            else:
                metrics.PARTS_COPIED.labels(when="completion").inc(len(parts) - ahead)
                return etag, ahead
        parts = [self.part_source(record.stream_id, c, None) for c in chunks]
        etag = self.s3.compose(key, parts, content_type, self.senders)
        metrics.PARTS_COPIED.labels(when="completion").inc(len(parts))
        return etag, 0

    def abort_strays(self, key: str, log_fields: dict) -> None:
        """Uploads to the object begun but never recorded (a crash just after beginning
        one) would hold their parts' storage until the server expires them."""
        try:
            for upload_id in self.s3.open_uploads(key):
                self.s3.abort_upload(key, upload_id)
                self.log.info("stray_upload_aborted", **log_fields, key=key)
        except Exception as exc:
            self.log.warning("stray_upload_check_failed", **log_fields, error=describe(exc))

    # Retention

    def retire(self, stream_id: str, reason: str) -> None:
        """Start deleting a finished stream's local file, if every byte of it is proven in
        S3: a sender thread asks S3 and deletes, the main loop records the outcome."""
        record = self.store.find_stream(stream_id)
        if record is None:
            gone = retention.Kept("the stream is not in the checkpoint store", final=True)
            self.keep(stream_id, "", reason, gone)
            return
        chunks = self.store.chunks(stream_id)
        future = self.senders.submit(self.delete_source, record, chunks, reason)
        self.retirements[stream_id] = (record, reason, future)
        future.add_done_callback(self.wake)

    def delete_source(
        self, record: StreamRecord, chunks: list[ChunkRecord], reason: str
    ) -> StreamRecord:
        """In a sender thread: prove, delete, and write metadata.json again, saying so."""
        retention.delete_if_proven(
            record,
            chunks,
            self.s3,
            self.config.watch.directory,
            self.config.retention.delete_partial,
        )
        deleted = msgspec.structs.replace(
            record, source_deleted_at=_utcnow(), deleted_because=reason
        )
        try:
            self.put_manifest(deleted, chunks)
        except Exception as exc:
            # The checkpoint has the deletion; `streamer streams show` tells it.
            self.log.error(
                "manifest_update_failed", stream_id=record.stream_id, error=describe(exc)
            )
        return deleted

    def collect_retirements(self) -> None:
        for stream_id, (record, reason, future) in list(self.retirements.items()):
            if not future.done():
                continue
            del self.retirements[stream_id]
            if future.exception() is not None:
                self.keep(stream_id, record.path, reason, future.exception())
                continue
            self.note_deletion(future.result())

    def note_deletion(self, deleted: StreamRecord) -> None:
        stream_id, reason = deleted.stream_id, deleted.deleted_because
        with contextlib.suppress(UnknownStream):  # forgotten meanwhile: nothing to note
            self.store.update_stream(
                stream_id,
                lambda r: msgspec.structs.replace(
                    r, source_deleted_at=deleted.source_deleted_at, deleted_because=reason
                ),
            )
        metrics.SOURCES_DELETED.labels(reason=reason).inc()
        self.log.info(
            "source_deleted",
            stream_id=stream_id,
            path=deleted.path,
            reason=reason,
            size=deleted.total_size,
        )
        self.events.put(Retired(stream_id=stream_id, deleted=True))

    def keep(self, stream_id: str, path: str, reason: str, exc: BaseException) -> None:
        if isinstance(exc, retention.Kept):
            why, final = str(exc), exc.final
        else:
            why, final = f"could not finish the checks: {describe(exc)}", False
        metrics.SOURCES_KEPT.inc()
        self.log.warning(
            "source_kept", stream_id=stream_id, path=path, reason=reason, kept_because=why
        )
        self.events.put(Retired(stream_id=stream_id, deleted=False, final=final, kept_because=why))


def _content_type(is_mp4: bool) -> str:
    return "video/mp4" if is_mp4 else "application/octet-stream"


def _check_still_idle(path: str, finish: Finish) -> None:
    st = os.stat(path)
    if (st.st_size, st.st_mtime_ns) != (finish.size, finish.mtime_ns):
        raise FinishCalledOff(st.st_size)


def _utcnow() -> datetime:
    return datetime.now(UTC)
