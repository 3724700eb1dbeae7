"""Deleting a local recording once, and only once, every byte of it is proven in S3.

Asked by the supervisor (retention.delete_after_upload, or the free-space guard), an
uploader makes every check at the moment of deletion, in this order; the first that fails
keeps the file:
  1. its stream finished `complete` (or `partial`, with retention.delete_partial);
  2. every chunk in the checkpoint is in S3 with its recorded size and ETag, and together
     they cover the whole file (unless stream.keep_chunks off deleted them, once the
     assembled object's bytes read back as the file's sha256);
  3. the assembled object, if there is one, is in S3 with the file's size and its ETag;
  4. metadata.json is in S3 and reads back as this stream;
  5. the file on disk is still the one that was finished (inode, size, mtime), and a
     regular file: a symlink's target is never deleted;
  6. it is inside the watch directory;
and, where the kernel lets streamer take a lease on it, no process has it open for
writing (a recorder that paused past the idle timeout may still come back to it). Where
it does not, retention is blind to the file: it is kept until its last write is
BLIND_MIN_AGE old, whatever retention.min_age says, and its deletion is logged as blind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import time

import msgspec

from streamer import manifest
from streamer.audit import assembled_problem, chunk_problems
from streamer.fileio import (
    BLIND_MIN_AGE,
    is_finished_file,
    move_noreplace,
    renameat2_noreplace,
)
from streamer.objectstore import ObjectStore
from streamer.policy import retirable
from streamer.records import ChunkRecord, StreamRecord


class Kept(Exception):
    """Why a file stays: it is not proven in S3, or it is no longer the file that was.
    `final`: asking again later cannot change the answer; `retry_in`: asking again
    sooner than this many seconds cannot."""

    def __init__(self, reason: str, final: bool = False, retry_in: float = 0.0):
        super().__init__(reason)
        self.final = final
        self.retry_in = retry_in


def delete_if_proven(
    record: StreamRecord,
    chunks: list[ChunkRecord],
    s3: ObjectStore,
    directory: str,
    delete_partial: bool,
) -> str | None:
    """Delete the stream's local file, or raise Kept (or S3's error) and leave it. Returns
    why no lease could be taken on the file deleted (None: one was held)."""
    check_status(record, delete_partial)
    check_chunks(record, chunks, s3)
    check_assembled(record, s3)
    check_manifest(record, chunks, s3)
    check_same_file(record)
    check_inside(record, directory)
    return unlink_same_file(record, directory)


def check_status(record: StreamRecord, delete_partial: bool) -> None:
    if record.source_deleted_at is not None:
        raise Kept("it was deleted already", final=True)
    if not retirable(record.state, delete_partial):
        raise Kept(f"its stream finished {record.state.value}, not complete", final=True)


def check_chunks(record: StreamRecord, chunks: list[ChunkRecord], s3: ObjectStore) -> None:
    if record.chunks_deleted_at is not None:
        return  # deleted once the assembled object was read back whole: check_assembled
    if problems := chunk_problems(record.stream_id, chunks, record.total_size, s3):
        raise Kept(problems[0])


def check_assembled(record: StreamRecord, s3: ObjectStore) -> None:
    if record.assembled is not None and (problem := assembled_problem(record, s3)):
        raise Kept(problem)


def check_manifest(record: StreamRecord, chunks: list[ChunkRecord], s3: ObjectStore) -> None:
    key = s3.layout.manifest_key(record.stream_id)
    body = s3.get_if_exists(key)
    if body is None:
        raise Kept(f"metadata.json is missing from S3 ({key})")
    try:
        written = manifest.decode(body)
    except msgspec.DecodeError as exc:
        raise Kept(f"metadata.json does not read back: {exc}") from None
    read_back = (
        written.stream_id,
        written.status,
        written.total_size,
        written.sha256,
        written.crc64nvme,
        [c.etag for c in written.chunks],
    )
    expected = (
        record.stream_id,
        record.state.value,
        record.total_size,
        record.sha256,
        record.crc64nvme,
        [c.etag for c in chunks],
    )
    if read_back != expected:
        raise Kept("metadata.json in S3 does not describe this stream as recorded")


def check_same_file(record: StreamRecord) -> None:
    try:
        st = os.stat(record.path, follow_symlinks=False)
    except FileNotFoundError:
        raise Kept("the file is gone", final=True) from None
    if stat.S_ISLNK(st.st_mode):
        raise Kept("the path is a symbolic link now: its target is never deleted", final=True)
    if not is_finished_file(st, record):
        raise Kept("the file changed after it was uploaded", final=True)


def check_inside(record: StreamRecord, directory: str) -> None:
    parent, top = os.path.realpath(os.path.dirname(record.path)), os.path.realpath(directory)
    if parent != top and not parent.startswith(top + os.sep):
        raise Kept(f"the file is not inside the watch directory {directory}", final=True)


def open_folder(directory: str, folder: str) -> int:
    """The folder of a file below the watch directory, opened from the watch directory one
    folder at a time, never through a link: a folder swapped for a link to elsewhere after
    the checks leads nowhere."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    relative = os.path.relpath(folder, directory)
    for part in [] if relative == "." else relative.split(os.sep):
        try:
            below = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
        finally:
            os.close(fd)
        fd = below
    return fd


