"""What the supervisor learns from the watched directory: file events and scans, each path
brought up to date with a fresh stat. A file no stream owns is discovered (a new stream,
or one from before a restart); a stream's file that grew, moved, went away or fell idle
moves that stream along."""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime

from streamer import fileio, naming
from streamer.checkpoint import CheckpointError, CheckpointUnwritable, UnreadableStream
from streamer.logs import describe
from streamer.messages import Finish, Moved
from streamer.policy import changed_at_by_mtime, is_idle
from streamer.records import StreamRecord, StreamState
from streamer.supervisor.context import SupervisorContext
from streamer.supervisor.retirement import Retirement, identity
from streamer.supervisor.table import StreamPhase, StreamTable, Tracked
from streamer.watcher import WATCHES_SYSCTL, FileStat

REWRITTEN = "another recording was written over it before it finished"


class Discovery:
    def __init__(self, ctx: SupervisorContext, table: StreamTable, retirement: Retirement):
        self.ctx = ctx
        self.table = table
        self.retirement = retirement
        self.next_rescan = 0.0
        self.next_idle_at = math.inf  # when the next stream falls idle
        self.unreadable: set[str] = set()  # streams whose records do not decode, reported
        # Off after the first scan of `run --once`: only the files found then are streams,
        # and of those only the ones passed over then (`only`) are looked for again.
        self.discovering = True
        self.only: set[str] = set()
        self.missed: set[str] = set()  # paths whose last look failed (tried at each scan)
        self.failed: dict[str, str] = {}  # path -> the error its last look logged
        self.watches_refused = False  # the kernel refused a folder a watch (and it was said)
        self.unreadable_folders: set[str] = set()  # as the last scan found them

    def handle_file_events(self, now: float) -> None:
        changes = self.ctx.watcher.read()
        if changes.overflow:
            self.ctx.log.warning("inotify_overflow")
        if changes.overflow or changes.folders_changed:
            self.rescan(now)
        for path in changes.deleted:
            self.forget_deleted(path)
        for path in changes.paths:
            self.observe_safely(path, now)

    def forget_deleted(self, path: str) -> None:
        tracked = self.table.at(path)
        if tracked is None:
            return
        file = self.ctx.watcher.stat(path)
        if file is None or not file.same_file(tracked.file):
            self.table.abandon(tracked, "deleted before it finished")

    def rescan(self, now: float) -> None:
        watcher = self.ctx.watcher
        self.next_rescan = now + self.ctx.config.watch.rescan_interval
        try:
            found = watcher.scan()
        except OSError as exc:
            self.ctx.log.error("scan_failed", directory=watcher.directory, error=str(exc))
            return
        finally:
            self.say_out_of_watches()
        for folder in self.unreadable_folders - watcher.unreadable.keys():
            self.failed.pop(folder, None)  # readable again: a new failure is said again
        self.unreadable_folders = set(watcher.unreadable)
        for folder, exc in watcher.unreadable.items():
            self.say_failed(folder, describe(exc))
        for path in found.keys() | self.table.paths.keys() | self.retirement.retainable.keys():
            self.observe_safely(path, now, found.get(path))
        if self.discovering:
            self.adopt_untracked(now)

    def say_out_of_watches(self) -> None:
        """Said once: the folders the kernel refused a watch are still scanned, each
        `rescan_interval`, so their recordings are found that much later."""
        exc, self.ctx.watcher.out_of_watches = self.ctx.watcher.out_of_watches, None
        if exc is not None and not self.watches_refused:
            self.watches_refused = True
            self.ctx.log.warning(
                "inotify_watches_exhausted",
                error=describe(exc),
                hint=f"raise {WATCHES_SYSCTL} (sysctl -w {WATCHES_SYSCTL}=524288); until "
                "then, folders without a watch are scanned every watch.rescan_interval",
            )

    def observe_safely(self, path: str, now: float, file: FileStat | None = None) -> None:
        self.contained(path, self.observe, path, now, file)

    def contained(self, path: str, work, *args) -> None:
        """One odd file, or a checkpoint store that takes no writes for now, never stops
        the daemon: it is logged, and the file looked at again by the next scan."""
        try:
            work(*args)
        except CheckpointUnwritable as exc:
            self.missed.add(path)
            self.ctx.checkpoint_state(False, describe(exc))
        except UnreadableStream as exc:
            self.passed_over(exc)
        except (OSError, ValueError, CheckpointError) as exc:
            self.missed.add(path)
            self.say_failed(path, describe(exc))
        else:
            self.missed.discard(path)
            self.failed.pop(path, None)

    def say_failed(self, path: str, error: str) -> None:
        """A file or folder that could not be read: said once at error level; the same
        again at each scan, at debug level."""
        if self.failed.get(path) == error:
            self.ctx.log.debug("file_failed", path=path, error=error)
        else:
            self.ctx.log.error("file_failed", path=path, error=error)
        self.failed[path] = error

    def wrote(self) -> None:
        """A write to the checkpoint store succeeded: if the last one had failed, what was
        passed over meanwhile is looked at again now."""
        if self.ctx.checkpoint_state(True):
            self.next_rescan = 0.0

    def observe(self, path: str, now: float, file: FileStat | None = None) -> None:
        """Bring what is known of `path` up to date with a fresh stat of it."""
        watcher = self.ctx.watcher
        file = file or watcher.stat(path)
        tracked = self.table.at(path)
        if tracked and (file is None or not file.same_file(tracked.file)):
            self.lose(tracked, now)
            tracked = None
        if file is None:
            self.retirement.unsettle(path)
            return
        if tracked is None:
            moved = self.table.holding(file)
            if moved and self.still_the_recording(moved.stream_id, file):
                self.move(moved, file, now)
            elif (
                (self.discovering or path in self.only)
                and watcher.matches(os.path.basename(path))
                and not self.retirement.is_settled(file)
            ):
                self.discover(file, now)
            return
        if file.changed_since(tracked.file):
            self.table.changed(tracked, file, now)

    def lose(self, tracked: Tracked, now: float) -> None:
        """Its path no longer holds its file: follow the file if it was renamed within the
        directory, else finish the stream with what S3 has."""
        found = self.ctx.watcher.find(tracked.file.inode, tracked.file.device)
        if found is not None and self.still_the_recording(tracked.stream_id, found):
            self.move(tracked, found, now)
        elif os.path.lexists(tracked.file.path):
            self.table.abandon(tracked, "replaced by another file before it finished")
        else:
            self.table.abandon(tracked, "deleted before it finished")

    def still_the_recording(self, stream_id: str, file: FileStat) -> bool:
        """A renamed recording keeps what was uploaded of it: at least as many bytes, and the
        same first bytes. A new file that merely reuses a deleted file's inode does not."""
        record = self.ctx.store.get_stream(stream_id)
        return file.size >= record.committed_bytes and not fileio.head_changed(
            file.path, record.head
        )

    def move(self, tracked: Tracked, file: FileStat, now: float) -> None:
        displaced = self.table.at(file.path)
        if displaced is not None and displaced is not tracked:
            self.lose(displaced, now)
        self.move_record(tracked.stream_id, file.path)
        self.wrote()
        old_path = self.table.move(tracked, file, now)
        self.ctx.log.info(
            "stream_renamed", stream_id=tracked.stream_id, old_path=old_path, path=file.path
        )
        self.table.tell_owner(tracked, Moved(stream_id=tracked.stream_id))

    def move_record(self, stream_id: str, path: str) -> StreamRecord:
        """The stream's file is at `path` now: so says its record, relative path too."""
        return self.ctx.store.move_stream(stream_id, path, self.ctx.watcher.relative(path))

    def discover(self, file: FileStat, now: float) -> None:
        """A file no tracked stream owns: an unfinished stream from before a restart, a
        finished one (perhaps renamed), or a new stream."""
        store = self.ctx.store
        self.retirement.unsettle(file.path)
        record = store.stream_at(file.path)
        if record is None or not file.is_of(record):
            record = store.stream_with_inode(file.device, file.inode)
            active = record is not None and record.state is StreamState.ACTIVE
            if active and not self.still_the_recording(record.stream_id, file):
                record = None
        if record is not None and record.stream_id in self.table:
            # Being abandoned or cancelled: one owner per stream, so it is not taken up
            # again before its owner reports it concluded (its file is looked at then).
            return
        if record is not None and file.is_of(record):
            if record.state is StreamState.ACTIVE:
                if record.path != file.path:
                    record = self.move_record(record.stream_id, file.path)
                tracked = self.table.track(record, file, now, "stream_resumed")
                if fileio.head_changed(file.path, record.head):
                    self.table.abandon(tracked, REWRITTEN)
                    self.start_stream(file.path, now)
                return
            if record.state is StreamState.CANCELLED or (record.total_size, record.mtime_ns) == (
                file.size,
                file.mtime_ns,
            ):
                if record.path != file.path:
                    record = self.move_record(record.stream_id, file.path)
                self.retirement.settle(file.path, identity(file), record)
                return
        record = self.new_stream(file)
        self.table.track(record, file, now, "stream_discovered")

    def start_stream(self, path: str, now: float) -> None:
        file = self.ctx.watcher.stat(path)
        if file is not None:
            self.table.track(self.new_stream(file), file, now, "stream_discovered")

    def rewritten(self, tracked: Tracked, now: float) -> None:
        """Its uploader found another recording written over its file: it ends, and the
        new recording is a new stream."""
        if tracked.phase is not StreamPhase.ABANDONING:
            self.table.abandon(tracked, REWRITTEN)
            self.contained(tracked.file.path, self.start_stream, tracked.file.path, now)

    def adopt_untracked(self, now: float) -> None:
        """Unfinished streams no one is working on: from before a restart (their files may
        have gone meanwhile), or put back by `streamer streams retry`."""
        records, unreadable = self.ctx.store.active_streams()
        for exc in unreadable:
            self.passed_over(exc)
        for record in records:
            if record.stream_id not in self.table:
                self.contained(record.path, self.adopt, record, now)

    def passed_over(self, exc: UnreadableStream) -> None:
        """Reported once: its record stays as it is, for an operator (or a newer version)."""
        if exc.stream_id not in self.unreadable:
            self.unreadable.add(exc.stream_id)
            self.ctx.log.error("stream_unreadable", stream_id=exc.stream_id, error=str(exc))

    def adopt(self, record: StreamRecord, now: float) -> None:
        watcher = self.ctx.watcher
        file = watcher.stat(record.path)
        if file is None or not file.is_of(record):
            file = watcher.find(record.inode, record.device)
        if file is not None:
            self.retirement.unsettle(file.path)
            self.discover(file, now)
        if record.stream_id not in self.table:
            gone = FileStat(record.path, record.inode, record.device, record.committed_bytes, 0)
            tracked = self.table.track(record, gone, now, "stream_resumed")
            self.table.abandon(tracked, "deleted before it finished")

    def check_cancellations(self) -> None:
        for tracked in self.table.all():
            if tracked.phase is StreamPhase.ABANDONING:
                continue
            record = self.ctx.store.find_stream(tracked.stream_id)
            if record is not None and record.cancel_requested:  # None: forgotten meanwhile
                cancelled = StreamState.CANCELLED.value
                self.table.abandon(tracked, "cancelled by an operator", cancelled)

    def new_stream(self, file: FileStat) -> StreamRecord:
        first_seen = datetime.now(UTC)
        store = self.ctx.store
        relative = self.ctx.watcher.relative(file.path)
        stream_id = naming.stream_id_for(relative, first_seen, store.has_stream)
        record = StreamRecord(
            stream_id=stream_id,
            path=file.path,
            relative_path=relative,
            inode=file.inode,
            device=file.device,
            chunk_size=self.ctx.config.stream.chunk_size,
            first_seen_at=first_seen,
        )
        store.create_stream(record)
        self.wrote()
        return record

    def quiet_by_mtime(self, now: float) -> None:
        """Date each stream's last change by its file's mtime, not by when it was found:
        `run --once` finishes at once a file quiet for `idle_timeout` already."""
        wall_now_ns = time.time_ns()
        for tracked in self.table.all():
            by_mtime = changed_at_by_mtime(now, wall_now_ns, tracked.file.mtime_ns)
            tracked.changed_at = min(tracked.changed_at, by_mtime)

    def finish_idle_streams(self, now: float) -> None:
        timeout = self.ctx.config.stream.idle_timeout
        self.next_idle_at = math.inf
        for tracked in self.table.all():
            if tracked.phase is not StreamPhase.STREAMING:
                continue
            if not is_idle(tracked.changed_at, now, timeout):
                self.next_idle_at = min(self.next_idle_at, tracked.changed_at + timeout)
                continue
            self.observe_safely(tracked.file.path, now)  # a fresh stat, not the last event
            if tracked.phase is StreamPhase.STREAMING and is_idle(tracked.changed_at, now, timeout):
                tracked.move_to(StreamPhase.FINISHING)
                file = tracked.file
                self.table.tell_owner(
                    tracked,
                    Finish(stream_id=tracked.stream_id, size=file.size, mtime_ns=file.mtime_ns),
                )

    def finish_declined(self, tracked: Tracked, now: float) -> None:
        """Its file changed while its uploader was finishing it: it streams on."""
        if tracked.phase is StreamPhase.FINISHING:
            tracked.move_to(StreamPhase.STREAMING)
            tracked.changed_at = now
            self.observe_safely(tracked.file.path, now)

    def concluded(self, stream_id: str, size: int, mtime_ns: int, now: float) -> None:
        """Its uploader reports it finished: its file, if still at its path, is settled as
        the uploader finished it; a change since then is seen now."""
        tracked, held_path = self.table.untrack(stream_id)
        if held_path:
            path = tracked.file.path
            settled = (tracked.file.inode, size, mtime_ns)
            self.retirement.settle(path, settled, self.ctx.store.find_stream(stream_id))
            self.observe_safely(path, now)
