"""Rebuilding a recording from S3 alone (`streamer restore`): its chunks, each checked
against its digest as it arrives, written in parallel into a temporary file that takes
the output's name only once whole; a re-run goes on from what that file already holds.
A finished stream is its metadata.json's chunks (or, if those are gone, its assembled
object), checked to be this stream's and to make one file before a byte is written; an
unfinished one is the run of chunks from index 0 up to the first missing.

It harms nothing on the disk: the temporary file is created new and marked as this
restore's (a re-run goes on only from one marked for the same stream; any other is
refused, untouched), and it takes the output's name only where no file has it, unless
told to replace it.

To a pipe (`-o -`), the pieces go out in order, each checked in a temporary file of its
own first: no byte of a piece that is not the bytes it was stored as goes out."""

from __future__ import annotations

import errno
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import BinaryIO

from streamer import digests, mp4
from streamer.audit import stored_digest
from streamer.bucket import RemoteStream
from streamer.digests import SHA256, Digest
from streamer.fileio import digest_of_fd_range, move_noreplace
from streamer.layout import Layout
from streamer.manifest import Manifest
from streamer.objectstore import ObjectStore

CONNECTIONS = 4
BLOCK = 1024 * 1024  # bytes copied at a time from a piece's temporary file to the pipe
PART_SUFFIX = ".part"
# The temporary file's mark is a file beside it (OUTPUT.part.streamer), not an extended
# attribute on it: a recording is restored to whatever disk is at hand, and FAT and exFAT
# (USB disks), NFSv3, and tmpfs before Linux 6.6 keep no user.* attributes. The mark names
# the stream and the temporary file's device and inode, so that a file put at its name
# since, by anything else, is not taken for restore's (where a filesystem numbers its
# files anew at each mount, as FAT does, a re-run after one refuses it rather than guess).
MARK_SUFFIX = ".streamer"
MARK = b"streamer restore\n"
MAX_CHUNK = 5 * 1024**3  # S3 takes no larger PUT, so no chunk is larger
LEFT = "it is left as it is; move it away, or restore to another file"


class RestoreError(Exception):
    """A chunk is missing or not the bytes it was stored as, or metadata.json does not
    describe this stream's file: the output is not written."""


class InTheWay(Exception):
    """A file on the disk is in the way (the output, or a temporary file that is not this
    restore's): it is left as it is."""


class NotPlayable(Exception):
    """No prefix of the bytes plays (a plain MP4 whose moov never reached S3)."""


@dataclass(frozen=True)
class Piece:
    """A run of the recording's bytes and the object they come from."""

    index: int
    key: str
    offset: int
    size: int
    digest: Digest | None  # as recorded; None: the digest S3 stored with the object


@dataclass(frozen=True)
class Plan:
    pieces: list[Piece]
    whole: Digest | None  # the whole recording's, when metadata.json says it
    stopped: str | None  # why an unfinished stream's run of chunks ends where it does


def plan(stream: RemoteStream) -> Plan:
    """What to download, in order, and what each piece must hash to."""
    if stream.manifest_error is not None:
        raise RestoreError(
            f"its metadata.json cannot be read ({stream.manifest_error}): what it lists, and "
            "the digest to check the whole by, are not known"
        )
    found = stream.manifest
    if found is None:
        return unfinished_plan(stream)
    if wrong := untrusted(found, stream):
        raise RestoreError(f"its metadata.json is not to be trusted: {wrong}")
    missing = [c for c in found.chunks if c.key not in stream.chunk_keys]
    if not missing:
        pieces = [Piece(c.index, c.key, c.offset, c.size, c.digest) for c in found.chunks]
        return Plan(pieces, found.whole, None)
    if stream.assembled_key is not None:  # its chunks gone, its whole object there
        whole = Piece(0, stream.assembled_key, 0, found.total_size, found.whole)
        return Plan([whole], found.whole, None)
    raise RestoreError(f"chunk {missing[0].index} is missing from S3 ({missing[0].key})")