def unlink_same_file(record: StreamRecord, directory: str) -> str | None:
    """Unlink through the file's folder (opened from the watch directory), holding the file
    open (and, where allowed, a lease on it), after one last look at it there. What is
    unlinked is what was checked: the name is first renamed aside, to a name of its own,
    and what was renamed is unlinked only if it is that file; a file a writer renamed over
    the name meanwhile is put back.
    Neither rename ever replaces a file. Returns why no lease could be taken (None: one
    was held)."""
    folder = os.path.dirname(record.path)
    parent = open_folder(directory, folder)
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(record.name, flags, dir_fd=parent)
        try:
            checked = os.fstat(fd)
            if not is_finished_file(checked, record):
                raise Kept("the file changed after it was uploaded", final=True)
            blind = _lease(fd, checked)
            if blind is not None:
                check_old_enough_blind(checked, blind)
            try:
                _unlink_if(record.name, (checked.st_dev, checked.st_ino), parent, folder)
            finally:
                if blind is None:
                    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        finally:
            os.close(fd)
    finally:
        os.close(parent)
    return blind


def check_old_enough_blind(st: os.stat_result, blind: str) -> None:
    """Without a lease, whether a recorder still has the file open cannot be known: only
    its age can say it is done with it."""
    age = time.time() - st.st_mtime_ns / 1e9
    if age < BLIND_MIN_AGE:
        raise Kept(
            f"no lease could be taken on it ({blind}), so whether a process still has it "
            "open for writing cannot be known: it is kept until its last write is "
            f"{BLIND_MIN_AGE / 60:g} minutes old",
            retry_in=BLIND_MIN_AGE - age,
        )


def _unlink_if(name: str, identity: tuple[int, int], parent: int, folder: str) -> None:
    aside = _set_aside(name, parent)
    st = os.stat(aside, dir_fd=parent, follow_symlinks=False)
    if (st.st_dev, st.st_ino) == identity:
        os.unlink(aside, dir_fd=parent)
        return
    # Another file took the name after the checks: it goes back, unless the name has been
    # taken again since (then it stays aside, and the reason says where).
    try:
        move_noreplace(aside, name, parent)
    except FileExistsError:
        pass
    else:
        raise Kept("another file was put at its name during the deletion", final=True)
    raise Kept(
        "another file was put at its name during the deletion, and the name was taken again "
        f"before it could be put back: it is kept as {os.path.join(folder, aside)}",
        final=True,
    )


def _set_aside(name: str, parent: int) -> str:
    """Rename the name to one of its own, made for this deletion: nothing else in the
    directory is replaced (a file an earlier deletion could not put back, say)."""
    aside = f".{name}.streamer-deleting-{secrets.token_hex(8)}"
    if renameat2_noreplace(name, aside, parent):
        return aside
    # The new name is made first, and only it is replaced. (A link, then an unlink of the
    # name, would unlink whatever a writer renamed over the name in between.)
    reserved = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    os.close(os.open(aside, reserved, 0o600, dir_fd=parent))
    try:
        os.rename(name, aside, src_dir_fd=parent, dst_dir_fd=parent)
    except OSError:
        os.unlink(aside, dir_fd=parent)
        raise
    return aside


def _lease(fd: int, st: os.stat_result) -> str | None:
    """Take a read lease, which the kernel grants only if no process has the file open for
    writing, and return None; or say why none could be taken."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            raise Kept("a process has the file open for writing") from None
        if exc.errno == errno.EACCES:
            return (
                f"it is owned by uid {st.st_uid}, and streamer runs as uid {os.geteuid()} "
                "without CAP_LEASE"
            )
        return f"its filesystem takes no leases: {exc.strerror}"
    return None
