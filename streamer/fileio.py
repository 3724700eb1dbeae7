"""A recording's file as streamer reads it: is it still the file a stream was made from,
and its bytes, read and hashed. One copy of each check, for the uploader, retention and
the admin commands."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from streamer import digests
from streamer.buffers import BufferPool
from streamer.digests import SHA256, Digest
from streamer.records import StreamRecord


class SourceChanged(Exception):
    """The file no longer holds the bytes the step was planned on."""


class SourceUnreadable(Exception):
    """The recording's file could not be looked at or read (gone, or an I/O error): a
    fault of the file, where any other OSError in a step is streamer's own."""


@contextlib.contextmanager
def touching(path: str) -> Iterator[None]:
    """Around what a step does to a recording's file: its OSErrors are the file's."""
    try:
        yield
    except OSError as exc:
        raise SourceUnreadable(f"{path}: {exc.strerror or exc}") from exc


def stat_source(path: str) -> os.stat_result:
    with touching(path):
        return os.stat(path)


def is_stream_file(st: os.stat_result, record: StreamRecord) -> bool:
    """Is this the file the stream was made from (same device and inode)?"""
    return (st.st_dev, st.st_ino) == (record.device, record.inode)


def is_finished_file(st: os.stat_result, record: StreamRecord) -> bool:
    """Is this, a regular file, still the file as its stream finished it: same device,
    inode, size and mtime?"""
    return (
        stat.S_ISREG(st.st_mode)
        and is_stream_file(st, record)
        and (st.st_size, st.st_mtime_ns) == (record.total_size, record.mtime_ns)
    )


def size_of(record: StreamRecord) -> int:
    st = stat_source(record.path)
    if not is_stream_file(st, record):
        raise SourceChanged(f"{record.path} is now another file (inode {st.st_ino})")
    return st.st_size