def untrusted(found: Manifest, stream: RemoteStream) -> str | None:
    """Why the chunks metadata.json lists are not this stream's file (None: they are).
    Each must be this stream's chunk at its place, start where the one before ends, be
    no longer than a chunk and as long as its object in S3, and together make its
    total_size: a wrong offset or size must not write anywhere in the file."""
    if not 0 <= found.chunk_size <= MAX_CHUNK:
        return f"its chunk_size, {found.chunk_size}, is not one S3 takes"
    layout = layout_of(stream)
    end = 0
    for place, chunk in enumerate(found.chunks):
        key = layout.chunk_key(stream.stream_id, place, chunk.revision)
        listed = stream.chunks.get(place)
        if chunk.index != place or chunk.key != key:
            return f"chunk {place} is listed as chunk {chunk.index} at {chunk.key}, not at {key}"
        if chunk.offset != end:
            return f"chunk {place} starts at byte {chunk.offset}, not at {end}"
        if not 0 <= chunk.size <= found.chunk_size:
            return f"chunk {place} is {chunk.size} bytes, not 0 to {found.chunk_size} (a chunk)"
        if listed is not None and listed[0] == key and listed[1].size != chunk.size:
            return f"chunk {place} is {chunk.size} bytes, and {listed[1].size} in S3 ({key})"
        end += chunk.size
    if end != found.total_size:
        return f"its chunks add up to {end} bytes, not to its total_size, {found.total_size}"
    return None


def layout_of(stream: RemoteStream) -> Layout:
    """The layout the stream's keys were written in: its prefix is where S3 listed its
    metadata.json."""
    assert stream.manifest_key is not None
    bare = Layout("", stream.instance).manifest_key(stream.stream_id)
    return Layout(stream.manifest_key.removesuffix(bare), stream.instance)


def unfinished_plan(stream: RemoteStream) -> Plan:
    """Chunks from index 0 while each follows the last: every chunk but the file's tail
    is as long as chunk 0, so a shorter one ends the recording as uploaded (the chunks
    after it hold older bytes, from before the file shrank)."""
    if 0 not in stream.chunks:
        raise RestoreError("chunk 0 is not in S3: there is nothing to restore from")
    pieces, offset, index = [], 0, 0
    full = stream.chunks[0][1].size
    stopped = None
    while index in stream.chunks:
        key, stored = stream.chunks[index]
        pieces.append(Piece(index, key, offset, stored.size, None))
        offset += stored.size
        index += 1
        if stored.size < full and index <= max(stream.chunks):
            stopped = (
                f"chunk {index - 1} is shorter than the others, the end of the file as "
                f"uploaded: the chunks after it in S3 ({len(stream.chunks) - index}) hold "
                "older bytes"
            )
            return Plan(pieces, None, stopped)
    in_s3 = len(stream.chunks)
    if index <= max(stream.chunks):
        stopped = f"chunk {index} is missing: restored {index} of the {in_s3} chunks in S3"
    return Plan(pieces, None, stopped)


@dataclass(frozen=True)
class Restored:
    size: int
    pieces: int
    reused: int  # pieces the temporary file held already, checked
    digest: Digest  # of what was written: by what metadata.json checks it by, else sha256
    cut: int | None  # bytes dropped to make it playable


