"""Finished files: the paths that hold a stream's file as it was finished (settled: not a
new stream), and retention's choice of which of them an uploader deletes next, one at a
time, under disk pressure or as soon as it is proven in S3."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from streamer import metrics
from streamer.messages import Retire, Retired
from streamer.policy import next_to_retire, old_enough, retirable, space_to_free
from streamer.records import StreamRecord
from streamer.supervisor.context import SupervisorContext
from streamer.supervisor.errands import OneAtATime
from streamer.supervisor.workers import Workers
from streamer.watcher import FileStat

RETENTION_INTERVAL = 1.0
KEPT_RETRY = 60.0  # a file retention kept is not asked about again sooner


@dataclass
class Retainable:
    """A finished file that retention may delete, once an uploader has proven it in S3."""

    stream_id: str
    mtime_ns: int
    size: int
    not_before: float = 0.0  # kept the last time: not asked again before then


def identity(file: FileStat) -> tuple[int, int, int]:
    return (file.inode, file.size, file.mtime_ns)


class Retirement:
    def __init__(self, ctx: SupervisorContext, workers: Workers):
        self.ctx = ctx
        self.settled: dict[str, tuple[int, int, int]] = {}  # path -> identity
        self.retainable: dict[str, Retainable] = {}  # by path
        # The file asked to be deleted, by path: the deletion's own file events may unsettle
        # it before the answer comes.
        self.asked = OneAtATime(workers)
        self.next_retention = 0.0
        self.disk_pressure = False

    def is_settled(self, file: FileStat) -> bool:
        """Does `file` hold a finished stream's file, unchanged since it finished?"""
        return self.settled.get(file.path) == identity(file)

    def settle(self, path: str, settled: tuple[int, int, int], record: StreamRecord | None) -> None:
        """`path` holds a finished stream's file, as it was finished."""
        self.settled[path] = settled
        retention = self.ctx.config.retention
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

    def apply(self, now: float, busy: str | None = None) -> None:
        """One file at a time, the oldest first: under disk pressure the oldest that may
        go, else (retention.delete_after_upload) the oldest finished. The next is asked
        for as soon as the uploader answers. A `busy` stream waits (its chunks are being
        pruned: both rewrite metadata.json)."""
        self.next_retention = now + RETENTION_INTERVAL
        retention = self.ctx.config.retention
        need, free = self.free_space_needed() if retention.guarded else (0, 0)
        if self.asked.errand is not None:
            return
        if need == 0 and not retention.delete_after_upload:
            self.set_disk_pressure(False, free, free)
            return
        chosen = next_to_retire(self.candidates(now, busy), need, retention.delete_after_upload)
        if chosen is not None:
            self.ask_to_retire(*chosen)
        if retention.guarded:
            self.set_disk_pressure(need > 0 and self.asked.errand is None, free, free + need)

    def candidates(self, now: float, busy: str | None = None) -> list[tuple[int, str]]:
        """(mtime_ns, stream id) of the files that may be deleted now."""
        wall_ns = time.time_ns()
        min_age = self.ctx.config.retention.min_age
        return [
            (e.mtime_ns, e.stream_id)
            for e in self.retainable.values()
            if now >= e.not_before
            and old_enough(e.mtime_ns, wall_ns, min_age)
            and e.stream_id != busy
        ]

    def due(self, now: float) -> list[str]:
        """The files retention deletes now, one after the other, and the one it asked
        for: what `run --once` waits for before it stops."""
        retention = self.ctx.config.retention
        need = self.free_space_needed()[0] if retention.guarded else 0
        candidates = self.candidates(now)
        if retention.delete_after_upload:
            due = {stream_id for _, stream_id in candidates}
        else:
            chosen = next_to_retire(candidates, need, delete_after_upload=False)
            due = {chosen[0]} if chosen is not None else set()
        paths = {path for path, e in self.retainable.items() if e.stream_id in due}
        if self.asked.errand is not None:
            paths.add(self.asked.errand.path)
        return sorted(paths)

    def free_space_needed(self) -> tuple[int, int]:
        """Bytes to delete to get back above the free-space thresholds, and the free bytes
        now."""
        config = self.ctx.config
        try:
            fs = os.statvfs(config.watch.directory)
        except OSError as exc:
            self.ctx.log.error("disk_check_failed", error=str(exc))
            return 0, 0
        free, total = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
        metrics.DISK_FREE_BYTES.set(free)
        retention = config.retention
        need = space_to_free(free, total, retention.min_free_bytes, retention.min_free_percent)
        return need, free

    def measure_disk(self) -> None:
        """The free-space gauges, before the first scrape."""
        self.free_space_needed()
        metrics.DISK_PRESSURE.set(1 if self.disk_pressure else 0)

    def set_disk_pressure(self, pressure: bool, free: int, wanted: int) -> None:
        if pressure == self.disk_pressure:
            return
        self.disk_pressure = pressure
        metrics.DISK_PRESSURE.set(1 if pressure else 0)
        if pressure:
            self.ctx.log.warning(
                "disk_pressure",
                directory=self.ctx.config.watch.directory,
                free_bytes=free,
                wanted_bytes=wanted,
                message="below the free-space threshold, and no file left that may be "
                "deleted (proven in S3, finished complete, older than retention.min_age)",
            )
        else:
            self.ctx.log.info("disk_pressure_relieved", free_bytes=free)

    def ask_to_retire(self, stream_id: str, reason: str) -> None:
        path = next(path for path, e in self.retainable.items() if e.stream_id == stream_id)
        self.asked.ask(Retire(stream_id=stream_id, reason=reason), path)

    def retired(self, message: Retired, now: float) -> str | None:
        """The uploader's answer; returns the path of the file it is about, if retention
        held one."""
        errand = self.asked.answered(message.stream_id)
        found = errand.path if errand is not None else None
        self.next_retention = now
        for path, entry in list(self.retainable.items()):
            if entry.stream_id != message.stream_id:
                continue
            found = path
            if message.deleted:
                self.unsettle(path)
            elif message.final:
                del self.retainable[path]
            else:
                entry.not_before = now + max(KEPT_RETRY, message.retry_in)
        return found

    def uploader_died(self, worker_id: int) -> None:
        """Its deletion, if it was asked for one, will never be answered."""
        self.asked.uploader_died(worker_id)
