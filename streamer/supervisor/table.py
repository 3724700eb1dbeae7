"""The supervisor's table of active streams: each with its phase (guarded moves), its
file, its one owner, and how far its bytes have got; and the index of which stream's file
is at which path."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from streamer.messages import Abandon, Assign, Grow, StreamParked
from streamer.policy import choose_uploader, stream_condition
from streamer.records import StreamRecord
from streamer.supervisor.context import SupervisorContext
from streamer.supervisor.workers import Workers
from streamer.watcher import FileStat


class StreamPhase(enum.Enum):
    """A stream's life in the supervisor (the uploader's side of it is
    uploader.jobs.JobPhase). Every change goes through Tracked.move_to, along _PHASE_MOVES;
    the stream leaves the table when its owner reports it finished."""

    STREAMING = "streaming"  # its uploader sends chunks as they fill
    FINISHING = "finishing"  # idle: its uploader was told to finish it
    ABANDONING = "abandoning"  # its file is gone: its uploader was told to finish it as partial


_PHASE_MOVES = {
    StreamPhase.STREAMING: {StreamPhase.FINISHING, StreamPhase.ABANDONING},
    StreamPhase.FINISHING: {StreamPhase.STREAMING, StreamPhase.ABANDONING},
    StreamPhase.ABANDONING: set(),
}


@dataclass
class Parking:
    """Why a stream's steps fail, since when, and when its owner tries again."""

    reason: str
    since: float
    due: float
    heals: bool
    bug: bool
    told_stuck: bool = False


@dataclass
class Tracked:
    """A stream the supervisor is responsible for until its uploader reports it finished."""

    stream_id: str
    file: FileStat
    chunk_size: int
    changed_at: float
    owner: int
    told_size: int
    phase: StreamPhase = StreamPhase.STREAMING
    abandon: Abandon | None = None  # what its uploader was told, once it is abandoning
    # Delivery state: bytes S3 confirmed, bytes in the checkpoint, and when the file reached
    # each size not yet committed (for the age of the oldest byte waiting).
    confirmed: int = 0
    committed: int = 0
    arrivals: deque = field(default_factory=deque)
    parking: Parking | None = None  # while its steps fail

    def condition(self, now: float, stuck_after: float) -> str | None:
        """`parked`, `stuck`, or None (see policy.stream_condition)."""
        p = self.parking
        if p is None:
            return None
        return stream_condition(p.since, p.due, p.bug, now, stuck_after)

    def is_at(self, file: FileStat) -> bool:
        """Could `file` be this stream's file under another name? (Its inode, at least: a
        deleted file's inode number is soon given to a new file.)"""
        return self.phase is not StreamPhase.ABANDONING and file.same_file(self.file)

    def move_to(self, phase: StreamPhase) -> None:
        assert phase in _PHASE_MOVES[self.phase], f"{self.stream_id}: {self.phase} -> {phase}"
        self.phase = phase

    def uploaded(self, end: int) -> None:
        self.confirmed = max(self.confirmed, end)

    def committed_to(self, committed: int) -> None:
        self.committed = self.confirmed = committed
        while self.arrivals and self.arrivals[0][0] <= committed:
            self.arrivals.popleft()


