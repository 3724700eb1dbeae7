"""One way to check a stream's chunks against S3, for completion (before metadata.json
says the stream is there), retention (before a file is deleted) and `streamer verify`:
every chunk the checkpoint records is in S3 with its recorded size and ETag, and together,
in order, the chunks are the stream's bytes. One listing per thousand chunks; reading the
chunks back (their sha256 against the recorded one) is verify's deeper look."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamer.records import ChunkRecord

if TYPE_CHECKING:
    from streamer.chunkstore import ChunkStore


def chunk_problems(
    stream_id: str,
    chunks: list[ChunkRecord],
    size: int | None,
    s3: ChunkStore,
    read_back: bool = False,
) -> list[str]:
    """What keeps `chunks` in S3 from being, in order, exactly the `size` bytes the
    checkpoint says they are (any size, if None); empty if nothing does."""
    stored = s3.listing(s3.layout.stream_prefix(stream_id) + "chunks/")
    problems = []
    offset = 0
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
        elif read_back and s3.sha256_of(key) != chunk.sha256:
            problems.append(f"chunk {chunk.index}: the bytes in S3 differ from those recorded")
        if chunk.offset != offset:
            problems.append(f"chunk {chunk.index} starts at {chunk.offset}, not {offset}")
        offset = chunk.offset + chunk.size
    if size is not None and offset != size:
        problems.append(f"the chunks hold {offset} bytes of {size}")
    return problems
