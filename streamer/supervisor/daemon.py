"""The supervisor's life: start, one loop, stop.

The loop sleeps until something happens (a file event, a message from an uploader, an
uploader's death, a signal, a metrics request, or a timer), then deals with it. Signal
handlers only queue the signal; the loop handles it by name.
"""

from __future__ import annotations

import math
import os
import select
import signal
import time
from collections import deque

from streamer import bandwidth, logs, metrics, preflight
from streamer.checkpoint import CheckpointError
from streamer.childproc import EXIT_BOOT_ERROR, EXIT_FAILURE, EXIT_OK
from streamer.config import Config, credential_source, redacted
from streamer.health import BEAT_EVERY, beat, heartbeat_path
from streamer.logs import describe
from streamer.messages import (
    CheckpointState,
    ChunkCommitted,
    ChunkUploaded,
    FinishDeclined,
    Mailbox,
    Pruned,
    Retired,
    S3State,
    SourceRewritten,
    StreamFinished,
    StreamParked,
    StreamResumed,
)
from streamer.supervisor import startup
from streamer.supervisor.context import SupervisorContext
from streamer.supervisor.discovery import Discovery
from streamer.supervisor.once import OneShotRun
from streamer.supervisor.prune_queue import PruneQueue
from streamer.supervisor.readiness import Readiness
from streamer.supervisor.retirement import Retirement
from streamer.supervisor.table import StreamTable
from streamer.supervisor.workers import MAX_RESTARTS, RESTART_WINDOW, Worker, Workers, WorkerState
from streamer.watcher import Watcher

TICK = 0.5
# A longer gap between two turns of the loop: this process itself was stopped or starved
# (a suspended host), and its uploaders' heartbeats aged meanwhile through no fault of theirs.
AWAY = 5.0