class StreamTable:
    def __init__(self, ctx: SupervisorContext, workers: Workers):
        self.ctx = ctx
        self.workers = workers
        self.streams: dict[str, Tracked] = {}  # by stream id
        self.paths: dict[str, str] = {}  # path -> id of the stream whose file is there

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self.streams

    def __getitem__(self, stream_id: str) -> Tracked:
        return self.streams[stream_id]

    def __len__(self) -> int:
        return len(self.streams)

    def all(self) -> list[Tracked]:
        return list(self.streams.values())

    def at(self, path: str) -> Tracked | None:
        """The stream whose file is at `path`, if any."""
        return self.streams.get(self.paths.get(path, ""))

    def holding(self, file: FileStat) -> Tracked | None:
        """The stream whose file `file` could be under another name."""
        return next((t for t in self.streams.values() if t.is_at(file)), None)

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
        self.ctx.log.info(
            event,
            stream_id=record.stream_id,
            path=file.path,
            size=file.size,
            position=str(record.position),
        )
        self.assign(tracked, now)
        return tracked

    def untrack(self, stream_id: str) -> tuple[Tracked, bool]:
        """The stream leaves the table; and did it still hold its path?"""
        tracked = self.streams.pop(stream_id)
        if tracked.owner in self.workers:
            self.workers[tracked.owner].streams.discard(stream_id)
        held = self.paths.get(tracked.file.path) == stream_id
        if held:
            del self.paths[tracked.file.path]
        return tracked, held

    def move(self, tracked: Tracked, file: FileStat, now: float) -> str:
        """Its file is at another path now; returns the old one."""
        old_path = tracked.file.path
        if self.paths.get(old_path) == tracked.stream_id:
            del self.paths[old_path]
        self.paths[file.path] = tracked.stream_id
        tracked.file = file
        tracked.changed_at = now
        return old_path

    def changed(self, tracked: Tracked, file: FileStat, now: float) -> None:
        """Its file changed; its owner hears of it when a chunk more is there to send."""
        if file.size > tracked.file.size:
            tracked.arrivals.append((file.size, now))
        tracked.file = file
        tracked.changed_at = now
        if file.size // tracked.chunk_size > tracked.told_size // tracked.chunk_size:
            tracked.told_size = file.size
            self.tell_owner(tracked, Grow(stream_id=tracked.stream_id, size=file.size))

    def assign(self, tracked: Tracked, now: float) -> None:
        loads = self.workers.loads()
        if not loads:
            return  # stopping: no uploader takes it now; the next start resumes it
        tracked.owner = choose_uploader(loads)
        if tracked.phase is StreamPhase.FINISHING:
            tracked.move_to(StreamPhase.STREAMING)
            tracked.changed_at = now
        self.workers[tracked.owner].streams.add(tracked.stream_id)
        self.tell_owner(tracked, Assign(stream_id=tracked.stream_id))
        if tracked.abandon is not None:
            self.tell_owner(tracked, tracked.abandon)

    def reassign_from(self, worker_id: int, now: float) -> None:
        """Its uploader died: each of its streams goes to a running one."""
        for tracked in self.all():
            if tracked.owner == worker_id:
                self.assign(tracked, now)

    def parked(self, tracked: Tracked, message: StreamParked, now: float) -> None:
        """Its owner failed a step: it waits `delay`. Failing since the first failure
        without a success between, whichever uploader owned it then."""
        since = now - message.failing_for
        if tracked.parking is not None:
            since = min(since, tracked.parking.since)
        told = tracked.parking is not None and tracked.parking.told_stuck
        tracked.parking = Parking(
            message.reason, since, now + message.delay, message.heals, message.bug, told
        )

    def resumed(self, tracked: Tracked) -> None:
        if tracked.parking is not None and tracked.parking.told_stuck:
            self.ctx.log.info("stream_unstuck", stream_id=tracked.stream_id)
        tracked.parking = None

    def tell_stuck(self, now: float) -> None:
        """Each stream that turned stuck is said once, at error level."""
        stuck_after = self.ctx.config.stream.stuck_after
        for tracked in self.streams.values():
            p = tracked.parking
            if p is None or p.told_stuck or tracked.condition(now, stuck_after) != "stuck":
                continue
            p.told_stuck = True
            self.ctx.log.error(
                "stream_stuck",
                stream_id=tracked.stream_id,
                path=tracked.file.path,
                reason=p.reason,
                failing_for=round(now - p.since, 1),
                heals=p.heals,
            )

    def tell_owner(self, tracked: Tracked, message) -> None:
        if tracked.owner in self.workers:
            self.workers[tracked.owner].send(message)

    def abandon(self, tracked: Tracked, reason: str, status: str = "partial") -> None:
        if self.paths.get(tracked.file.path) == tracked.stream_id:
            del self.paths[tracked.file.path]
        tracked.move_to(StreamPhase.ABANDONING)
        tracked.abandon = Abandon(stream_id=tracked.stream_id, reason=reason, status=status)
        self.ctx.log.warning(
            "stream_lost",
            stream_id=tracked.stream_id,
            path=tracked.file.path,
            reason=reason,
            status=status,
        )
        self.tell_owner(tracked, tracked.abandon)