def restore(
    s3: ObjectStore,
    stream: RemoteStream,
    output: str,
    playable: bool = False,
    force: bool = False,
    progress: Callable[[int], None] = lambda size: None,
) -> tuple[Restored, str | None]:
    """Write the recording to `output` (replacing a file there only with `force`); return
    what was written and, for an unfinished stream, why it ends where it does."""
    what = plan(stream)
    partial = output + PART_SUFFIX
    fd = open_partial(partial, stream.stream_id)
    try:
        reused = held(fd, what.pieces, stream, s3)
        todo = [p for p in what.pieces if p.index not in reused]
        for p in what.pieces:
            if p.index in reused:
                progress(p.size)
        with ThreadPoolExecutor(CONNECTIONS) as pool:
            for piece in pool.map(lambda p: fetch(s3, fd, p), todo):
                progress(piece.size)
        size = sum(p.size for p in what.pieces)
        os.ftruncate(fd, size)
        algorithm = what.whole.algorithm if what.whole else SHA256
        digest = digest_of_fd_range(fd, 0, size, algorithm)
        if what.whole is not None and digest != what.whole:
            raise RestoreError(
                f"the restored bytes are not the recording: {digest}, metadata.json "
                f"says {what.whole}"
            )
        cut = make_playable(fd, size) if playable else None
        if cut is not None:
            size -= cut
            digest = digest_of_fd_range(fd, 0, size, algorithm)
        os.fsync(fd)
    finally:
        os.close(fd)
    settle(partial, output, force)
    os.unlink(partial + MARK_SUFFIX)
    return Restored(size, len(what.pieces), len(reused), digest, cut), what.stopped


def restore_to_pipe(
    s3: ObjectStore,
    stream: RemoteStream,
    out: int,
    progress: Callable[[int], None] = lambda size: None,
) -> tuple[Restored, str | None]:
    """Write the recording to the open file `out` (a pipe: written in order, never
    sought), each piece checked before a byte of it is written. The whole file's digest
    can only be checked once it is all out: a RestoreError then comes after the bytes."""
    what = plan(stream)
    algorithm = what.whole.algorithm if what.whole else SHA256
    whole = digests.hasher(algorithm)
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        for piece, spool in in_order(pool, what.pieces, lambda p: spooled(s3, p)):
            with spool:
                pour(spool.fileno(), piece.size, out, whole)
            progress(piece.size)
    size = sum(p.size for p in what.pieces)
    digest = Digest(algorithm, whole.hexdigest())
    if what.whole is not None and digest != what.whole:
        raise RestoreError(
            f"the bytes written are not the recording: {digest}, metadata.json says {what.whole}"
        )
    return Restored(size, len(what.pieces), 0, digest, None), what.stopped


def in_order(
    pool: Executor, pieces: list[Piece], work: Callable[[Piece], BinaryIO]
) -> Iterator[tuple[Piece, BinaryIO]]:
    """`work` done on each piece, CONNECTIONS at a time, handed back in order: no more
    than CONNECTIONS pieces ahead of the one being written, however slow the pipe."""
    rest = iter(pieces)
    pending = deque((p, pool.submit(work, p)) for p in islice(rest, CONNECTIONS))
    try:
        while pending:
            piece, done = pending.popleft()
            result = done.result()
            pending.extend((p, pool.submit(work, p)) for p in islice(rest, 1))
            yield piece, result
    finally:
        for _, waiting in pending:
            waiting.cancel()


