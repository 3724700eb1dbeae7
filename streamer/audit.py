"""One way to check a stream's chunks, and its assembled object, against S3, for
completion (before metadata.json says the stream is there), retention (before a file is
deleted), pruning (before the chunks go) and `streamer verify`:
every chunk the checkpoint records is in S3 with its recorded size and ETag, and together,
in order, the chunks are the stream's bytes. One listing per thousand chunks; verify looks
deeper: at the digest stored with each chunk (a HEAD each), or at its bytes (read back)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from streamer import digests
from streamer.digests import Digest
from streamer.objectstore import ObjectStore, Taken
from streamer.records import ChunkRecord, StreamRecord


def chunk_problems(
    stream_id: str,
    chunks: list[ChunkRecord],
    size: int | None,
    s3: ObjectStore,
    look: Literal["listing", "stored", "bytes"] = "listing",
    progress: Callable[[int], None] = lambda done: None,
    whole: Digest | None = None,
) -> list[str]:
    """What keeps `chunks` in S3 from being, in order, exactly the `size` bytes the
    checkpoint says they are (any size, if None); empty if nothing does. `look` says how
    deep each chunk is compared: size and ETag, also the digest stored with it, or also
    the digest of its bytes, and then the chunks together against `whole`, the stream's
    digest (where it is known: a chunk's CRC is a weaker proof than a sha256 of the whole);
    `progress` is told of each chunk done."""
    stored = s3.listing(s3.layout.stream_prefix(stream_id) + "chunks/")
    problems = []
    offset = 0
    together = digests.hasher(whole.algorithm) if look == "bytes" and whole else None
    for chunk in chunks:
        key = s3.layout.chunk_key(stream_id, chunk.index, chunk.revision)
        found = stored.get(key)
        if found is None:
            problems.append(f"chunk {chunk.index} is missing from S3 ({key})")
        elif (found.size, found.etag) != (chunk.size, chunk.etag):
            problems.append(
                f"chunk {chunk.index} in S3 is not the one uploaded: {found.size} bytes, "
                f"ETag {found.etag} (recorded: {chunk.size} bytes, ETag {chunk.etag})"
            )
        elif look == "stored" and stored_digest(s3, key) not in (chunk.digest, None):
            problems.append(f"chunk {chunk.index}: the digest stored with it is not the recorded")
        elif (
            look == "bytes" and s3.digest_of(key, chunk.digest.algorithm, together) != chunk.digest
        ):
            problems.append(f"chunk {chunk.index}: the bytes in S3 differ from those recorded")
        progress(1)
        if chunk.offset != offset:
            problems.append(f"chunk {chunk.index} starts at {chunk.offset}, not {offset}")
        offset = chunk.offset + chunk.size
    if size is not None and offset != size:
        problems.append(f"the chunks hold {offset} bytes of {size}")
    if together is not None and not problems and together.hexdigest() != whole.value:
        found = Digest(whole.algorithm, together.hexdigest())
        problems.append(f"the chunks together are not the stream: {found}")
    return problems


def stored_digest(s3: ObjectStore, key: str) -> Digest | None:
    """The digest an object was stored with (None: none, or the object is gone since the
    listing, which the next look reports)."""
    found = s3.stat(key, checksum=True)
    return found.digest if found is not None else None


def assembled_problem(
    record: StreamRecord,
    s3: ObjectStore,
    look: Literal["stat", "checksum", "bytes"] = "stat",
) -> str | None:
    """What keeps the stream's assembled object in S3 from being the one made: there, with
    the stream's size and the recorded ETag; None if nothing does. `look` says how deep:
    that alone; or also the crc64nvme S3 keeps of it, where S3 checked its bytes against
    the chunks' as it joined them (else as `bytes`); or also its bytes read back, hashing
    to the stream's digest (its sha256, or the crc64nvme of its chunks, where either is
    known)."""
    assembled = record.assembled
    by_s3 = look == "checksum" and record.checked_by_s3
    found = s3.stat(assembled.key, checksum=by_s3)
    if found is None:
        return f"the assembled object is missing from S3 ({assembled.key})"
    if (found.size, found.etag) != (assembled.size, assembled.etag) or (
        found.size != record.total_size
    ):
        return (
            f"the assembled object in S3 is not the one made: {found.size} bytes, ETag "
            f"{found.etag} (recorded: {assembled.size} bytes, ETag {assembled.etag})"
        )
    if by_s3:
        if found.crc64nvme != record.crc64nvme:
            return f"the assembled object's crc64nvme in S3 is not the stream's ({assembled.key})"
        return None
    whole = record.whole
    if look == "stat" or whole is None:
        return None
    try:
        read = s3.digest_of(assembled.key, whole.algorithm, etag=assembled.etag)
    except Taken:
        return f"the assembled object changed while it was read back ({assembled.key})"
    if read != whole:
        return f"the assembled object's bytes are not the stream's ({assembled.key})"
    return None
