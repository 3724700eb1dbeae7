"""The supervisor: watches the directory, owns the table of streams, hands each stream to
exactly one uploader process, and keeps the uploaders alive.

Its life is one loop: sleep until something happens (a file event, a message from an
uploader, an uploader's death, a signal, a metrics request, or a timer), then deal with it.
Signal handlers only queue the signal; the loop handles it by name.
"""

from __future__ import annotations

import enum
import math
import multiprocessing
import os
import select
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from streamer import bandwidth, logs, metrics, naming
from streamer.checkpoint import CheckpointError, CheckpointStore
from streamer.childproc import (
    EXIT_BOOT_ERROR,
    EXIT_FAILURE,
    EXIT_OK,
    FORK_BLOCKED_SIGNALS,
    run_uploader,
)
from streamer.config import Config, credential_source, redacted
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
    choose_uploader,
    is_idle,
    next_to_retire,
    old_enough,
    oldest_uncommitted_age,
    retirable,
    space_to_free,
)
from streamer.records import StreamRecord, StreamState
from streamer.watcher import FileStat, Watcher

TICK = 0.5
REWRITTEN = "another recording was written over it before it finished"
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
RETENTION_INTERVAL = 1.0
KEPT_RETRY = 60.0  # a file retention kept is not asked about again sooner


class Phase(enum.Enum):
    UPLOADING = "uploading"  # its uploader sends chunks as they fill
    FINISHING = "finishing"  # idle: its uploader was told to finalise it
    ABANDONING = "abandoning"  # its file is gone: its uploader was told to finish it as partial


_PHASE_MOVES = {
    Phase.UPLOADING: {Phase.FINISHING, Phase.ABANDONING},
    Phase.FINISHING: {Phase.UPLOADING, Phase.ABANDONING},
    Phase.ABANDONING: set(),
}


@dataclass
class Tracked:
    """A stream the supervisor is responsible for until its uploader reports it finished."""

    stream_id: str
    file: FileStat
    chunk_size: int
    changed_at: float
    owner: int
    told_size: int
    phase: Phase = Phase.UPLOADING
    abandon: Abandon | None = None  # what its uploader was told, once it is abandoning
    # Delivery state: bytes S3 confirmed, bytes in the checkpoint, and when the file reached
    # each size not yet committed (for the age of the oldest byte waiting).
    confirmed: int = 0
    committed: int = 0
    arrivals: deque = field(default_factory=deque)

    def is_at(self, file: FileStat) -> bool:
        """Could `file` be this stream's file under another name? (Its inode, at least: a
        deleted file's inode number is soon given to a new file.)"""
        return self.phase is not Phase.ABANDONING and file.same_file(self.file)

    def move_to(self, phase: Phase) -> None:
        assert phase in _PHASE_MOVES[self.phase], f"{self.stream_id}: {self.phase} -> {phase}"
        self.phase = phase


@dataclass
class Retainable:
    """A finished file that retention may delete, once an uploader has proven it in S3."""

    stream_id: str
    mtime_ns: int
    size: int
    not_before: float = 0.0  # kept the last time: not asked again before then


