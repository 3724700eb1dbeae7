"""What is in the watch directory and its folders: inotify events for speed, directory
scans for truth.

Events are only hints about which names to look at again; every decision is made on a
fresh stat. A scan at start, on queue overflow, after a folder came or went, and every
rescan interval catches whatever the events missed. Folders are watched down to
`max_depth` below the watch directory; a folder made while the daemon runs is watched by
the scan its event brings, which finds what was written in it before too.
Symbolic links to folders are not followed (a loop would never end), nor hidden folders
(`.Trash-1000` on a card). When the kernel refuses more watches, the folders left unwatched
are found by the periodic scan alone.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from inotify_simple import INotify
from inotify_simple import flags as F

WATCH_FLAGS = (
    F.CREATE
    | F.MODIFY
    | F.CLOSE_WRITE
    | F.MOVED_TO
    | F.MOVED_FROM
    | F.DELETE
    | F.ATTRIB
    | F.ONLYDIR
)
WATCHES_SYSCTL = "fs.inotify.max_user_watches"


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
class Changes:
    """What one read of the inotify queue said: paths to look at again (whatever their
    name: a stream's file may be renamed to anything), paths whose file was unlinked,
    whether events were lost, and whether a folder came or went (both: everything is looked
    at again)."""

    paths: frozenset[str]
    deleted: frozenset[str]
    overflow: bool
    folders_changed: bool = False


class Watcher:
    def __init__(self, directory: str, pattern: str, max_depth: int = 0):
        self.directory = os.path.abspath(directory)
        self._pattern = pattern.lower()
        self.max_depth = max_depth
        self._inotify: INotify | None = None
        self._folders: dict[int, str] = {}  # watch descriptor -> folder
        self._watched: dict[str, int] = {}  # folder -> watch descriptor
        # Set when the kernel refused a watch for want of them (and not yet said).
        self.out_of_watches: OSError | None = None
        self.unreadable: dict[str, OSError] = {}  # folders the last walk could not read

    def open(self) -> None:
        self._inotify = INotify()
        self._watch(self.directory)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._folders.clear()
        self._watched.clear()

    def fileno(self) -> int:
        return self._inotify.fileno()

    def fds(self) -> list[int]:
        """The descriptors it holds open: a forked child closes them."""
        return [] if self._inotify is None else [self._inotify.fileno()]

    def read(self) -> Changes:
        events = self._inotify.read(timeout=0)
        paths, deleted, overflow, folders_changed = set(), set(), False, False
        for event in events:
            if event.mask & F.Q_OVERFLOW:
                overflow = True
            if event.mask & F.IGNORED:  # its folder was deleted, or moved out of reach
                self._forget(event.wd)
                continue
            folder = self._folders.get(event.wd)
            if folder is None or not event.name:
                continue
            path = os.path.join(folder, event.name)
            if event.mask & F.ISDIR:
                # A folder came or went: the scan that follows watches it and those in it,
                # and finds the files in them, or follows those moved away with it.
                folders_changed = True
                if event.mask & (F.MOVED_FROM | F.DELETE):
                    self._unwatch_below(path)
                continue
            paths.add(path)
            if event.mask & F.DELETE:
                deleted.add(path)
        return Changes(frozenset(paths), frozenset(deleted), overflow, folders_changed)

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name.lower(), self._pattern)

    def relative(self, path: str) -> str:
        """The path of a file below the watch directory, from it (`cam1/late.mp4`)."""
        return os.path.relpath(path, self.directory)

    def scan(self) -> dict[str, FileStat]:
        """Every matching file in the watched folders; folders not yet watched are watched
        from now on (one just made or moved in, one made while events were lost, or one
        refused a watch before)."""
        found = {}
        for folder, entries in self._walk():
            if self._inotify is not None and folder not in self._watched:
                self._watch(folder)
            for entry in entries:
                if self.matches(entry.name):
                    observed = self.stat(entry.path)
                    if observed is not None:
                        found[entry.path] = observed
        return found

    def find(self, inode: int, device: int) -> FileStat | None:
        """The regular file in the watched folders with this identity, whatever its name."""
        for _, entries in self._walk():
            for entry in entries:
                if entry.inode() == inode:
                    found = self.stat(entry.path)
                    if found is not None and found.device == device:
                        return found
        return None

    # Folders

    def _walk(self) -> Iterator[tuple[str, list[os.DirEntry]]]:
        """Each folder down to `max_depth`, with its entries that are not folders. A
        folder that cannot be read below the top (a failing card, a folder gone meanwhile)
        is passed over and kept in `unreadable` (the next scan tries again); the watch
        directory itself raises."""
        self.unreadable = {}
        pending = [(self.directory, 0)]
        while pending:
            folder, depth = pending.pop()
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError as exc:
                if folder == self.directory:
                    raise
                if not isinstance(exc, FileNotFoundError | NotADirectoryError):
                    self.unreadable[folder] = exc
                continue
            files = []
            for entry in entries:
                if _is_folder(entry):
                    if depth < self.max_depth and not entry.name.startswith("."):
                        pending.append((entry.path, depth + 1))
                else:
                    files.append(entry)
            yield folder, files

    def _watch(self, folder: str) -> None:
        # The watch directory may be a link to where the recordings are; a folder in it not.
        flags = WATCH_FLAGS if folder == self.directory else WATCH_FLAGS | F.DONT_FOLLOW
        try:
            wd = self._inotify.add_watch(folder, flags)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self.out_of_watches = exc
            elif folder == self.directory:
                raise
            return  # gone already, or not a folder: nothing to watch
        stale = self._folders.get(wd)
        if stale is not None and stale != folder:
            del self._watched[stale]  # the same folder, moved: one watch, its new path
        self._folders[wd] = folder
        self._watched[folder] = wd

    def _unwatch_below(self, top: str) -> None:
        """A folder moved away or deleted: neither it nor those in it are watched (a
        folder moved out of the watch directory would still report, under a wrong path)."""
        for folder in [f for f in self._watched if f == top or f.startswith(top + os.sep)]:
            wd = self._watched.pop(folder)
            self._folders.pop(wd, None)
            with contextlib.suppress(OSError):  # the kernel removed it already
                self._inotify.rm_watch(wd)

    def _forget(self, wd: int) -> None:
        folder = self._folders.pop(wd, None)
        if folder is not None and self._watched.get(folder) == wd:
            del self._watched[folder]

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


def _is_folder(entry: os.DirEntry) -> bool:
    """A folder, not a link to one."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False