def spooled(s3: ObjectStore, piece: Piece) -> BinaryIO:
    """The piece in a temporary file of its own (unnamed: nothing is left behind), checked."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (handed on, closed once written out)
    try:
        fetch(s3, spool.fileno(), piece, at=0)
    except BaseException:
        spool.close()
        raise
    return spool


def pour(source: int, size: int, out: int, whole) -> None:
    """`size` bytes from the start of `source` written to `out`, and fed to `whole`."""
    offset = 0
    while offset < size:
        data = os.pread(source, min(BLOCK, size - offset), offset)
        whole.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]
        offset += len(data)


def open_partial(partial: str, stream_id: str) -> int:
    """The temporary file, open for writing: an earlier restore's of this stream, to go
    on from, or a new one, created and marked as this restore's. Any other file there is
    refused, and never opened for writing."""
    marker = partial + MARK_SUFFIX
    if os.path.lexists(partial):
        return reopen(partial, marker, stream_id)
    if (stale := read_mark(marker)) is not None:
        if not stale.startswith(MARK):
            raise InTheWay(f"{marker} is there, and is not restore's mark: {LEFT}")
        os.unlink(marker)  # an earlier restore's, whose temporary file was removed since
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        create_new(marker, mark(stream_id, os.fstat(fd)))
    except BaseException:
        os.close(fd)
        os.unlink(partial)
        raise
    return fd


def reopen(partial: str, marker: str, stream_id: str) -> int:
    """An earlier restore's temporary file, if its mark names this stream and this very
    file: looked at before it is opened, and again once open, in case it was replaced."""
    found = read_mark(marker)
    if found != mark(stream_id, os.lstat(partial)):
        raise InTheWay(not_ours(partial, marker, stream_id, found))
    fd = os.open(partial, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    if found != mark(stream_id, os.fstat(fd)):
        os.close(fd)
        raise InTheWay(not_ours(partial, marker, stream_id, found))
    return fd


def not_ours(partial: str, marker: str, stream_id: str, found: bytes | None) -> str:
    if found is None:
        return f"{partial} is there, and no {marker} marks it as restore's: {LEFT}"
    return f"{partial} is there, and {marker} does not mark it as restoring {stream_id}: {LEFT}"


def mark(stream_id: str, st: os.stat_result) -> bytes:
    return MARK + f"{stream_id}\n{st.st_dev} {st.st_ino}\n".encode()


def read_mark(marker: str) -> bytes | None:
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        return b""  # a symbolic link: not a mark
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def create_new(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def settle(partial: str, output: str, force: bool) -> None:
    """Give the whole file the output's name, replacing a file there only with `force`."""
    if force:
        os.replace(partial, output)
        return
    try:
        move_noreplace(partial, output)
    except FileExistsError:
        raise InTheWay(
            f"{output} appeared while restoring: it is left as it is, the restored file "
            f"is {partial}; run again with --force to replace it"
        ) from None


def held(fd: int, pieces: list[Piece], stream: RemoteStream, s3: ObjectStore) -> set[int]:
    """The pieces a temporary file from an earlier run holds already, each checked against
    its digest (asked of S3 where metadata.json does not say it)."""
    have = os.fstat(fd).st_size
    found = set()
    for piece in pieces:
        if piece.offset + piece.size > have:
            break
        expected = piece.digest or stored_digest(s3, piece.key)
        if expected and digest_of_fd_range(fd, piece.offset, piece.size, expected.algorithm) == (
            expected
        ):
            found.add(piece.index)
    return found


def fetch(s3: ObjectStore, fd: int, piece: Piece, at: int | None = None) -> Piece:
    """The piece written into `fd` at its offset in the recording (or at `at`), checked."""
    expected = piece.digest
    offset = piece.offset if at is None else at
    got = s3.fetch_into(piece.key, fd, offset, piece.size, expected.algorithm if expected else None)
    expected = expected or got.stored
    if got.size != piece.size:
        raise RestoreError(
            f"chunk {piece.index} in S3 is {got.size} bytes, not {piece.size} ({piece.key})"
        )
    if expected is None:
        raise RestoreError(f"chunk {piece.index} has no digest to check it by ({piece.key})")
    if got.digest != expected:
        raise RestoreError(
            f"chunk {piece.index} in S3 is not the bytes it was stored as: "
            f"{got.digest}, expected {expected} ({piece.key})"
        )
    return piece


def make_playable(fd: int, size: int) -> int:
    """Cut the file after its last whole fragment; return how many bytes were dropped."""

    def read_at(offset: int, length: int) -> bytes:
        return os.pread(fd, length, offset)

    if mp4.inspect(read_at, size).playable:
        return 0  # it plays whole: every byte stays
    keep = mp4.playable_prefix(read_at, size)
    if keep is None:
        raise NotPlayable(
            "these bytes cannot be made playable: no moov (the index a plain MP4 writes "
            "at its end) reached S3, and no whole fragment did; restore without --playable "
            "for the exact bytes"
        )
    facts = mp4.inspect(read_at, keep)
    if not facts.playable:
        raise NotPlayable(f"the first {keep} bytes do not play either (the MP4 reader says so)")
    os.ftruncate(fd, keep)
    return size - keep