class WorkerState(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass
class Worker:
    worker_id: int
    process: multiprocessing.Process
    commands: Mailbox
    events: Mailbox
    state: WorkerState = WorkerState.RUNNING
    streams: set[str] = field(default_factory=set)
    # Commands its pipe had no room for yet: the supervisor never blocks on a slow uploader.
    outbox: deque = field(default_factory=deque)

    def send(self, message) -> None:
        self.outbox.append(message)
        self.flush()

    def flush(self) -> None:
        while self.outbox and self.commands.put_nowait(self.outbox[0]):
            self.outbox.popleft()


class Supervisor:
    def __init__(self, config: Config, clock=time.monotonic):
        self.config = config
        self.clock = clock
        self.ctx = multiprocessing.get_context("fork")
        self.log = logs.EventLog("supervisor")
        self.watcher = Watcher(config.watch.directory, config.watch.pattern)
        self.workers: dict[int, Worker] = {}
        self.streams: dict[str, Tracked] = {}  # unfinished streams, by stream id
        self.paths: dict[str, str] = {}  # path -> id of the stream whose file is there
        self.settled: dict[str, tuple[int, int, int]] = {}  # finished files: path -> identity
        self.retainable: dict[str, Retainable] = {}  # by path
        self.retiring: tuple[str, int] | None = None  # (stream, uploader) asked to delete
        self.signals: deque[int] = deque()
        self.restarts: deque[float] = deque()
        self.store: CheckpointStore | None = None
        self.bandwidth: bandwidth.TokenBucket | None = None
        self.metrics_server: metrics.MetricsServer | None = None
        self.stop_deadline: float | None = None
        self.exit_code: int | None = None
        self.next_rescan = 0.0
        self.next_request_check = 0.0
        self.next_idle_at = math.inf
        self.next_retention = 0.0
        self.disk_pressure = False
        self.started_at = clock()
        self.last_upload: float | None = None
        self.s3_reachable: bool | None = None
        self.s3_error = "no answer from S3 yet"

    # Life

    def run(self) -> int:
        try:
            self.initialize()
        except (CheckpointError, OSError) as exc:
            self.log.error("start_failed", error=str(exc))
            self.murder_workers()
            return EXIT_BOOT_ERROR
        try:
            while self.exit_code is None:
                self.loop(self.clock())
        except BaseException as exc:
            # Never leave uploaders behind, nor a process that no longer loops.
            self.log.error("supervisor_crashed", error=f"{type(exc).__name__}: {exc}")
            self.murder_workers()
            raise
        finally:
            self.shutdown()
        return self.exit_code

    def initialize(self) -> None:
        self.log.info(
            "starting",
            config=redacted(self.config),
            credentials=credential_source(self.config),
            pid=os.getpid(),
        )
        if self.config.s3.tls_skip_verify:
            self.log.warning(
                "tls_verification_off",
                message="s3.tls_skip_verify is on: anyone on the path to S3 can read and change "
                "the uploads. For development only; use s3.ca_file for a private CA.",
            )
        self.check_directories()
        self.prepare_store()
        self.install_signals()
        rate = self.config.s3.max_bytes_per_second
        self.bandwidth = bandwidth.TokenBucket(rate) if rate else None
        for worker_id in range(self.config.workers):
            self.spawn_worker(worker_id)
        self.open_store()
        # Before the first scan: from then on every change in the directory is queued.
        self.watcher.open()
        if self.config.metrics.enabled:
            self.metrics_server = metrics.MetricsServer(
                self.config.metrics.host, self.config.metrics.port, self.readiness
            )
            self.log.info(
                "metrics_listening", host=self.config.metrics.host, port=self.metrics_server.port
            )
        self.rescan(self.clock())
        self.log.info("started", streams=len(self.streams))

    def loop(self, now: float) -> None:
        for ready in self.sleep():
            self.dispatch(ready, now)
        while self.signals and self.exit_code is None:
            self.handle_signal(self.signals.popleft())
        if self.exit_code is None:
            self.reap_workers(now)
        if self.exit_code is not None:
            return
        if self.stop_deadline is None:
            if now >= self.next_rescan:
                self.rescan(now)
            if now >= self.next_request_check:
                self.next_request_check = now + TICK
                self.check_cancellations()
            self.finish_idle_streams(now)
            if self.config.retention.enabled and now >= self.next_retention:
                self.apply_retention(now)
        else:
            self.check_stop(now)
        self.update_gauges(now)

    def shutdown(self) -> None:
        self.watcher.close()
        if self.metrics_server:
            self.metrics_server.close()
        if self.store:
            self.store.close()
        self.log.info("stopped", exit_code=self.exit_code)

    # Waiting and dispatching

    def sleep(self) -> list:
        waitables = [self.wakeup_r, *self.worker_events(), *self.worker_sentinels()]
        if self.stop_deadline is None:
            waitables.append(self.watcher)
        if self.metrics_server:
            waitables.append(self.metrics_server)
        blocked = [w.commands.writer_fileno() for w in self.workers.values() if w.outbox]
        try:
            ready, writable, _ = select.select(waitables, blocked, [], self.sleep_time())
        except InterruptedError:
            return []
        if writable:
            self.flush_outboxes()
        return ready

    def sleep_time(self) -> float:
        """Up to a tick, but no later than the moment the next stream falls idle; not at
        all if that moment has passed, since it was computed (the next loop, with a fresh
        clock, finishes that stream). While stopping, no stream is finished."""
        if self.stop_deadline is not None:
            return TICK
        return max(0.0, min(TICK, self.next_idle_at - self.clock()))

    def dispatch(self, ready, now: float) -> None:
        if isinstance(ready, int) and ready == self.wakeup_r:
            os.read(self.wakeup_r, 512)
        elif ready is self.watcher:
            self.handle_file_events(now)
        elif ready is self.metrics_server:
            self.metrics_server.handle()
        elif isinstance(ready, Mailbox):
            self.handle_worker_events(ready, now)
        # Otherwise a worker's sentinel: reap_workers sees that it died.

    def worker_events(self) -> list[Mailbox]:
        return [w.events for w in self.workers.values()]

    def worker_sentinels(self) -> list[int]:
        return [w.process.sentinel for w in self.workers.values()]

    # Signals

    def install_signals(self) -> None:
        self.wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wakeup_w = wakeup_w
        signal.set_wakeup_fd(wakeup_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.queue_signal)

    def queue_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def handle_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name.removeprefix("SIG").lower()
        getattr(self, f"handle_{name}")()

    def handle_term(self) -> None:
        if self.stop_deadline is not None:
            self.log.warning("forced_stop")
            self.murder_workers()
            self.exit_code = EXIT_FAILURE
            return
        self.log.info("stopping", grace_period=self.config.grace_period)
        self.stop_deadline = self.clock() + self.config.grace_period
        self.watcher.close()
        for worker in self.workers.values():
            self.stop_worker(worker)

    handle_int = handle_term

    def check_stop(self, now: float) -> None:
        if not self.workers:
            self.exit_code = EXIT_OK
        elif now >= self.stop_deadline:
            self.log.warning("grace_period_expired", uploaders=sorted(self.workers))
            self.murder_workers()
            self.exit_code = EXIT_OK

    # Workers

    def spawn_worker(self, worker_id: int) -> None:
        commands = Mailbox.for_commands(self.ctx)
        events = Mailbox.for_events(self.ctx)
        process = self.ctx.Process(
            target=run_uploader,
            name=f"streamer-uploader-{worker_id}",
            args=(
                worker_id,
                self.config,
                commands,
                events,
                os.getpid(),
                self.inherited_fds(),
                self.bandwidth,
            ),
        )
        # An LMDB handle must not cross a fork: close ours, fork, open again. Signals wait
        # until the child has its own handlers (it unblocks them), and ours are back.
        reopen = self.store is not None
        if reopen:
            self.store.close()
        signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED_SIGNALS)
            if reopen:
                self.open_store()
        self.workers[worker_id] = Worker(worker_id, process, commands, events)
        self.log.info("uploader_spawned", worker=worker_id, pid=process.pid)

    def inherited_fds(self) -> list[int]:
        fds = [self.wakeup_r, self.wakeup_w, *self.watcher.fds()]
        if self.metrics_server:
            fds.append(self.metrics_server.fileno())
        return fds

    def stop_worker(self, worker: Worker) -> None:
        worker.state = WorkerState.STOPPING
        worker.send(Stop())

    def flush_outboxes(self) -> None:
        for worker in self.workers.values():
            worker.flush()

    def murder_workers(self) -> None:
        for worker in self.workers.values():
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGKILL)
        for worker in list(self.workers.values()):
            worker.process.join()
            self.forget_worker(worker)

    def reap_workers(self, now: float) -> None:
        for worker in list(self.workers.values()):
            if worker.process.exitcode is None or self.exit_code is not None:
                continue
            self.forget_worker(worker)
            if worker.state is WorkerState.STOPPING:
                self.log.info(
                    "uploader_exited", worker=worker.worker_id, exit_code=worker.process.exitcode
                )
            else:
                self.handle_worker_death(worker, now)

    def forget_worker(self, worker: Worker) -> None:
        worker.process.join()
        metrics.mark_process_dead(worker.process.pid)
        worker.commands.close()
        worker.events.close()
        self.workers.pop(worker.worker_id, None)

    def handle_worker_death(self, worker: Worker, now: float) -> None:
        code = worker.process.exitcode
        self.log.error(
            "uploader_died", worker=worker.worker_id, exit_code=code, streams=sorted(worker.streams)
        )
        if code == EXIT_BOOT_ERROR:
            self.log.error("halting", reason="an uploader could not start")
            self.murder_workers()
            self.exit_code = EXIT_BOOT_ERROR
            return
        self.restarts.append(now)
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW:
            self.restarts.popleft()
        if len(self.restarts) > MAX_RESTARTS:
            self.log.error(
                "halting",
                reason=f"more than {MAX_RESTARTS} uploader restarts in {RESTART_WINDOW:.0f} s",
            )
            self.murder_workers()
            self.exit_code = EXIT_FAILURE
            return
        metrics.UPLOADER_RESTARTS.inc()
        if self.retiring is not None and self.retiring[1] == worker.worker_id:
            self.retiring = None
        self.spawn_worker(worker.worker_id)
        for tracked in self.streams.values():
            if tracked.owner == worker.worker_id:
                self.assign(tracked, now)

    def readiness(self) -> tuple[bool, dict]:
        alive = sum(
            1
            for w in self.workers.values()
            if w.state is WorkerState.RUNNING and w.process.is_alive()
        )
        checks = {
            "s3": {"ok": self.s3_reachable is True, "error": self.s3_error},
            "checkpoint": {"ok": self.store is not None},
            "uploaders": {
                "ok": alive == self.config.workers,
                "alive": alive,
                "expected": self.config.workers,
            },
            "running": {"ok": self.stop_deadline is None},
        }
        return all(c["ok"] for c in checks.values()), checks

    def handle_worker_events(self, events: Mailbox, now: float) -> None:
        message = events.get(0)
        while message is not None:
            self.handle_event(message, now)
            message = events.get(0)

    def handle_event(self, message, now: float) -> None:
        match message:
            case ChunkUploaded(stream_id=stream_id, end=end) if stream_id in self.streams:
                tracked = self.streams[stream_id]
                tracked.confirmed = max(tracked.confirmed, end)
                self.last_upload = now
            case ChunkCommitted(stream_id=stream_id, committed_bytes=committed) if (
                stream_id in self.streams
            ):
                tracked = self.streams[stream_id]
                tracked.committed = tracked.confirmed = committed
                while tracked.arrivals and tracked.arrivals[0][0] <= committed:
                    tracked.arrivals.popleft()
            case S3State(reachable=reachable, error=error):
                if reachable != self.s3_reachable:
                    self.log.info("s3_state", reachable=reachable, error=error)
                self.s3_reachable, self.s3_error = reachable, error
            case FinishDeclined(stream_id=stream_id) if stream_id in self.streams:
                tracked = self.streams[stream_id]
                if tracked.phase is Phase.FINISHING:
                    tracked.move_to(Phase.UPLOADING)
                    tracked.changed_at = now
                    self.observe(tracked.file.path, now)
            case SourceRewritten(stream_id=stream_id) if stream_id in self.streams:
                tracked = self.streams[stream_id]
                if tracked.phase is not Phase.ABANDONING:
                    self.abandon(tracked, REWRITTEN)
                    self.start_stream(tracked.file.path, now)
            case StreamFinished(stream_id=stream_id) if stream_id in self.streams:
                tracked = self.streams.pop(stream_id)
                if tracked.owner in self.workers:
                    self.workers[tracked.owner].streams.discard(stream_id)
                path = tracked.file.path
                if self.paths.get(path) == stream_id:
                    del self.paths[path]
                    # Settled as the uploader finished it; a change since then is seen now.
                    identity = (tracked.file.inode, message.size, message.mtime_ns)
                    self.settle(path, identity, self.store.find_stream(stream_id))
                    self.observe(path, now)
            case Retired():
                self.retired(message, now)

    # Files

    def handle_file_events(self, now: float) -> None:
        batch = self.watcher.read()
        if batch.overflow:
            self.log.warning("inotify_overflow")
            self.rescan(now)
        for path in batch.deleted:
            self.forget_deleted(path)
        for path in batch.paths:
            self.observe_safely(path, now)

    def forget_deleted(self, path: str) -> None:
        tracked = self.streams.get(self.paths.get(path, ""))
        if tracked is None:
            return
        file = self.watcher.stat(path)
        if file is None or not file.same_file(tracked.file):
            self.abandon(tracked, "deleted before it finished")

    def rescan(self, now: float) -> None:
        self.next_rescan = now + self.config.watch.rescan_interval
        try:
            found = self.watcher.scan()
        except OSError as exc:
            self.log.error("scan_failed", directory=self.watcher.directory, error=str(exc))
            return
        for path in found.keys() | self.paths.keys() | self.retainable.keys():
            self.observe_safely(path, now, found.get(path))
        self.adopt_untracked(now)

    def observe_safely(self, path: str, now: float, file: FileStat | None = None) -> None:
        """One odd file must never stop the daemon: log it and go on with the others."""
        try:
            self.observe(path, now, file)
        except (OSError, ValueError, CheckpointError) as exc:
            self.log.error("file_failed", path=path, error=f"{type(exc).__name__}: {exc}")

    def observe(self, path: str, now: float, file: FileStat | None = None) -> None:
        """Bring what is known of `path` up to date with a fresh stat of it."""
        file = file or self.watcher.stat(path)
        tracked = self.streams.get(self.paths.get(path, ""))
        if tracked and (file is None or not file.same_file(tracked.file)):
            self.lose(tracked, now)
            tracked = None
        if file is None:
            self.unsettle(path)
            return
        if tracked is None:
            moved = next((t for t in self.streams.values() if t.is_at(file)), None)
            if moved and self.still_the_recording(moved.stream_id, file):
                self.move(moved, file, now)
            elif self.watcher.matches(os.path.basename(path)) and self.settled.get(
                path
            ) != _identity(file):
                self.discover(file, now)
            return
        if file.changed_since(tracked.file):
            if file.size > tracked.file.size:
                tracked.arrivals.append((file.size, now))
            tracked.file = file
            tracked.changed_at = now
            if file.size // tracked.chunk_size > tracked.told_size // tracked.chunk_size:
                tracked.told_size = file.size
                self.tell_owner(tracked, Grow(stream_id=tracked.stream_id, size=file.size))

    def lose(self, tracked: Tracked, now: float) -> None:
        """Its path no longer holds its file: follow the file if it was renamed within the
        directory, else finish the stream with what S3 has."""
        found = self.watcher.find(tracked.file.inode, tracked.file.device)
        if found is not None and self.still_the_recording(tracked.stream_id, found):
            self.move(tracked, found, now)
        elif os.path.lexists(tracked.file.path):
            self.abandon(tracked, "replaced by another file before it finished")
        else:
            self.abandon(tracked, "deleted before it finished")

    def still_the_recording(self, stream_id: str, file: FileStat) -> bool:
        """A renamed recording keeps what was uploaded of it: at least as many bytes, and the
        same first bytes. A new file that merely reuses a deleted file's inode does not."""
        record = self.store.get_stream(stream_id)
        return file.size >= record.committed_bytes and not self.watcher.head_changed(
            file.path, record.head
        )

    def move(self, tracked: Tracked, file: FileStat, now: float) -> None:
        displaced = self.streams.get(self.paths.get(file.path, ""))
        if displaced is not None and displaced is not tracked:
            self.lose(displaced, now)
        old_path = tracked.file.path
        if self.paths.get(old_path) == tracked.stream_id:
            del self.paths[old_path]
        self.paths[file.path] = tracked.stream_id
        tracked.file = file
        tracked.changed_at = now
        self.store.move_stream(tracked.stream_id, file.path)
        self.log.info(
            "stream_renamed", stream_id=tracked.stream_id, old_path=old_path, path=file.path
        )
        self.tell_owner(tracked, Moved(stream_id=tracked.stream_id))

    def abandon(self, tracked: Tracked, reason: str, status: str = "partial") -> None:
        if self.paths.get(tracked.file.path) == tracked.stream_id:
            del self.paths[tracked.file.path]
        tracked.move_to(Phase.ABANDONING)
        tracked.abandon = Abandon(stream_id=tracked.stream_id, reason=reason, status=status)
        self.log.warning(
            "stream_lost",
            stream_id=tracked.stream_id,
            path=tracked.file.path,
            reason=reason,
            status=status,
        )
        self.tell_owner(tracked, tracked.abandon)

    def discover(self, file: FileStat, now: float) -> None:
        """A file no tracked stream owns: an unfinished stream from before a restart, a
        finished one (perhaps renamed), or a new stream."""
        self.unsettle(file.path)
        record = self.store.stream_at(file.path)
        if record is None or not file.is_of(record):
            record = self.store.stream_with_inode(file.device, file.inode)
            active = record is not None and record.state is StreamState.ACTIVE
            if active and not self.still_the_recording(record.stream_id, file):
                record = None
        if record is not None and record.stream_id in self.streams:
            # Being abandoned or cancelled: one owner per stream, so it is not taken up
            # again before its owner reports it concluded (its file is looked at then).
            return
        if record is not None and file.is_of(record):
            if record.state is StreamState.ACTIVE:
                if record.path != file.path:
                    record = self.store.move_stream(record.stream_id, file.path)
                tracked = self.track(record, file, now, "stream_resumed")
                if self.watcher.head_changed(file.path, record.head):
                    self.abandon(tracked, REWRITTEN)
                    self.start_stream(file.path, now)
                return
            if record.state is StreamState.CANCELLED or (record.total_size, record.mtime_ns) == (
                file.size,
                file.mtime_ns,
            ):
                if record.path != file.path:
                    record = self.store.move_stream(record.stream_id, file.path)
                self.settle(file.path, _identity(file), record)
                return
        record = self.new_stream(file)
        self.track(record, file, now, "stream_discovered")

    def start_stream(self, path: str, now: float) -> None:
        file = self.watcher.stat(path)
        if file is not None:
            self.track(self.new_stream(file), file, now, "stream_discovered")

    def adopt_untracked(self, now: float) -> None:
        """Unfinished streams no one is working on: from before a restart (their files may
        have gone meanwhile), or put back by `streamer streams retry`."""
        for record in self.store.active_streams():
            if record.stream_id in self.streams:
                continue
            file = self.watcher.stat(record.path)
            if file is None or not file.is_of(record):
                file = self.watcher.find(record.inode, record.device)
            if file is not None:
                self.unsettle(file.path)
                self.discover(file, now)
            if record.stream_id not in self.streams:
                gone = FileStat(record.path, record.inode, record.device, record.committed_bytes, 0)
                tracked = self.track(record, gone, now, "stream_resumed")
                self.abandon(tracked, "deleted before it finished")

    def check_cancellations(self) -> None:
        for tracked in list(self.streams.values()):
            if tracked.phase is Phase.ABANDONING:
                continue
            if self.store.get_stream(tracked.stream_id).cancel_requested:
                self.abandon(tracked, "cancelled by an operator", StreamState.CANCELLED.value)

    def new_stream(self, file: FileStat) -> StreamRecord:
        first_seen = datetime.now(UTC)
        stream_id = naming.stream_id_for(
            os.path.basename(file.path), first_seen, self.store.has_stream
        )
        record = StreamRecord(
            stream_id=stream_id,
            path=file.path,
            inode=file.inode,
            device=file.device,
            chunk_size=self.config.stream.chunk_size,
            first_seen_at=first_seen,
        )
        self.store.create_stream(record)
        return record

    def track(self, record: StreamRecord, file: FileStat, now: float, event: str) -> Tracked:
        tracked = Tracked(
            stream_id=record.stream_id,
            file=file,
            chunk_size=record.chunk_size,
            changed_at=now,
            owner=-1,
            told_size=file.size,
            confirmed=record.committed_bytes,
            committed=record.committed_bytes,
        )
        if file.size > record.committed_bytes:
            tracked.arrivals.append((file.size, now))
        self.streams[record.stream_id] = tracked
        self.paths[file.path] = record.stream_id
        self.log.info(
            event,
            stream_id=record.stream_id,
            path=file.path,
            size=file.size,
            position=str(record.position),
        )
        self.assign(tracked, now)
        return tracked

    def assign(self, tracked: Tracked, now: float) -> None:
        tracked.owner = choose_uploader(self.uploader_loads())
        if tracked.phase is Phase.FINISHING:
            tracked.move_to(Phase.UPLOADING)
            tracked.changed_at = now
        self.workers[tracked.owner].streams.add(tracked.stream_id)
        self.tell_owner(tracked, Assign(stream_id=tracked.stream_id))
        if tracked.abandon is not None:
            self.tell_owner(tracked, tracked.abandon)

    def uploader_loads(self) -> dict[int, int]:
        """Streams owned, by running uploader."""
        return {
            w.worker_id: len(w.streams)
            for w in self.workers.values()
            if w.state is WorkerState.RUNNING
        }

    def tell_owner(self, tracked: Tracked, message) -> None:
        self.workers[tracked.owner].send(message)

    def finish_idle_streams(self, now: float) -> None:
        timeout = self.config.stream.idle_timeout
        self.next_idle_at = math.inf
        for tracked in list(self.streams.values()):
            if tracked.phase is not Phase.UPLOADING:
                continue
            if not is_idle(tracked.changed_at, now, timeout):
                self.next_idle_at = min(self.next_idle_at, tracked.changed_at + timeout)
                continue
            self.observe(tracked.file.path, now)  # trust a fresh stat, not the last event
            if tracked.phase is Phase.UPLOADING and is_idle(tracked.changed_at, now, timeout):
                tracked.move_to(Phase.FINISHING)
                self.tell_owner(
                    tracked,
                    Finish(
                        stream_id=tracked.stream_id,
                        size=tracked.file.size,
                        mtime_ns=tracked.file.mtime_ns,
                    ),
                )

    # Retention

    def settle(
        self, path: str, identity: tuple[int, int, int], record: StreamRecord | None
    ) -> None:
        """`path` holds a finished stream's file, as it was finished."""
        self.settled[path] = identity
        retention = self.config.retention
        if (
            record is not None
            and retention.enabled
            and record.source_deleted_at is None
            and retirable(record.state, retention.delete_partial)
        ):
            self.retainable[path] = Retainable(record.stream_id, record.mtime_ns, record.total_size)

    def unsettle(self, path: str) -> None:
        self.settled.pop(path, None)
        self.retainable.pop(path, None)

    def apply_retention(self, now: float) -> None:
        """One file at a time, the oldest first: under disk pressure the oldest that may
        go, else (retention.delete_after_upload) the oldest finished. The next is asked
        for as soon as the uploader answers."""
        self.next_retention = now + RETENTION_INTERVAL
        retention = self.config.retention
        need, free = self.free_space_needed() if retention.guarded else (0, 0)
        if self.retiring is not None:
            return
        if need == 0 and not retention.delete_after_upload:
            self.set_disk_pressure(False, free, free)
            return
        wall_ns = time.time_ns()
        candidates = [
            (e.mtime_ns, e.stream_id)
            for e in self.retainable.values()
            if now >= e.not_before and old_enough(e.mtime_ns, wall_ns, retention.min_age)
        ]
        chosen = next_to_retire(candidates, need, retention.delete_after_upload)
        if chosen is not None:
            self.ask_to_retire(*chosen)
        if retention.guarded:
            self.set_disk_pressure(need > 0 and self.retiring is None, free, free + need)

    def free_space_needed(self) -> tuple[int, int]:
        """Bytes to delete to get back above the free-space thresholds, and the free bytes
        now."""
        try:
            fs = os.statvfs(self.config.watch.directory)
        except OSError as exc:
            self.log.error("disk_check_failed", error=str(exc))
            return 0, 0
        free, total = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
        metrics.DISK_FREE_BYTES.set(free)
        retention = self.config.retention
        need = space_to_free(free, total, retention.min_free_bytes, retention.min_free_percent)
        return need, free

    def set_disk_pressure(self, pressure: bool, free: int, wanted: int) -> None:
        if pressure == self.disk_pressure:
            return
        self.disk_pressure = pressure
        metrics.DISK_PRESSURE.set(1 if pressure else 0)
        if pressure:
            self.log.warning(
                "disk_pressure",
                directory=self.config.watch.directory,
                free_bytes=free,
                wanted_bytes=wanted,
                message="below the free-space threshold, and no file left that may be "
                "deleted (proven in S3, finished complete, older than retention.min_age)",
            )
        else:
            self.log.info("disk_pressure_relieved", free_bytes=free)

    def ask_to_retire(self, stream_id: str, reason: str) -> None:
        loads = self.uploader_loads()
        if loads:
            uploader = choose_uploader(loads)
            self.retiring = (stream_id, uploader)
            self.workers[uploader].send(Retire(stream_id=stream_id, reason=reason))

    def retired(self, message: Retired, now: float) -> None:
        if self.retiring is not None and self.retiring[0] == message.stream_id:
            self.retiring = None
        self.next_retention = now
        for path, entry in list(self.retainable.items()):
            if entry.stream_id != message.stream_id:
                continue
            if message.deleted:
                self.unsettle(path)
            elif message.final:
                del self.retainable[path]
            else:
                entry.not_before = now + KEPT_RETRY

    # Checkpoint store and health

    def check_directories(self) -> None:
        if not os.path.isdir(self.config.watch.directory):
            raise OSError(f"watch.directory {self.config.watch.directory} is not a directory")
        path = self.config.checkpoint.path
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise OSError(f"checkpoint.path {path} is not writable")

    def prepare_store(self) -> None:
        """Before any uploader opens it: clear what killed processes left, and settle this
        host's instance name, which every uploader then writes its keys under."""
        self.open_store()
        try:
            cleared = self.store.clear_stale_readers()
            if cleared:
                self.log.info("stale_readers_cleared", count=cleared)
            instance = self.store.claim_instance(self.config.instance, naming.host_instance())
        finally:
            self.store.close()
            self.store = None
        self.config = msgspec.structs.replace(self.config, instance=instance)
        self.log.info("instance", instance=instance)

    def open_store(self) -> None:
        self.store = CheckpointStore(self.config.checkpoint.path, self.config.checkpoint.map_size)

    def update_gauges(self, now: float) -> None:
        streams = list(self.streams.values())
        for phase in Phase:
            metrics.STREAMS.labels(state=phase.value).set(
                sum(1 for t in streams if t.phase is phase)
            )
        live = [t for t in streams if t.phase is not Phase.ABANDONING]
        metrics.BYTES_ON_DISK.set(sum(t.file.size for t in live))
        metrics.BYTES_CONFIRMED.set(sum(t.confirmed for t in live))
        metrics.BYTES_COMMITTED.set(sum(t.committed for t in live))
        metrics.OLDEST_UNCOMMITTED_AGE.set(
            max((oldest_uncommitted_age(t.arrivals, t.committed, now) for t in live), default=0)
        )
        metrics.SINCE_LAST_UPLOAD.set(now - (self.last_upload or self.started_at))


def _identity(file: FileStat) -> tuple[int, int, int]:
    return (file.inode, file.size, file.mtime_ns)