class Supervisor:
    def __init__(
        self,
        config: Config,
        clock=time.monotonic,
        once: bool = False,
        timeout: float | None = None,
    ):
        watcher = Watcher(config.watch.directory, config.watch.pattern, config.watch.depth)
        self.ctx = SupervisorContext(config, clock, logs.EventLog("supervisor"), watcher)
        self.log = self.ctx.log
        self.clock = clock
        self.workers = Workers(self.ctx, self.inherited_fds)
        self.table = StreamTable(self.ctx, self.workers)
        self.retirement = Retirement(self.ctx, self.workers)
        self.pruning = PruneQueue(self.ctx, self.workers)
        self.discovery = Discovery(self.ctx, self.table, self.retirement)
        self.signals: deque[int] = deque()
        self.metrics_server: metrics.MetricsServer | None = None
        self.stop_deadline: float | None = None
        self.exit_code: int | None = None
        self.next_request_check = 0.0
        self.last_turn = clock()  # the loop's heartbeat, for /healthz
        self.awake_since = self.last_turn  # this process was last stopped or starved until
        self.last_beat = -BEAT_EVERY  # when the heartbeat file was touched (metrics off)
        self.readiness = Readiness(self.ctx, self.workers, self.table)
        # What /readyz answers, as the loop last saw it.
        self.published = self.readiness.checks(running=True)
        self.once = once
        self.one_shot: OneShotRun | None = None  # with `once`: the streams found at start
        self.one_shot_timeout = timeout  # seconds `once` may take; None: as long as it takes
        self.one_shot_deadline = math.inf
        self.store_lock: int | None = None
        self.fixed_instance = False  # this start fixed a fresh store's instance name
        # The uploaders (by their event mailbox) that reached S3, holding the claim: they
        # answer a deletion with more than "not yet".
        self.at_s3: set[Mailbox] = set()

    @property
    def config(self) -> Config:
        return self.ctx.config

    # Life

    def run(self) -> int:
        try:
            self.initialize()
        except Exception as exc:
            # Whatever stops the start: never a process left behind with its uploaders.
            said = isinstance(exc, CheckpointError | OSError | preflight.Unmet)
            self.log.error("start_failed", error=str(exc) if said else describe(exc))
            self.workers.murder()
            self.release_instance()
            return EXIT_BOOT_ERROR
        try:
            while self.exit_code is None:
                self.loop(self.clock())
        except BaseException as exc:
            # Never leave uploaders behind, nor a process that no longer loops.
            self.log.error("supervisor_crashed", error=describe(exc))
            self.workers.murder()
            raise
        finally:
            self.shutdown()
        return self.exit_code

    def initialize(self) -> None:
        config = self.config
        startup.check_directories(config)
        self.store_lock = startup.lock_store(config)
        self.log_start()
        if config.s3.tls_skip_verify:
            self.log.warning(
                "tls_verification_off",
                message="s3.tls_skip_verify is on: anyone on the path to S3 can read and change "
                "the uploads. For development only; use s3.ca_file for a private CA.",
            )
        # What the host can refuse is asked before the store is written: a fresh store's
        # instance name is fixed there.
        if config.metrics.enabled:
            self.metrics_server = startup.bind_metrics(
                config, lambda: self.published, lambda: self.clock() - self.last_turn
            )
        # Before the first scan: from then on every change in the directory is queued.
        self.ctx.watcher.open()
        if config.retention.enabled:
            startup.check_leases(self.ctx)
        self.fixed_instance = startup.prepare_store(self.ctx)
        self.install_signals()
        rate = config.s3.max_bytes_per_second
        self.workers.bandwidth = bandwidth.TokenBucket(rate) if rate else None
        for worker_id in range(config.workers.count):
            self.workers.spawn(worker_id)
        self.ctx.open_store()
        if self.pruning.enabled:
            self.pruning.find_unpruned()
        # Every gauge, and /readyz, true from the first scrape on.
        self.readiness.update_gauges(self.clock())
        self.published = self.readiness.checks(running=True)
        if config.retention.guarded:
            self.retirement.measure_disk()
        if self.metrics_server:
            self.metrics_server.start()
            self.log.info(
                "metrics_listening", host=config.metrics.host, port=self.metrics_server.port
            )
        self.discovery.rescan(self.clock())
        self.log.info("started", streams=len(self.table))
        if self.once:
            self.start_one_shot(self.clock())

    def log_start(self) -> None:
        """The first line: what is watched and where it goes. The settings go with it in
        JSON; in text, on a line of their own, one `section.key=value` each."""
        config = self.config
        where = {
            "watching": config.watch.directory,
            "pattern": config.watch.pattern,
            "depth": config.watch.depth,
            "destination": startup.destination(config),
            "endpoint": config.s3.endpoint,
        }
        credentials = credential_source(config)
        if config.log.format == "text":
            self.log.info("starting", **where)
            self.log.info("settings", credentials=credentials, **logs.flat(redacted(config)))
        else:
            self.log.info("starting", **where, config=redacted(config), credentials=credentials)

    def start_one_shot(self, now: float) -> None:
        """`run --once`: the files found now are the work; no file that comes later is."""
        discovery = self.discovery
        discovery.quiet_by_mtime(now)
        self.one_shot = OneShotRun.of(
            (t.stream_id for t in self.table.all()), discovery.missed, discovery.unreadable
        )
        discovery.discovering = False
        discovery.only = self.one_shot.missed  # tried again at each scan
        if self.one_shot_timeout is not None:
            self.one_shot_deadline = now + self.one_shot_timeout
        self.log.info("batch_started", streams=len(self.table), passed_over=len(discovery.missed))

    def tend_one_shot(self, now: float) -> bool:
        """Is the one-shot run over (every stream ended, and no deletion due: retention and
        pruning did theirs, as the daemon would), or its time up? Then stop."""
        run = self.one_shot
        tracked = {t.file.path: t.stream_id for t in self.table.all()}
        run.follow(tracked, self.discovery.missed, os.path.lexists)
        timed_out = now >= self.one_shot_deadline
        if not run.done and not timed_out:
            return False
        files, streams = self.deletions_due(now)
        if run.done and not files and not streams:
            run.stopping(files, streams)
            self.log.info("batch_finished", **run.summary())
        elif timed_out:
            run.stopping(files, streams)
            self.log.warning("batch_timed_out", timeout=self.one_shot_timeout, **run.summary())
        else:
            return False
        self.handle_term()
        return True

    def deletions_due(self, now: float) -> tuple[list[str], list[str]]:
        """Retention's files and pruning's streams due now (or asked for)."""
        return self.retirement.due(now), self.pruning.due(now)

    def may_delete(self) -> bool:
        """`run --once` counts every answer to a deletion: it asks none before each
        uploader reached S3, when "not yet" is all it would hear."""
        return self.one_shot is None or set(self.workers.event_mailboxes()) <= self.at_s3

    def loop(self, now: float) -> None:
        if now - self.last_turn > AWAY:
            self.awake_since = now  # the uploaders' heartbeats are judged from now on
        self.last_turn = now
        if not self.config.metrics.enabled and now - self.last_beat >= BEAT_EVERY:
            beat(heartbeat_path(self.config.checkpoint.path))
            self.last_beat = now
        for ready in self.sleep():
            self.dispatch(ready, now)
        while self.signals and self.exit_code is None:
            self.handle_signal(self.signals.popleft())
        if self.exit_code is None:
            self.reap_workers(now)
            self.check_heartbeats(now)
        if self.exit_code is not None:
            return
        if self.stop_deadline is None:
            self.tend_streams(now)
        else:
            self.check_stop(now)
        self.readiness.update_gauges(now)
        self.published = self.readiness.checks(running=self.stop_deadline is None)

    def tend_streams(self, now: float) -> None:
        """The timed work of a running supervisor."""
        discovery = self.discovery
        if self.one_shot is not None and self.tend_one_shot(now):
            return
        if now >= discovery.next_rescan:
            discovery.rescan(now)
        if now >= self.next_request_check:
            self.next_request_check = now + TICK
            discovery.check_cancellations()
        discovery.finish_idle_streams(now)
        self.table.tell_stuck(now)
        if not self.may_delete():
            return
        if self.config.retention.enabled and now >= self.retirement.next_retention:
            self.retirement.apply(now, busy=self.pruning.asked.stream_id)
        if self.pruning.enabled:
            self.pruning.apply(now, busy=self.retirement.asked.stream_id)

    def shutdown(self) -> None:
        self.ctx.watcher.close()
        if self.metrics_server:
            self.metrics_server.close()
        if self.exit_code == EXIT_BOOT_ERROR:
            self.release_instance()
        self.ctx.close_store()
        self.log_active()
        self.log.info("stopped", exit_code=self.exit_code, active=len(self.table))

    def log_active(self) -> None:
        """At stop, where each active stream stands, as this process last heard: the next
        start resumes it from its uploaded bytes."""
        now, stuck_after = self.clock(), self.config.stream.stuck_after
        for t in self.table.all():
            self.log.info(
                "stream_still_active",
                stream_id=t.stream_id,
                path=t.file.path,
                phase=t.condition(now, stuck_after) or t.phase.value,
                uploaded_bytes=t.committed,
                size=t.file.size,
            )

    # Waiting and dispatching

    def sleep(self) -> list:
        workers = self.workers
        waitables = [self.wakeup_r, *workers.event_mailboxes(), *workers.sentinels()]
        if self.stop_deadline is None:
            waitables.append(self.ctx.watcher)
        try:
            ready, writable, _ = select.select(
                waitables, workers.blocked_pipes(), [], self.sleep_time()
            )
        except InterruptedError:
            return []
        if writable:
            workers.flush_outboxes()
        return ready

    def sleep_time(self) -> float:
        """Up to a tick, but no later than the moment the next stream falls idle; not at
        all if that moment has passed, since it was computed (the next loop, with a fresh
        clock, finishes that stream). While stopping, no stream is finished."""
        if self.stop_deadline is not None:
            return TICK
        return max(0.0, min(TICK, self.discovery.next_idle_at - self.clock()))

    def dispatch(self, ready, now: float) -> None:
        if isinstance(ready, int) and ready == self.wakeup_r:
            os.read(self.wakeup_r, 512)
        elif ready is self.ctx.watcher:
            self.discovery.handle_file_events(now)
        elif isinstance(ready, Mailbox):
            self.handle_worker_events(ready, now)
        # Otherwise a worker's sentinel: reap_workers sees that it died.

    def handle_worker_events(self, events: Mailbox, now: float) -> None:
        message = events.get(0)
        while message is not None:
            if isinstance(message, S3State) and message.reachable and not message.bucket_missing:
                self.at_s3.add(events)
            self.handle_event(message, now)
            message = events.get(0)

    def handle_event(self, message, now: float) -> None:
        table = self.table
        match message:
            case ChunkUploaded(stream_id=stream_id, end=end) if stream_id in table:
                table[stream_id].uploaded(end)
                self.readiness.last_upload = now
            case ChunkCommitted(stream_id=stream_id, committed_bytes=committed) if (
                stream_id in table
            ):
                table[stream_id].committed_to(committed)
            case S3State(reachable=reachable, error=error, bucket_missing=missing):
                self.readiness.s3_state(reachable, error, missing)
            case FinishDeclined(stream_id=stream_id) if stream_id in table:
                self.discovery.finish_declined(table[stream_id], now)
            case SourceRewritten(stream_id=stream_id) if stream_id in table:
                self.discovery.rewritten(table[stream_id], now)
            case StreamParked(stream_id=stream_id) if stream_id in table:
                table.parked(table[stream_id], message, now)
            case StreamResumed(stream_id=stream_id) if stream_id in table:
                table.resumed(table[stream_id])
            case StreamFinished(stream_id=stream_id) if stream_id in table:
                if self.one_shot is not None:
                    self.one_shot.concluded(stream_id, message.status)
                self.pruning.finished(stream_id, now)
                self.discovery.concluded(stream_id, message.size, message.mtime_ns, now)
            case CheckpointState(writable=writable, error=error):
                if self.ctx.checkpoint_state(writable, error) and writable:
                    self.discovery.next_rescan = now  # what was passed over meanwhile
            case Retired():
                path = self.retirement.retired(message, now)
                if self.one_shot is not None and path is not None:
                    self.one_shot.retired(path, message, os.path.lexists)
            case Pruned():
                self.pruning.pruned(message, now)
                if self.one_shot is not None:
                    self.one_shot.pruned(message)

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
            self.workers.murder()
            self.exit_code = EXIT_FAILURE
            return
        self.log.info("stopping", grace_period=self.config.grace_period)
        self.stop_deadline = self.clock() + self.config.grace_period
        self.ctx.watcher.close()
        self.workers.stop_all()

    handle_int = handle_term

    def check_stop(self, now: float) -> None:
        if not self.workers:
            self.exit_code = self.stopped_status()
        elif now >= self.stop_deadline:
            self.log.warning("grace_period_expired", uploaders=sorted(self.workers.workers))
            self.workers.murder()
            self.exit_code = self.stopped_status()

    def stopped_status(self) -> int:
        """A graceful stop is a success, unless `run --once` stopped before all its
        streams finished and every deletion due was done."""
        run = self.one_shot
        if run is None:
            return EXIT_OK
        # Noted here where a signal stopped the run (a stop of tend_one_shot's noted its own).
        run.stopping(*self.deletions_due(self.clock()))
        return EXIT_OK if run.succeeded else EXIT_FAILURE

    def release_instance(self) -> None:
        """A start that failed before any uploader reached S3 does not leave a fresh
        store tied to the instance name it was given."""
        if self.fixed_instance and not self.at_s3:
            startup.release_instance(self.ctx)

    # Uploaders

    def inherited_fds(self) -> list[int]:
        """What a forked uploader closes first: the supervisor's own descriptors."""
        fds = [self.wakeup_r, self.wakeup_w, self.store_lock, *self.ctx.watcher.fds()]
        if self.metrics_server:
            fds.append(self.metrics_server.fileno())
        return fds

    def check_heartbeats(self, now: float) -> None:
        """gunicorn's rule: an uploader whose heartbeat went stale is killed; it is
        replaced, and its streams resume elsewhere, once it is reaped."""
        for worker in self.workers.stalled(now, self.awake_since):
            self.log.error(
                "uploader_stalled",
                worker=worker.worker_id,
                pid=worker.process.pid,
                seconds_since_heartbeat=round(now - worker.heartbeat.at, 1),
                doing=worker.heartbeat.doing,
                streams=sorted(worker.streams),
            )
            metrics.UPLOADER_STALLS.inc()
            self.workers.kill(worker)

    def reap_workers(self, now: float) -> None:
        for worker in self.workers.reap():
            if worker.state is WorkerState.STOPPING:
                self.log.info(
                    "uploader_exited", worker=worker.worker_id, exit_code=worker.process.exitcode
                )
            elif worker.state is WorkerState.STALLED and worker.killed_by_us:
                self.replace_worker(worker, now)
            elif self.exit_code is None:
                self.handle_worker_death(worker, now)

    def handle_worker_death(self, worker: Worker, now: float) -> None:
        """Exit codes are a contract: one that cannot start halts the daemon, as do
        uploaders that keep dying; otherwise it is restarted and its streams go on."""
        code = worker.process.exitcode
        self.log.error(
            "uploader_died", worker=worker.worker_id, exit_code=code, streams=sorted(worker.streams)
        )
        if code == EXIT_BOOT_ERROR:
            self.halt("an uploader could not start", EXIT_BOOT_ERROR)
            return
        if not self.workers.may_restart(now):
            reason = f"more than {MAX_RESTARTS} uploader restarts in {RESTART_WINDOW:.0f} s"
            self.halt(reason, EXIT_FAILURE)
            return
        metrics.UPLOADER_RESTARTS.inc()
        self.replace_worker(worker, now)

    def replace_worker(self, worker: Worker, now: float) -> None:
        """A new uploader in its place; its streams, deletions and prunings go on from the
        checkpoint. (A stalled one is not counted against the restart budget: what
        stalls it, a dead mount, is the host's, and halting would not heal it.)"""
        self.retirement.uploader_died(worker.worker_id)
        self.pruning.uploader_died(worker.worker_id)
        self.workers.spawn(worker.worker_id)
        self.table.reassign_from(worker.worker_id, now)

    def halt(self, reason: str, exit_code: int) -> None:
        self.log.error("halting", reason=reason)
        self.workers.murder()
        self.exit_code = exit_code
