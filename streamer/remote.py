"""The bucket as S3 alone shows it, without a checkpoint store or a watch directory: the
streams under each instance, what state each is in (from its metadata.json, or
`unfinished` when it has chunks and none), and the pieces a recording is restored from.
For `streamer remote list` and `streamer restore`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from streamer import manifest
from streamer.chunkstore import ChunkStore, StoredObject
from streamer.layout import KeyOf
from streamer.manifest import Manifest

UNFINISHED = "unfinished"
MANIFEST_READERS = 4  # metadata.json files read at once


@dataclass
class RemoteStream:
    """One stream's objects in the bucket."""

    instance: str
    stream_id: str
    # Per chunk index, the latest revision's key and object (a later revision holds the
    # bytes the recorder rewrote there).
    chunks: dict[int, tuple[str, StoredObject]] = field(default_factory=dict)
    revisions: dict[int, int] = field(default_factory=dict)
    chunk_keys: set[str] = field(default_factory=set)  # every revision's
    manifest_key: str | None = None
    objects: dict[str, StoredObject] = field(default_factory=dict)  # its other objects
    manifest: Manifest | None = None
    manifest_error: str | None = None  # metadata.json there, but not readable as one

    def add(self, key: str, place: KeyOf, stored: StoredObject) -> None:
        if place.kind == "manifest":
            self.manifest_key = key
        elif place.kind == "object":
            self.objects[key] = stored
        else:
            self.chunk_keys.add(key)
            if place.revision >= self.revisions.get(place.index, -1):
                self.revisions[place.index] = place.revision
                self.chunks[place.index] = (key, stored)

    @property
    def status(self) -> str:
        if self.manifest is not None:
            return self.manifest.status
        return "invalid metadata.json" if self.manifest_error else UNFINISHED

    @property
    def size(self) -> int:
        if self.manifest is not None:
            return self.manifest.total_size
        return sum(stored.size for _, stored in self.chunks.values())

    @property
    def chunk_count(self) -> int:
        return self.manifest.chunk_count if self.manifest is not None else len(self.chunks)

    @property
    def assembled_key(self) -> str | None:
        """The whole recording as one object, if it is there as metadata.json says."""
        assembled = self.manifest.assembled if self.manifest is not None else None
        if assembled is None:
            return None
        stored = self.objects.get(assembled.key)
        return assembled.key if stored is not None and stored.size == assembled.size else None

    def upload_times(self) -> tuple[datetime | None, datetime | None]:
        if self.manifest is not None:
            return self.manifest.first_upload_at, self.manifest.last_upload_at
        times = [s.modified for _, s in self.chunks.values() if s.modified is not None]
        return (min(times), max(times)) if times else (None, None)

    def summary(self) -> dict:
        """What `remote list --json` gives: raw numbers, RFC 3339 times."""
        first, last = self.upload_times()
        return {
            "stream_id": self.stream_id,
            "instance": self.instance,
            "status": self.status,
            "size": self.size,
            "chunks": self.chunk_count,
            "first_upload_at": first,
            "last_upload_at": last,
            "assembled": self.assembled_key is not None,
        }


def streams_in(
    s3: ChunkStore, instances: list[str] | None, stream_id: str | None = None
) -> list[RemoteStream]:
    """The streams under these instances (None: every instance under the prefix), or only
    those with this id, with their metadata.json read; sorted by instance, then id."""
    layout = s3.layout
    top = layout.instances_prefix()
    if instances is None:
        instances = [p.removeprefix(top).strip("/") for p in s3.children(top)]
    below = f"{stream_id}/" if stream_id is not None else ""
    prefixes = [f"{top}{name}/{below}" for name in instances]
    found: dict[tuple[str, str], RemoteStream] = {}
    for prefix in prefixes:
        for key, stored in s3.listing(prefix).items():
            place = layout.parse(key)
            if place is None or stream_id not in (None, place.stream_id):
                continue
            which = (place.instance, place.stream_id)
            if which not in found:
                found[which] = RemoteStream(place.instance, place.stream_id)
            found[which].add(key, place, stored)
    with ThreadPoolExecutor(MANIFEST_READERS) as pool:
        list(pool.map(lambda stream: read_manifest(s3, stream), found.values()))
    return [found[k] for k in sorted(found)]


def read_manifest(s3: ChunkStore, stream: RemoteStream) -> None:
    if stream.manifest_key is None:
        return
    data = s3.get_if_exists(stream.manifest_key)
    if data is None:  # deleted since the listing
        stream.manifest_key = None
        return
    try:
        stream.manifest = manifest.decode(data)
    except msgspec.DecodeError as exc:
        stream.manifest_error = str(exc)


def find(s3: ChunkStore, stream_id: str, instance: str | None) -> list[RemoteStream]:
    """The stream under this instance, or, with None, under whichever instances have it."""
    return streams_in(s3, None if instance is None else [instance], stream_id)
