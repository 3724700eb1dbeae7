"""What is in the watch directory: inotify events for speed, directory scans for truth.

Events are only hints about which names to look at again; every decision is made on a
fresh stat. A scan at start, on queue overflow and every rescan interval catches
whatever the events missed.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass

from inotify_simple import INotify
from inotify_simple import flags as F

from streamer.fileio import SourceChanged, SourceUnreadable, open_regular

# How many first bytes tell one recording from another written over it in place.
HEAD_SIZE = 16
WATCH_FLAGS = F.CREATE | F.MODIFY | F.CLOSE_WRITE | F.MOVED_TO | F.MOVED_FROM | F.DELETE | F.ATTRIB


@dataclass(frozen=True)
class FileStat:
    path: str
    inode: int
    device: int
    size: int
    mtime_ns: int

    def changed_since(self, other: FileStat) -> bool:
        return (self.size, self.mtime_ns) != (other.size, other.mtime_ns)

    def same_file(self, other: FileStat) -> bool:
        return (self.inode, self.device) == (other.inode, other.device)

    def is_of(self, record) -> bool:
        """Is this the file a checkpoint StreamRecord was made from?"""
        return (self.inode, self.device) == (record.inode, record.device)


@dataclass(frozen=True)
class Batch:
    """What one read of the inotify queue said: paths to look at again (whatever their
    name: a stream's file may be renamed to anything), paths whose file was unlinked, and
    whether events were lost."""

    paths: frozenset[str]
    deleted: frozenset[str]
    overflow: bool


class Watcher:
    def __init__(self, directory: str, pattern: str):
        self.directory = os.path.abspath(directory)
        self._pattern = pattern.lower()
        self._inotify: INotify | None = None

    def open(self) -> None:
        self._inotify = INotify()
        self._inotify.add_watch(self.directory, WATCH_FLAGS)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def fileno(self) -> int:
        return self._inotify.fileno()

    def fds(self) -> list[int]:
        """The descriptors it holds open: a forked child closes them."""
        return [] if self._inotify is None else [self._inotify.fileno()]

    def read(self) -> Batch:
        events = self._inotify.read(timeout=0)
        overflow = any(e.mask & F.Q_OVERFLOW for e in events)
        paths = frozenset(os.path.join(self.directory, e.name) for e in events if e.name)
        deleted = frozenset(
            os.path.join(self.directory, e.name) for e in events if e.name and e.mask & F.DELETE
        )
        return Batch(paths=paths, deleted=deleted, overflow=overflow)

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name.lower(), self._pattern)

    def scan(self) -> dict[str, FileStat]:
        found = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if self.matches(entry.name):
                    observed = self.stat(entry.path)
                    if observed is not None:
                        found[entry.path] = observed
        return found

    def find(self, inode: int, device: int) -> FileStat | None:
        """The regular file in the directory with this identity, whatever its name."""
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.inode() == inode:
                    found = self.stat(entry.path)
                    if found is not None and found.device == device:
                        return found
        return None

    @staticmethod
    def head_changed(path: str, head: bytes | None) -> bool:
        """Do the file's first bytes differ from `head` (a recording rewritten in place by
        another one)? Only bytes both have are compared; an unreadable file has not."""
        if not head:
            return False
        try:
            with open_regular(path) as f:
                now = f.read(HEAD_SIZE)
        except (OSError, SourceChanged, SourceUnreadable):
            return False
        common = min(len(now), len(head))
        return now[:common] != head[:common]

    @staticmethod
    def stat(path: str) -> FileStat | None:
        """The file's identity and size, or None if it is gone or not a regular file."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return FileStat(path, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
