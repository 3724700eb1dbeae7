"""The bucket as S3 alone shows it, without a checkpoint store or a watch directory: the
streams under each instance, what state each is in (from its metadata.json, or `active`
when it has chunks and none: not finished yet, or never), which of them a recording's
name means, and the pieces a recording is restored from. For `streamer remote list` and
`streamer restore`."""

from __future__ import annotations

import difflib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase

import msgspec

from streamer import manifest
from streamer.chunkstore import ChunkStore, StoredObject
from streamer.layout import KeyOf
from streamer.manifest import Manifest
from streamer.records import StreamState

MANIFEST_READERS = 4  # metadata.json files read at once
# A stream id as naming.stream_id_for makes it: the recording's name (its path below the
# watch directory, without the extension), the UTC second it was first seen, and -2, -3...
# for a later stream of the same name first seen in the same second.
STREAM_ID = re.compile(r"^(?P<name>.+)-(?P<at>\d{8}T\d{6}Z)(?:-(?P<n>\d+))?$")
# What streamer records, and so the extension of a recording whose own name is not in S3
# (an active stream has chunks and no metadata.json).
RECORDING_EXTENSION = ".mp4"
SUGGESTIONS = 3


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
        return "invalid metadata.json" if self.manifest_error else StreamState.ACTIVE.value

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

    @property
    def name(self) -> str:
        """The recording's name, as its stream id has it: `cam1/2026-12-06/late`."""
        parts = STREAM_ID.match(self.stream_id)
        return parts["name"] if parts else self.stream_id

    def named(self, pattern: str) -> bool:
        """Whether `pattern` (a glob, or a plain name) names this stream's recording: its
        name, or its end after any `/` (`late`, `2026-12-06/late`); an extension given
        (`late.mp4`) may be left off, as the stream id leaves it off."""
        stem, dot, extension = pattern.rpartition(".")
        patterns = {pattern, stem} if dot and stem and "/" not in extension else {pattern}
        return any(fnmatchcase(end, p) for end in ends(self.name) for p in patterns)

    @property
    def first_seen(self) -> datetime | None:
        if self.manifest is not None:
            return self.manifest.first_seen_at
        return self.id_time or self.upload_times()[0]

    @property
    def id_time(self) -> datetime | None:
        parts = STREAM_ID.match(self.stream_id)
        return (
            datetime.strptime(parts["at"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) if parts else None
        )

    def newness(self) -> tuple[datetime, int]:
        """What orders the streams of a recording, oldest first: the second its stream id
        gives, then the -2, -3... of a later one first seen in the same second (from the
        id alone: no metadata.json needs to be read)."""
        parts = STREAM_ID.match(self.stream_id)
        at = self.id_time or self.upload_times()[0] or datetime.min.replace(tzinfo=UTC)
        return at, (int(parts["n"] or 1) if parts else 1)

    @property
    def file_name(self) -> str:
        """The name to restore it under in a directory: its file's, from metadata.json
        (unless that is not one file's name), else its recording's name with the
        extension of what streamer records."""
        if self.manifest is not None:
            given = self.manifest.source.name
            if given not in ("", ".", "..") and "/" not in given and "\0" not in given:
                return given
        return ends(self.name)[-1] + RECORDING_EXTENSION

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
            "first_seen_at": self.first_seen,
            "first_upload_at": first,
            "last_upload_at": last,
            "assembled": self.assembled_key is not None,
        }


def ends(name: str) -> list[str]:
    """A recording's name and its ends after each `/`, the whole first."""
    parts = name.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


class Ambiguous(Exception):
    """A name matches the streams of more than one recording."""

    def __init__(self, candidates: list[RemoteStream]):
        super().__init__(candidates)
        self.candidates = candidates


def recordings(streams: list[RemoteStream]) -> set[tuple[str, str]]:
    return {(s.instance, s.name) for s in streams}


def newest(streams: list[RemoteStream], latest: bool) -> RemoteStream:
    """The newest of these streams, when they are the streams of one recording (one name
    under one instance), or, with `latest`, whatever recordings they are; else Ambiguous,
    with the candidates newest first."""
    ordered = sorted(streams, key=RemoteStream.newness, reverse=True)
    if len(recordings(streams)) > 1 and not latest:
        raise Ambiguous(ordered)
    return ordered[0]


def nearest(streams: list[RemoteStream], pattern: str) -> list[str]:
    """The recording names, or ends of them, that look most like `pattern`."""
    known = {end for s in streams for end in ends(s.name)}
    return difflib.get_close_matches(pattern, sorted(known), n=SUGGESTIONS)


def listed(
    s3: ChunkStore, instances: list[str] | None, stream_id: str | None = None
) -> list[RemoteStream]:
    """The streams under these instances (None: every instance under the prefix), or only
    those with this id, from one listing, their metadata.json not read yet; sorted by
    instance, then id."""
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
    return [found[k] for k in sorted(found)]


def read_manifests(s3: ChunkStore, streams: list[RemoteStream]) -> list[RemoteStream]:
    with ThreadPoolExecutor(MANIFEST_READERS) as pool:
        list(pool.map(lambda stream: read_manifest(s3, stream), streams))
    return streams


def streams_in(
    s3: ChunkStore, instances: list[str] | None, stream_id: str | None = None
) -> list[RemoteStream]:
    """`listed`, with their metadata.json read."""
    return read_manifests(s3, listed(s3, instances, stream_id))


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
