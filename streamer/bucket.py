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
from functools import partial
from typing import TypeVar

import msgspec

from streamer import manifest
from streamer.layout import KeyOf
from streamer.manifest import Manifest
from streamer.objectstore import ObjectStore, StoredObject
from streamer.records import Assembled, StreamState

# metadata.json files read at once: a listing of a fleet's streams waits on round trips.
MANIFEST_READERS = 16
MANIFESTS_AHEAD = 256  # metadata.json files asked for at a time, a batch
# A stream id as naming.stream_id_for makes it: the recording's name (its path below the
# watch directory, without the extension), the UTC second it was first seen, and -2, -3...
# for a later stream of the same name first seen in the same second.
STREAM_ID = re.compile(r"^(?P<name>.+)-(?P<at>\d{8}T\d{6}Z)(?:-(?P<n>\d+))?$")
# What streamer records, and so the extension of a recording whose own name is not in S3
# (an active stream has chunks and no metadata.json).
RECORDING_EXTENSION = ".mp4"
SUGGESTIONS = 3


@dataclass(frozen=True)
class Totals:
    """Chunks added up: how many, their bytes, their first and last upload."""

    chunks: int = 0
    size: int = 0
    first: datetime | None = None
    last: datetime | None = None

    def plus(self, stored: StoredObject) -> Totals:
        at = stored.modified
        if at is None:
            return Totals(self.chunks + 1, self.size + stored.size, self.first, self.last)
        first, last = min(self.first or at, at), max(self.last or at, at)
        return Totals(self.chunks + 1, self.size + stored.size, first, last)


@dataclass
class ChunkTally:
    """A stream's chunks added up as the listing goes by, each chunk's latest revision
    once, in the same few bytes however many chunks it has: S3 lists keys in UTF-8 binary
    order, so the revisions of a chunk (`chunks/000001`, `chunks/000001.r1`) come one
    after another."""

    settled: Totals = field(default_factory=Totals)  # the chunks before `index`
    index: int = -1
    revision: int = -1
    latest: StoredObject | None = None  # chunk `index`'s latest revision so far

    def add(self, place: KeyOf, stored: StoredObject) -> None:
        if place.index != self.index:
            self.settled = self.totals
            self.index, self.revision, self.latest = place.index, -1, None
        if place.revision >= self.revision:
            self.revision, self.latest = place.revision, stored

    @property
    def totals(self) -> Totals:
        return self.settled if self.latest is None else self.settled.plus(self.latest)


@dataclass(frozen=True)
class Recorded:
    """What is shown of a stream's metadata.json; the decoded metadata.json itself is let
    go (a long recording's lists thousands of chunks)."""

    status: str
    total_size: int
    chunk_count: int
    file_name: str  # as its source gives it
    assembled: Assembled | None
    first_seen_at: datetime
    first_upload_at: datetime | None
    last_upload_at: datetime | None

    @classmethod
    def of(cls, found: Manifest) -> Recorded:
        return cls(
            found.status,
            found.total_size,
            found.chunk_count,
            found.source.name,
            found.assembled,
            found.first_seen_at,
            found.first_upload_at,
            found.last_upload_at,
        )


@dataclass
class ListedStream:
    """One stream as a listing of the bucket shows it, in a few hundred bytes however long
    its recording: its chunks added up, what its metadata.json says once read, its other
    objects (its whole object)."""

    instance: str
    stream_id: str
    tally: ChunkTally = field(default_factory=ChunkTally)
    manifest_key: str | None = None
    objects: dict[str, StoredObject] = field(default_factory=dict)  # its other objects
    recorded: Recorded | None = None
    manifest_error: str | None = None  # metadata.json there, but not readable as one

    def add(self, key: str, place: KeyOf, stored: StoredObject) -> None:
        if place.kind == "manifest":
            self.manifest_key = key
        elif place.kind == "object":
            self.objects[key] = stored
        else:
            self.tally.add(place, stored)

    def keep(self, found: Manifest) -> None:
        """Its metadata.json, read."""
        self.recorded = Recorded.of(found)

    @property
    def status(self) -> str:
        if self.recorded is not None:
            return self.recorded.status
        return "invalid metadata.json" if self.manifest_error else StreamState.ACTIVE.value

    @property
    def size(self) -> int:
        if self.recorded is not None:
            return self.recorded.total_size
        return self.tally.totals.size

    @property
    def chunk_count(self) -> int:
        if self.recorded is not None:
            return self.recorded.chunk_count
        return self.tally.totals.chunks

    @property
    def assembled_key(self) -> str | None:
        """The whole recording as one object, if it is there as metadata.json says."""
        assembled = self.recorded.assembled if self.recorded is not None else None
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
        if self.recorded is not None:
            return self.recorded.first_seen_at
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
        if self.recorded is not None:
            given = self.recorded.file_name
            if given not in ("", ".", "..") and "/" not in given and "\0" not in given:
                return given
        return ends(self.name)[-1] + RECORDING_EXTENSION

    def upload_times(self) -> tuple[datetime | None, datetime | None]:
        if self.recorded is not None:
            return self.recorded.first_upload_at, self.recorded.last_upload_at
        totals = self.tally.totals
        return totals.first, totals.last

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


