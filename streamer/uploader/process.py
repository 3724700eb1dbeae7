"""An uploader process's life: set up after the fork, one loop (background work taken
back, the next stream's step, the supervisor's commands), and a stop that lets the work
under way land and be committed before the process exits."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import time
from concurrent.futures import Future

from streamer import claim, fileio, logs, preflight
from streamer.bandwidth import TokenBucket
from streamer.buffers import BufferPool
from streamer.checkpoint import CheckpointError, CheckpointStore
from streamer.childproc import EXIT_BOOT_ERROR, EXIT_OK, FORK_BLOCKED_SIGNALS, Heartbeat
from streamer.chunkstore import ChunkStore
from streamer.config import Config, MiB
from streamer.failures import Backoff
from streamer.logs import describe
from streamer.messages import (
    Abandon,
    Assign,
    Finish,
    Grow,
    Mailbox,
    Moved,
    Prune,
    Retire,
    Stop,
    StreamFinished,
)
from streamer.objectstore import BucketMissing, ObjectStore
from streamer.records import StreamState
from streamer.uploader.assembly import Assembler
from streamer.uploader.completion import Completion
from streamer.uploader.context import STEP_EVENTS, UploaderContext
from streamer.uploader.file_sha256 import PrefixHash
from streamer.uploader.jobs import Job, JobPhase
from streamer.uploader.ledger import Ledger
from streamer.uploader.pruning import Pruner
from streamer.uploader.retiring import Retirer
from streamer.uploader.schedule import IDLE_WAIT, Schedule
from streamer.uploader.sending import Sender
from streamer.uploader.survey import Surveyor
from streamer.uploader.tasks import Tasks

PR_SET_PDEATHSIG = 1
M_MMAP_THRESHOLD = -3

CLAIM_CHECK = 10.0  # seconds between looks at the instance's claim, while running
CLAIM_TASK = ".claim"  # not a stream: the claim's look goes through the one door too
NOT_YET = ConnectionError("S3 is not reached yet, or this store may not write there")
BUCKET_EVENTS = {"transient": "s3_unreachable", "rejected": "s3_rejected", "failed": "s3_rejected"}


def main(*args) -> None:
    """Entry point in the forked child, with Uploader's arguments; its exit code tells the
    supervisor how it ended."""
    raise SystemExit(Uploader(*args).run())


class Uploader:
    def __init__(
        self,
        worker_id: int,
        config: Config,
        commands: Mailbox,
        events: Mailbox,
        parent_pid: int,
        inherited_fds: list[int],
        heartbeat: Heartbeat,
        bandwidth: TokenBucket | None = None,
        clock=time.monotonic,
    ):
        self.worker_id = worker_id
        self.heartbeat = heartbeat
        self.doing = "starting"
        self.config = config
        self.commands = commands
        self.events = events
        self.inherited_fds = inherited_fds
        self.bandwidth = bandwidth
        self.clock = clock
        self.parent_pid = parent_pid
        self.stopping = False
        self.exit_code = EXIT_OK
        self.bucket_ready = False
        self.claim_due = float("inf")
        self.bucket_backoff = Backoff()
        self.bucket_check: Future | None = None  # the look at S3 under way
        self.waiting_for_s3: list[Retire | Prune] = []  # deletions asked meanwhile
        self.log = logs.EventLog(f"uploader.{worker_id}")

    def run(self) -> int:
        try:
            self.init_process()
        except Exception as exc:
            # Whatever stops its start would stop the next one: the daemon halts, once.
            error = str(exc) if isinstance(exc, CheckpointError) else describe(exc)
            self.log.error("uploader_boot_failed", error=error)
            return EXIT_BOOT_ERROR
        self.log.info("uploader_started", worker=self.worker_id)
        while not self.stopping:
            self.loop(self.clock())
        self.settle()
        held = self.bucket_ready and self.ctx.s3_reachable
        if self.worker_id == 0 and held and self.exit_code == EXIT_OK:
            self.move_claim_on()
        self.ctx.store.close()
        self.log.info("uploader_stopped", worker=self.worker_id)
        return self.exit_code

    def init_process(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        # Die with the supervisor: an orphan would keep uploading streams it no longer owns.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # Read buffers (1 MiB) are large. glibc would raise its mmap threshold after the
        # first is freed and then keep freed buffers in each thread's arena; with a fixed
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
        window = self.config.stream.upload_window
        self.build(
            CheckpointStore(self.config.checkpoint.path, self.config.checkpoint.map_size),
            ChunkStore(self.config.s3, self.config.instance, 2 * window + 2, self.bandwidth),
        )

    def build(self, store: CheckpointStore, s3: ObjectStore) -> None:
        """The roles of the process, around one context (in this process too, on any
        store: tests/uploaders.py)."""
        window = self.config.stream.upload_window
        # Completions (reading the file again, assembling in S3) take their own threads:
        # they would otherwise hold the senders live streams need, and wait for the part
        # copies they hand to the senders. One copier: part copies are S3's work, and run
        # behind the uploads, not beside them.
        tasks = Tasks({"sender": window, "finisher": window, "copier": 1}, self.boundary)
        self.ctx = ctx = UploaderContext(
            self.worker_id,
            self.config,
            store,
            s3,
            BufferPool(),
            tasks,
            self.events,
            self.log,
            self.clock,
        )
        self.ledger = Ledger(ctx)
        self.surveyor = Surveyor(ctx)
        self.assembler = Assembler(ctx)
        self.completion = Completion(ctx, self.ledger, self.surveyor, self.assembler)
        self.retirer = Retirer(ctx)
        self.pruner = Pruner(ctx)
        sender = Sender(ctx, self.ledger)
        self.schedule = Schedule(ctx, sender, self.surveyor, self.completion)

    def handle_term(self, signum, frame) -> None:
        self.stopping = True

    def loop(self, now: float) -> None:
        ctx = self.ctx
        self.beat(now)
        if not self.bucket_ready and now >= self.bucket_backoff.due:
            self.check_bucket(now)
        elif self.worker_id == 0 and self.bucket_ready and now >= self.claim_due:
            self.check_claim(now)
        ctx.tasks.run_handlers(now)
        if not self.stopping:
            self.assembler.copy_ahead(now)
        job = self.schedule.next_job(now) if self.bucket_ready else None
        if job is None:
            self.doing = f"waiting, {len(ctx.jobs)} streams held"
        if job is None and not ctx.outstanding():
            ctx.buffers.release()  # nothing on the wire: an idle uploader holds no chunk
        self.handle_commands(timeout=0 if job else self.wait_time(now))
        if job and not self.stopping and ctx.jobs.get(job.stream_id) is job:
            self.work_on(job, now)

    def wait_time(self, now: float) -> float:
        if not self.bucket_ready:
            return max(0.0, min(IDLE_WAIT, self.bucket_backoff.due - now))
        return self.schedule.wait_time(now)

    def check_bucket(self, now: float) -> None:
        """S3 is asked first thing (in a thread: the loop never waits on S3), so /readyz
        tells whether S3 works before any file comes; and whether this start of this store
        may write under its instance name."""
        self.bucket_backoff.due = float("inf")  # until this look comes back
        self.bucket_check = self.ctx.tasks.submit(
            "finisher", CLAIM_TASK, self.reach_s3, then=self.bucket_checked
        )

    def reach_s3(self) -> None:
        """The bucket, as `doctor` checks it (preflight), then the instance's claim."""
        if preflight.bucket(self.ctx.s3, self.config.s3.create_bucket) == "created":
            self.log.info("bucket_created", bucket=self.config.s3.bucket)
        claim.hold(self.ctx.s3, self.ctx.store)

    def bucket_checked(self, future, now: float) -> None:
        self.bucket_check = None
        try:
            self.looked_at_s3(future, now)
        finally:
            waiting, self.waiting_for_s3 = self.waiting_for_s3, []
            for message in waiting:
                self.handle(message)

    def looked_at_s3(self, future, now: float) -> None:
        try:
            future.result()
        except (claim.InstanceTaken, claim.Behind) as exc:
            self.lost_claim(exc)
            return
        except claim.NotMoved as exc:
            # Not behind, as S3 showed it just now; the first uploader moves it on later.
            self.log.warning("claim_not_moved", error=str(exc))
        except Exception as exc:
            self.ctx.fail(self.bucket_backoff, exc, now, BUCKET_EVENTS)
            if isinstance(exc, BucketMissing):  # S3 answered: reached, not unreachable
                self.ctx.s3_state(True, bucket_missing=f"{exc}: {preflight.BUCKET_HINT}")
            return
        self.bucket_ready = True
        self.claim_due = now + CLAIM_CHECK
        self.ctx.s3_state(True)

    def check_claim(self, now: float) -> None:
        """While it runs, the first uploader looks at the claim now and then (in a thread),
        and moves it on if it could not at start: a copy of this store that took it over
        since (`checkpoint adopt` on another host) stops this daemon before it writes
        more."""
        self.claim_due = float("inf")  # until this look comes back
        self.ctx.tasks.submit(
            "finisher",
            CLAIM_TASK,
            claim.hold,
            self.ctx.s3,
            self.ctx.store,
            then=self.claim_seen,
        )

    def claim_seen(self, future, now: float) -> None:
        self.claim_due = now + CLAIM_CHECK
        if isinstance(exc := future.exception(), claim.InstanceTaken | claim.Behind):
            self.lost_claim(exc)
        # Any other error: S3 is away, which the uploads find out and say.

    def lost_claim(self, exc: Exception) -> None:
        event = "instance_taken" if isinstance(exc, claim.InstanceTaken) else "store_behind"
        self.log.error(event, error=str(exc))
        self.exit_code, self.stopping = EXIT_BOOT_ERROR, True  # restarting cannot help

    def beat(self, now: float) -> None:
        """Alive as of now, unless one of its reads has been under way since earlier: a
        read stuck in the kernel ages the heartbeat as a stopped loop does."""
        read = fileio.oldest_read()
        if read is not None and read[0] < now:
            self.heartbeat.beat(*read)
        else:
            self.heartbeat.beat(now, self.doing)

    def work_on(self, job: Job, now: float) -> None:
        self.doing = f"{job.phase.value} {job.stream_id}"
        try:
            self.schedule.step(job)
        except Exception as exc:
            self.ctx.retry_later(job, exc, now)

    def boundary(self, stream_id: str, exc: Exception, now: float) -> None:
        """Whatever a handler of background work raises: its stream waits with its
        backoff, the others go on."""
        job = self.ctx.jobs.get(stream_id)
        if job is not None:
            self.ctx.retry_later(job, exc, now)
        else:
            self.ctx.fail(Backoff(), exc, now, STEP_EVENTS, stream_id=stream_id)

    # Commands

    def handle_commands(self, timeout: float) -> None:
        tasks = self.ctx.tasks
        ready, _, _ = select.select([self.commands.fileno(), tasks.wake_r], [], [], timeout)
        if tasks.wake_r in ready:
            tasks.drain_wakeups()
        message = self.commands.get(0)
        while message is not None:
            self.handle(message)
            message = self.commands.get(0)

    def handle(self, message) -> None:
        jobs = self.ctx.jobs
        match message:
            case Assign(stream_id=stream_id):
                self.adopt(stream_id)
            case Grow(stream_id=stream_id) if stream_id in jobs:
                jobs[stream_id].wake()
            case Finish(stream_id=stream_id) if stream_id in jobs:
                job = jobs[stream_id]
                job.finish = message
                job.move_to(JobPhase.FINISHING)
                job.wake()
            case Moved(stream_id=stream_id) if stream_id in jobs:
                job = jobs[stream_id]
                job.record = self.ctx.store.get_stream(stream_id)
                job.backoff.retry_now()
                job.wake()
            case Abandon(stream_id=stream_id, reason=reason, status=status) if stream_id in jobs:
                job = jobs[stream_id]
                job.abandon = (reason, StreamState(status))
                job.move_to(JobPhase.ABANDONING)
                job.backoff.retry_now()
                job.wake()
            # Deletions wait until this start holds the instance's claim: a store behind
            # S3 deletes nothing before it stops. Asked while S3 is being looked at, they
            # are answered once the look comes back.
            case Retire() | Prune() if self.bucket_check is not None:
                self.waiting_for_s3.append(message)
            case Retire(stream_id=stream_id, reason=reason) if self.bucket_ready:
                self.retirer.retire(stream_id, reason)
            case Retire(stream_id=stream_id, reason=reason):
                self.retirer.keep(stream_id, "", reason, NOT_YET)
            case Prune(stream_id=stream_id) if self.bucket_ready:
                self.pruner.prune(stream_id)
            case Prune(stream_id=stream_id):
                self.pruner.answer(stream_id, deleted=False)
            case Stop():
                self.stopping = True

    def adopt(self, stream_id: str) -> None:
        ctx = self.ctx
        record = ctx.store.find_stream(stream_id)
        if record is None:
            self.drop_unknown(stream_id)
            return
        job = Job(
            record=record,
            probe_below=record.chunk_count + ctx.window,
            sent_hash=(
                PrefixHash()
                if record.chunk_count == 0 and ctx.config.integrity.file_sha256
                else None
            ),
            log_fields={"stream_id": stream_id},
        )
        if record.chunk_count:
            job.uncopied.extend(self.assembler.not_copied(record))
        job.told_parked = True  # perhaps, by its owner before: its first success says not
        ctx.jobs[stream_id] = job
        self.log.info("stream_adopted", stream_id=stream_id, position=str(record.position))

    def drop_unknown(self, stream_id: str) -> None:
        """The checkpoint store no longer has the stream (forgotten since the supervisor took
        it up): nothing is left to resume. The supervisor hears it ended, with its file as if
        gone, so it stops waiting for it and looks at the file afresh (a new stream, if it
        is still there)."""
        self.log.warning("stream_unknown", stream_id=stream_id)
        self.events.put(
            StreamFinished(stream_id=stream_id, status="forgotten", size=-1, mtime_ns=-1)
        )

    def move_claim_on(self) -> None:
        """A clean stop moves the instance's claim on too: a backup taken while the daemon
        ran is then found behind S3 when it is put back."""
        try:
            claim.move_on(self.ctx.s3, self.ctx.store)
        except Exception as exc:  # the next start moves it on all the same
            self.log.warning("claim_not_moved", error=describe(exc))

    def settle(self) -> None:
        """On stop: chunks, completions and deletions not yet started are dropped; those
        under way finish and are recorded (the supervisor's grace period bounds the
        wait)."""
        tasks = self.ctx.tasks
        for job in self.ctx.jobs.values():
            if job.sent_hash:
                job.sent_hash.give_up()  # a chunk dropped here would keep the next waiting
        # Stopping is not stalling: the heartbeat gives it the grace period, the
        # supervisor's own bound when it asked for the stop, and the same when it did not.
        grace = self.config.grace_period
        self.heartbeat.beat(self.clock() + grace, "stopping: the work under way lands")
        # A handler may hand work on (a completion, its metadata.json): it lands too.
        while True:
            tasks.settle()
            tasks.run_handlers(self.clock())
            if not tasks.under_way():
                break
        tasks.shutdown()
