"""The uploader processes: forked, told what to do through their own command mailbox
(never blocking on a slow one), stopped, reaped, and restarted within a budget."""

from __future__ import annotations

import contextlib
import enum
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# What only uploaders use (the uploader's code, the S3 client, the CRC library) is imported
# here, once, before the first fork: each uploader then starts with it loaded and shares its
# pages. Imported after the fork, it cost every uploader a fifth of a CPU-second at each
# start, and a private copy.
import awscrt.checksums  # noqa: F401

from streamer import metrics
from streamer.bandwidth import TokenBucket
from streamer.childproc import FORK_BLOCKED_SIGNALS, Heartbeat
from streamer.messages import Mailbox, Stop
from streamer.policy import choose_uploader
from streamer.supervisor.context import SupervisorContext
from streamer.uploader import process as uploader

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


class WorkerState(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"  # told to stop: its grace period bounds the wait
    STALLED = "stalled"  # its heartbeat went stale: killed, and replaced once reaped


@dataclass
class Worker:
    worker_id: int
    process: multiprocessing.Process
    commands: Mailbox
    events: Mailbox
    heartbeat: Heartbeat
    state: WorkerState = WorkerState.RUNNING
    streams: set[str] = field(default_factory=set)
    # Commands its pipe had no room for yet: the supervisor never blocks on a slow uploader.
    outbox: deque = field(default_factory=deque)

    @property
    def killed_by_us(self) -> bool:
        """Ended by the SIGKILL of a stall, not by an exit of its own (whose code counts)."""
        return self.process.exitcode == -signal.SIGKILL

    def send(self, message) -> None:
        self.outbox.append(message)
        self.flush()

    def flush(self) -> None:
        while self.outbox and self.commands.put_nowait(self.outbox[0]):
            self.outbox.popleft()


class Workers:
    def __init__(self, ctx: SupervisorContext, inherited_fds: Callable[[], list[int]]):
        self.ctx = ctx
        self.inherited_fds = inherited_fds  # what the child closes first
        self.fork = multiprocessing.get_context("fork")
        self.workers: dict[int, Worker] = {}
        self.restarts: deque[float] = deque()
        self.bandwidth: TokenBucket | None = None

    def __getitem__(self, worker_id: int) -> Worker:
        return self.workers[worker_id]

    def __contains__(self, worker_id: int) -> bool:
        return worker_id in self.workers

    def __bool__(self) -> bool:
        return bool(self.workers)

    def spawn(self, worker_id: int) -> None:
        ctx = self.ctx
        commands = Mailbox.for_commands(self.fork)
        events = Mailbox.for_events(self.fork)
        heartbeat = Heartbeat(self.fork, ctx.clock())
        process = self.fork.Process(
            target=uploader.main,
            name=f"streamer-uploader-{worker_id}",
            args=(
                worker_id,
                ctx.config,
                commands,
                events,
                os.getpid(),
                self.inherited_fds(),
                heartbeat,
                self.bandwidth,
            ),
        )
        # An LMDB handle must not cross a fork: close ours, fork, open again. Signals wait
        # until the child has its own handlers (it unblocks them), and ours are back.
        reopen = ctx.store is not None
        ctx.close_store()
        signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED_SIGNALS)
            if reopen:
                ctx.open_store()
        self.workers[worker_id] = Worker(worker_id, process, commands, events, heartbeat)
        ctx.log.info("uploader_spawned", worker=worker_id, pid=process.pid)

    def event_mailboxes(self) -> list[Mailbox]:
        return [w.events for w in self.workers.values()]

    def sentinels(self) -> list[int]:
        return [w.process.sentinel for w in self.workers.values()]

    def blocked_pipes(self) -> list[int]:
        """The command pipes of the uploaders with commands waiting for room."""
        return [w.commands.writer_fileno() for w in self.workers.values() if w.outbox]

    def flush_outboxes(self) -> None:
        for worker in self.workers.values():
            worker.flush()

    def loads(self) -> dict[int, int]:
        """Streams owned, by running uploader."""
        return {
            w.worker_id: len(w.streams)
            for w in self.workers.values()
            if w.state is WorkerState.RUNNING
        }

    def least_loaded(self) -> int | None:
        loads = self.loads()
        return choose_uploader(loads) if loads else None

    def alive(self) -> int:
        return sum(
            1
            for w in self.workers.values()
            if w.state is WorkerState.RUNNING and w.process.is_alive()
        )

    def stop_all(self) -> None:
        for worker in self.workers.values():
            worker.state = WorkerState.STOPPING
            worker.send(Stop())

    def stalled(self, now: float, since: float) -> list[Worker]:
        """The running uploaders whose heartbeat is older than `workers.stall_timeout`,
        not counting the time before `since` (when the supervisor itself was away)."""
        timeout = self.ctx.config.workers.stall_timeout
        return [
            w
            for w in self.workers.values()
            if w.state is WorkerState.RUNNING and now - max(w.heartbeat.at, since) > timeout
        ]

    def kill(self, worker: Worker) -> None:
        """SIGKILL: a stopped process dies of it too, and a process stuck in the kernel as
        soon as it leaves it; reaped when its sentinel says so."""
        worker.state = WorkerState.STALLED
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.process.pid, signal.SIGKILL)

    def murder(self) -> None:
        for worker in self.workers.values():
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGKILL)
        for worker in list(self.workers.values()):
            self.forget(worker)

    def reap(self) -> list[Worker]:
        """The uploaders that exited since the last look, forgotten."""
        exited = [w for w in self.workers.values() if w.process.exitcode is not None]
        for worker in exited:
            self.forget(worker)
        return exited

    def forget(self, worker: Worker) -> None:
        worker.process.join()
        metrics.mark_process_dead(worker.process.pid)
        worker.commands.close()
        worker.events.close()
        self.workers.pop(worker.worker_id, None)

    def may_restart(self, now: float) -> bool:
        """Within the budget: no more than MAX_RESTARTS in RESTART_WINDOW seconds."""
        self.restarts.append(now)
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW:
            self.restarts.popleft()
        return len(self.restarts) <= MAX_RESTARTS