@dataclass
class RemoteStream(ListedStream):
    """One stream with every object of it in the bucket and its whole metadata.json: what
    a recording is restored from."""

    # Per chunk index, the latest revision's key and object (a later revision holds the
    # bytes the recorder rewrote there).
    chunks: dict[int, tuple[str, StoredObject]] = field(default_factory=dict)
    revisions: dict[int, int] = field(default_factory=dict)
    chunk_keys: set[str] = field(default_factory=set)  # every revision's
    manifest: Manifest | None = None

    def add(self, key: str, place: KeyOf, stored: StoredObject) -> None:
        super().add(key, place, stored)
        if place.kind == "chunk":
            self.chunk_keys.add(key)
            if place.revision >= self.revisions.get(place.index, -1):
                self.revisions[place.index] = place.revision
                self.chunks[place.index] = (key, stored)

    def keep(self, found: Manifest) -> None:
        super().keep(found)
        self.manifest = found


def ends(name: str) -> list[str]:
    """A recording's name and its ends after each `/`, the whole first."""
    parts = name.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


class Ambiguous(Exception):
    """A name matches the streams of more than one recording."""

    def __init__(self, candidates: list[ListedStream]):
        super().__init__(candidates)
        self.candidates = candidates


def recordings(streams: list[ListedStream]) -> set[tuple[str, str]]:
    return {(s.instance, s.name) for s in streams}


def newest(streams: list[ListedStream], latest: bool) -> ListedStream:
    """The newest of these streams, when they are the streams of one recording (one name
    under one instance), or, with `latest`, whatever recordings they are; else Ambiguous,
    with the candidates newest first."""
    ordered = sorted(streams, key=ListedStream.newness, reverse=True)
    if len(recordings(streams)) > 1 and not latest:
        raise Ambiguous(ordered)
    return ordered[0]


def nearest(streams: list[ListedStream], pattern: str) -> list[str]:
    """The recording names, or ends of them, that look most like `pattern`."""
    known = {end for s in streams for end in ends(s.name)}
    return difflib.get_close_matches(pattern, sorted(known), n=SUGGESTIONS)


T = TypeVar("T", bound=ListedStream)


def listed(
    s3: ObjectStore,
    instances: list[str] | None,
    stream_id: str | None = None,
    kind: type[T] = ListedStream,
) -> list[T]:
    """The streams under these instances (None: every instance under the prefix), or only
    those with this id, from one listing read page by page, their metadata.json not read
    yet; sorted by instance, then id. `kind`: ListedStream, or RemoteStream to keep every
    object."""
    layout = s3.layout
    top = layout.instances_prefix()
    if instances is None:
        instances = [p.removeprefix(top).strip("/") for p in s3.children(top)]
    below = f"{stream_id}/" if stream_id is not None else ""
    prefixes = [f"{top}{name}/{below}" for name in instances]
    found: dict[tuple[str, str], T] = {}
    for prefix in prefixes:
        for key, stored in s3.walk(prefix):
            place = layout.parse(key)
            if place is None or stream_id not in (None, place.stream_id):
                continue
            which = (place.instance, place.stream_id)
            if which not in found:
                found[which] = kind(place.instance, place.stream_id)
            found[which].add(key, place, stored)
    return [found[k] for k in sorted(found)]


def read_manifests(s3: ObjectStore, streams: list[T]) -> list[T]:
    """Their metadata.json read, MANIFEST_READERS at once, MANIFESTS_AHEAD asked for at a
    time however many streams there are; each decoded one is let go once what is shown
    of it is kept (a RemoteStream keeps it whole)."""
    with ThreadPoolExecutor(MANIFEST_READERS) as pool:
        for at in range(0, len(streams), MANIFESTS_AHEAD):
            list(pool.map(partial(read_manifest, s3), streams[at : at + MANIFESTS_AHEAD]))
    return streams


def read_manifest(s3: ObjectStore, stream: ListedStream) -> None:
    if stream.manifest_key is None:
        return
    data = s3.get_if_exists(stream.manifest_key)
    if data is None:  # deleted since the listing
        stream.manifest_key = None
        return
    try:
        stream.keep(manifest.decode(data))
    except msgspec.DecodeError as exc:
        stream.manifest_error = str(exc)


def find(s3: ObjectStore, stream_id: str, instance: str | None) -> list[RemoteStream]:
    """The stream under this instance, or, with None, under whichever instances have it,
    with every object of it and its metadata.json read."""
    return read_manifests(
        s3, listed(s3, None if instance is None else [instance], stream_id, RemoteStream)
    )
