"""Rebuilding a recording from S3 alone (`streamer restore`): its chunks, each checked
against its digest as it arrives, written in parallel into a temporary file that takes
the output's name only once whole; a re-run goes on from what that file already holds.
A finished stream is its metadata.json's chunks (or, if those are gone, its assembled
object); an unfinished one is the run of chunks from index 0 up to the first missing."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from streamer import mp4
from streamer.audit import stored_digest
from streamer.chunkstore import ChunkStore
from streamer.digests import SHA256, Digest
from streamer.fileio import digest_of_fd_range
from streamer.remote import RemoteStream

CONNECTIONS = 4
PART_SUFFIX = ".part"


class RestoreError(Exception):
    """A chunk is missing or not the bytes it was stored as: the output is not written."""


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
    sha256: str | None  # the whole recording's, when metadata.json says it
    stopped: str | None  # why an unfinished stream's run of chunks ends where it does


def plan(stream: RemoteStream) -> Plan:
    """What to download, in order, and what each piece must hash to."""
    if stream.manifest_error is not None:
        raise RestoreError(
            f"its metadata.json cannot be read ({stream.manifest_error}): what it lists, and "
            "the sha256 to check the whole by, are not known"
        )
    found = stream.manifest
    if found is None:
        return unfinished_plan(stream)
    missing = [c for c in found.chunks if c.key not in stream.chunk_keys]
    if not missing:
        pieces = [Piece(c.index, c.key, c.offset, c.size, c.digest) for c in found.chunks]
        return Plan(pieces, found.sha256, None)
    if stream.assembled_key is not None:  # its chunks gone, its whole object there
        digest = Digest(SHA256, found.sha256) if found.sha256 else None
        whole = Piece(0, stream.assembled_key, 0, found.total_size, digest)
        return Plan([whole], found.sha256, None)
    raise RestoreError(f"chunk {missing[0].index} is missing from S3 ({missing[0].key})")


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
    sha256: str
    cut: int | None  # bytes dropped to make it playable


def restore(
    s3: ChunkStore,
    stream: RemoteStream,
    output: str,
    playable: bool = False,
    progress: Callable[[int], None] = lambda size: None,
) -> tuple[Restored, str | None]:
    """Write the recording to `output`; return what was written and, for an unfinished
    stream, why it ends where it does."""
    what = plan(stream)
    partial = output + PART_SUFFIX
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
        sha256 = digest_of_fd_range(fd, 0, size).value
        if what.sha256 is not None and sha256 != what.sha256:
            raise RestoreError(
                f"the restored bytes are not the recording: sha256 {sha256}, metadata.json "
                f"says {what.sha256}"
            )
        cut = make_playable(fd, size) if playable else None
        if cut is not None:
            size -= cut
            sha256 = digest_of_fd_range(fd, 0, size).value
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, output)
    return Restored(size, len(what.pieces), len(reused), sha256, cut), what.stopped


def held(fd: int, pieces: list[Piece], stream: RemoteStream, s3: ChunkStore) -> set[int]:
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


def fetch(s3: ChunkStore, fd: int, piece: Piece) -> Piece:
    expected = piece.digest
    got = s3.fetch_into(piece.key, fd, piece.offset, expected.algorithm if expected else None)
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