def open_regular(path: str) -> BinaryIO:
    """A watched path, opened for reading: without blocking (a FIFO or a device put there
    would hang a plain open) and without following a link; anything but a regular file is
    refused (SourceChanged); one that cannot be opened is SourceUnreadable."""
    with touching(path):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with touching(path):
            st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceChanged(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# How many first bytes tell one recording from another written over it in place.
HEAD_SIZE = 16


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


# A chunk is read in pieces of this size, into a buffer of the uploader's pool: each pass
# over a 10 MiB chunk costs 1 MiB of memory, not 10.
PIECE = 1024 * 1024


# The reads under way in this process, by thread: (when it began, what it reads). A read
# stuck in the kernel (a dead network mount) ages the uploader's heartbeat.
_reads: dict[int, tuple[float, str]] = {}


@contextlib.contextmanager
def reading(what: str) -> Iterator[None]:
    thread = threading.get_ident()
    _reads[thread] = (time.monotonic(), what)
    try:
        yield
    finally:
        del _reads[thread]


def oldest_read() -> tuple[float, str] | None:
    """The read under way that began first, if any."""
    return min(list(_reads.values()), default=None)


class Span:
    """`size` bytes of a recording from `offset`, read from the file (most often from its
    page cache) in pieces, again on each pass: once to digest a chunk, once more to send
    it (see `bodies.Checked`). `read_at_ns` and `read_mtime_ns`: when the last pass began,
    and the file's mtime just before."""

    def __init__(
        self, record: StreamRecord, offset: int, size: int, buffers: BufferPool | None = None
    ):
        self.record = record
        self.offset = offset
        self.size = size
        self._buffers = buffers
        self.read_at_ns: int | None = None
        self.read_mtime_ns: int | None = None

    def __len__(self) -> int:
        return self.size

    def pieces(self) -> Iterator[memoryview]:
        """The span's bytes in order, each piece valid until the next is asked for. Raises
        SourceChanged if the path is now another file, or the file ends before the span."""
        record, end = self.record, self.offset + self.size
        self.read_at_ns = time.time_ns()
        with reading(f"opening {record.path}"):
            f = open_regular(record.path)
        with f:
            fd = f.fileno()
            with touching(record.path):
                st = os.fstat(fd)
            if not is_stream_file(st, record):
                raise SourceChanged(f"{record.path} is now another file")
            self.read_mtime_ns = st.st_mtime_ns
            length = min(PIECE, self.size)
            buffer = self._buffers.take(length) if self._buffers else bytearray(length)
            try:
                view = memoryview(buffer)[:length]
                position = self.offset
                while position < end:
                    piece = view[: end - position]
                    filled = 0
                    # Whole pieces, however the filesystem returns them (FUSE, NFS and
                    # CIFS may return fewer bytes than asked): a framed body states each
                    # piece's length before its bytes.
                    while filled < len(piece):
                        with (
                            reading(f"reading {record.path} at byte {position + filled}"),
                            touching(record.path),
                        ):
                            read = os.preadv(fd, [piece[filled:]], position + filled)
                        if not read:
                            raise SourceChanged(f"{record.path} ends before byte {end}")
                        filled += read
                    yield piece
                    position += filled
            finally:
                if self._buffers:
                    self._buffers.give(buffer)


def digest_of_fd_range(
    fd: int, offset: int, size: int, algorithm: str = SHA256, block: int = PIECE
) -> Digest:
    """The digest of `size` bytes of an open file from `offset` (fewer if it ends first),
    read a block at a time."""
    whole = digests.hasher(algorithm)
    end = offset + size
    while offset < end:
        data = os.pread(fd, min(block, end - offset), offset)
        if not data:
            break
        whole.update(data)
        offset += len(data)
    return Digest(algorithm, whole.hexdigest())


def write_before(fd: int, data: bytes | memoryview, at: int, end: int) -> None:
    """`data` written into `fd` from byte `at`, as much of it as falls before byte `end`:
    what lies past it is not the caller's to write (pwrite may take fewer than given)."""
    data = memoryview(data)[: max(0, end - at)]
    while data:
        written = os.pwrite(fd, data, at)
        data, at = data[written:], at + written


class HashingReader:
    """A file object's reads, hashed as they pass with `algorithm` (the whole file's
    digest of a streamed upload)."""

    def __init__(self, f, algorithm: str = SHA256):
        self._f = f
        self._hasher = digests.hasher(algorithm)

    def read(self, size: int = -1) -> bytes:
        with reading(f"reading {self._f.name}"), touching(self._f.name):
            data = self._f.read(size)
        if 0 <= len(data) < size:
            # Asked only for bytes the file had: it shrank, and S3 must not get fewer.
            raise SourceChanged("the file shrank while it was being read")
        self._hasher.update(data)
        return data

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


CAP_LEASE = 28
# Seconds since its last write before a file no lease can be taken on may be deleted,
# whatever retention.min_age says: without a lease a recorder's pause cannot be told from
# its end, and ten minutes is far past the pauses recorders make (a keyframe interval, a
# reconnect to a camera).
BLIND_MIN_AGE = 600.0


def lease_blindness(directory: str) -> str | None:
    """Why the kernel cannot tell this process whether a file in `directory` is open for
    writing (a read lease is refused while it is), or None if it can. A filesystem may
    have no leases at all, and a lease on a file not this process's own needs CAP_LEASE."""
    probe = os.path.join(directory, f".streamer-lease-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return f"no probe file could be made in {directory}: {exc.strerror}"
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError as exc:
        return f"the filesystem of {directory} takes no leases ({exc.strerror})"
    finally:
        os.close(fd)
        os.unlink(probe)
    if not _capable(CAP_LEASE):
        return (
            f"no CAP_LEASE: only files owned by uid {os.geteuid()} can be leased, so a "
            "recording another user writes could be deleted while it is still open"
        )
    return None


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def raise_capability(capability: int) -> bool:
    """Make a capability this process is permitted (the image grants CAP_LEASE to its
    interpreter, permitted but not effective) effective; False if it is not permitted
    (the container was not given it)."""
    try:
        header, data = _capabilities()
    except OSError:
        return False
    word, bit = divmod(capability, 32)
    if not data[word].permitted >> bit & 1:
        return False
    data[word].effective |= 1 << bit
    return _libc().capset(ctypes.byref(header), data) == 0


def _capable(capability: int) -> bool:
    word, bit = divmod(capability, 32)
    return bool(_capabilities()[1][word].effective >> bit & 1)


def _capabilities() -> tuple[_CapHeader, ctypes.Array]:
    """This process's capability sets, as capget(2) gives them."""
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if _libc().capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    return header, data


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


# Filesystems whose timestamps are kept to 2 s (FAT: SD cards in cameras and edge boxes),
# or may be (exFAT, and FUSE block filesystems: exFAT or NTFS through FUSE).
COARSE_TIMESTAMPS = frozenset({"vfat", "msdos", "exfat", "fuseblk", "fuse.fusefat"})
COARSE_NS = 2_000_000_000


def timestamp_granularity_ns(directory: str) -> int:
    """How much coarser than a second the mtimes of the filesystem holding `directory`
    may be (0 for the usual ones)."""
    return COARSE_NS if filesystem_type(directory) in COARSE_TIMESTAMPS else 0


_OCTAL = re.compile(rb"\\([0-7]{3})")


def file_granularity_ns(path: str, known: dict[int, int]) -> int:
    """`timestamp_granularity_ns` of the file at `path`, by its folder's filesystem: a card
    may be mounted in a folder below the watch directory. `known`: by st_dev, so far."""
    folder = os.path.dirname(path)
    try:
        device = os.stat(folder).st_dev
    except OSError:
        return COARSE_NS  # cannot tell: the longer wait is the safe one
    if device not in known:
        known[device] = timestamp_granularity_ns(folder)
    return known[device]


def filesystem_type(directory: str) -> str | None:
    """The type of the filesystem mounted deepest above `directory`."""
    target = os.fsencode(os.path.realpath(directory))
    found, deepest = None, -1
    # As bytes: a mount point is any bytes the kernel took (`/media/Kamera-Ö` in UTF-8),
    # with only space, tab, newline and backslash written as octal escapes.
    with open("/proc/self/mountinfo", "rb") as mountinfo:
        for line in mountinfo:
            fields = line.split(b" ")
            mount_point = _OCTAL.sub(lambda m: bytes([int(m[1], 8)]), fields[4])
            inside = target == mount_point or target.startswith(mount_point.rstrip(b"/") + b"/")
            if inside and len(mount_point) > deepest:
                found, deepest = fields[fields.index(b"-") + 1].decode(), len(mount_point)
    return found


RENAME_NOREPLACE = 1
AT_FDCWD = -100
# In glibc since 2.28; None before, and callers make do without it.
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def renameat2_noreplace(source: str, target: str, dir_fd: int = AT_FDCWD) -> bool:
    """Rename `source` to `target` (both in the directory `dir_fd`, or relative to the
    working directory), raising FileExistsError rather than replace a file at `target`:
    renameat2's RENAME_NOREPLACE. False, having done nothing, where libc or the
    filesystem (NFS) has no such rename."""
    if _renameat2 is None:
        return False
    if _renameat2(dir_fd, os.fsencode(source), dir_fd, os.fsencode(target), RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(code, os.strerror(code), source, None, target)


def move_noreplace(source: str, target: str, dir_fd: int = AT_FDCWD) -> None:
    """Give `source` the name `target`, raising FileExistsError rather than replace a file
    there: renameat2, or else a hard link and an unlink of `source` (FAT and exFAT, which
    have no hard links, have RENAME_NOREPLACE)."""
    if not renameat2_noreplace(source, target, dir_fd):
        os.link(source, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        os.unlink(source, dir_fd=dir_fd)
