"""Facts about an MP4 (ISO-BMFF) recording, read from its box structure.

It never raises on what a file contains: arbitrary, truncated or hostile bytes give facts
that say so (`is_mp4`, `truncated`, `has_moov`), not an exception. Only the small boxes are
read (`moov`, `moof`); `mdat` is skipped by seeking, so a file of any size costs a few
reads per fragment.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO

from msgspec import Struct

# Boxes that may open an MP4 file; anything else first means "not MP4".
_FIRST_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"moof"}
MAX_BOX_READ = 64 * 1024 * 1024  # a moov or moof larger than this is not believed

ReadAt = Callable[[int, int], bytes]


class Track(Struct, kw_only=True):
    track_id: int
    kind: str  # the handler: "vide", "soun", ...
    codec: str | None = None
    timescale: int | None = None
    width: int | None = None
    height: int | None = None
    sample_rate: int | None = None
    duration_seconds: float | None = None


class Mp4Facts(Struct, kw_only=True):
    is_mp4: bool = False
    brand: str | None = None
    has_moov: bool = False
    fragmented: bool = False
    truncated: bool = False  # the last box claims bytes past the end of the file
    playable: bool = False
    duration_seconds: float | None = None
    tracks: list[Track] = []


class _Fragments:
    """Per track: the end of the latest fragment, in the track's timescale."""

    def __init__(self) -> None:
        self.defaults: dict[int, int] = {}  # track_id -> trex default sample duration
        self.end: dict[int, int] = {}
        self.summed: dict[int, int] = {}


def inspect_file(f: BinaryIO) -> Mp4Facts:
    """The facts of an open file (seekable)."""

    def read_at(offset: int, size: int) -> bytes:
        f.seek(offset)
        return f.read(size)

    f.seek(0, 2)
    return inspect(read_at, f.tell())


def inspect_bytes(data: bytes) -> Mp4Facts:
    return inspect(lambda offset, size: data[offset : offset + size], len(data))


def inspect(read_at: ReadAt, size: int) -> Mp4Facts:
    facts = Mp4Facts()
    try:
        _walk_file(read_at, size, facts)
    except (struct.error, ValueError, IndexError, OverflowError, ZeroDivisionError):
        facts.truncated = True
    facts.playable = (
        facts.is_mp4
        and facts.has_moov
        and not facts.truncated
        and any(t.kind in ("vide", "soun") for t in facts.tracks)
    )
    return facts


def playable_prefix(read_at: ReadAt, size: int) -> int | None:
    """How many of the first bytes make a recording that plays: all of them for a whole
    plain MP4; for a fragmented one, up to the end of its last whole fragment (a `moof`,
    then its `mdat`); None when no prefix can play (no `moov`, no whole fragment, or a
    plain MP4 cut short, whose `moov` is missing or points past the end)."""
    offset, moov, fragmented, moof_open, cut = 0, False, False, False, None
    try:
        while offset < size:
            data = read_at(offset, 16)
            header = _box_header(data, size - offset)
            if header is None or data[:4] == b"\0\0\0\0":  # size 0: still being written
                break
            kind, _, box_size = header
            if offset + box_size > size:
                break
            if kind == b"moov":
                moov = True
            elif kind == b"moof":
                fragmented, moof_open = True, True
            elif kind == b"mdat" and moof_open:
                moof_open, cut = False, offset + box_size
            offset += box_size
    except (struct.error, ValueError, IndexError, OverflowError):
        pass
    if not moov:
        return None
    if fragmented:
        return cut
    return size if offset == size else None


def _walk_file(read_at: ReadAt, size: int, facts: Mp4Facts) -> None:
    fragments = _Fragments()
    mvhd: tuple[int, int] | None = None
    offset, first = 0, True
    while offset < size:
        header = _box_header(read_at(offset, 16), size - offset)
        if header is None:
            facts.truncated = facts.is_mp4
            return
        kind, header_size, box_size = header
        if first:
            if kind not in _FIRST_BOXES:
                return
            facts.is_mp4, first = True, False
        if offset + box_size > size:
            facts.truncated = True
        body_size = min(box_size, size - offset) - header_size
        if kind in (b"ftyp", b"styp") and body_size >= 4 and facts.brand is None:
            facts.brand = _fourcc(read_at(offset + header_size, 4))
        elif kind in (b"moov", b"moof") and body_size <= MAX_BOX_READ:
            body = read_at(offset + header_size, body_size)
            if kind == b"moov":
                facts.has_moov = True
                mvhd = _read_moov(body, facts, fragments) or mvhd
            else:
                facts.fragmented = True
                _read_moof(body, fragments)
        offset += box_size
    _settle_durations(facts, fragments, mvhd)


def _box_header(data: bytes, remaining: int) -> tuple[bytes, int, int] | None:
    """(type, header size, box size) of the box starting `data`, or None if it makes no sense."""
    if len(data) < 8:
        return None
    box_size, kind = struct.unpack(">I4s", data[:8])
    header_size = 8
    if box_size == 1:
        if len(data) < 16:
            return None
        box_size = struct.unpack(">Q", data[8:16])[0]
        header_size = 16
    elif box_size == 0:  # "to the end of the file": a recording still being written
        box_size = remaining
    if box_size < header_size:
        return None
    return kind, header_size, box_size


def _children(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of each box directly inside a container's body."""
    offset = 0
    while offset + 8 <= len(data):
        header = _box_header(data[offset : offset + 16], len(data) - offset)
        if header is None:
            return
        kind, header_size, box_size = header
        body = data[offset + header_size : offset + box_size]
        yield kind, body
        offset += box_size


def _read_moov(body: bytes, facts: Mp4Facts, fragments: _Fragments) -> tuple[int, int] | None:
    mvhd = None
    for kind, child in _children(body):
        if kind == b"mvhd":
            mvhd = _timescale_and_duration(child)
        elif kind == b"trak":
            track = _read_trak(child)
            if track is not None:
                facts.tracks.append(track)
        elif kind == b"mvex":
            for sub, data in _children(child):
                if sub == b"trex" and len(data) >= 16:
                    track_id, _, duration = struct.unpack(">III", data[4:16])
                    fragments.defaults[track_id] = duration
                elif sub == b"mehd" and mvhd:
                    long = data[:1] == b"\x01"
                    value = _uint(data, 4, 8 if long else 4)
                    if value and mvhd[1] == 0:
                        mvhd = (mvhd[0], value)
    return mvhd


def _read_trak(body: bytes) -> Track | None:
    track = Track(track_id=0, kind="")
    duration = None
    for kind, child in _children(body):
        if kind == b"tkhd":
            long = child[:1] == b"\x01"
            track.track_id = _uint(child, 20 if long else 12, 4) or 0
        elif kind == b"mdia":
            for sub, data in _children(child):
                if sub == b"mdhd":
                    timescale_duration = _timescale_and_duration(data)
                    if timescale_duration:
                        track.timescale, duration = timescale_duration
                elif sub == b"hdlr" and len(data) >= 12:
                    track.kind = _fourcc(data[8:12])
                elif sub == b"minf":
                    _read_sample_entry(_find(data, (b"stbl", b"stsd")), track)
    if not track.kind:
        return None
    if track.timescale and duration:
        track.duration_seconds = duration / track.timescale
    return track


def _read_sample_entry(stsd: bytes | None, track: Track) -> None:
    if not stsd or len(stsd) < 16:
        return
    entry = stsd[8:]
    track.codec = _fourcc(entry[4:8])
    if track.kind == "vide" and len(entry) >= 36:
        track.width, track.height = struct.unpack(">HH", entry[32:36])
    elif track.kind == "soun" and len(entry) >= 36:
        track.sample_rate = struct.unpack(">I", entry[32:36])[0] >> 16


def _read_moof(body: bytes, fragments: _Fragments) -> None:
    for kind, traf in _children(body):
        if kind != b"traf":
            continue
        track_id, default_duration, base, total = 0, None, None, 0
        for sub, data in _children(traf):
            if sub == b"tfhd" and len(data) >= 8:
                flags = _uint(data, 1, 3)
                track_id = _uint(data, 4, 4)
                at = 8 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
                if flags & 0x08:
                    default_duration = _uint(data, at, 4)
            elif sub == b"tfdt" and len(data) >= 8:
                base = _uint(data, 4, 8 if data[:1] == b"\x01" else 4)
            elif sub == b"trun":
                fallback = default_duration or fragments.defaults.get(track_id, 0)
                total += _trun_duration(data, fallback)
        fragments.summed[track_id] = fragments.summed.get(track_id, 0) + total
        if base is not None:
            fragments.end[track_id] = max(fragments.end.get(track_id, 0), base + total)


def _trun_duration(data: bytes, default_duration: int) -> int:
    if len(data) < 8:
        return 0
    flags = _uint(data, 1, 3)
    count = _uint(data, 4, 4)
    at = 8 + (4 if flags & 0x01 else 0) + (4 if flags & 0x04 else 0)
    if not flags & 0x100:
        return count * default_duration
    per_sample = 4 * sum(1 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
    count = min(count, max(0, len(data) - at) // per_sample)
    return sum(_uint(data, at + i * per_sample, 4) for i in range(count))


def _settle_durations(facts: Mp4Facts, fragments: _Fragments, mvhd) -> None:
    for track in facts.tracks:
        ticks = fragments.end.get(track.track_id) or fragments.summed.get(track.track_id)
        if ticks and track.timescale:
            track.duration_seconds = max(track.duration_seconds or 0, ticks / track.timescale)
    if mvhd and mvhd[0] and mvhd[1] and not facts.fragmented:
        facts.duration_seconds = mvhd[1] / mvhd[0]
    else:
        durations = [t.duration_seconds for t in facts.tracks if t.duration_seconds]
        if mvhd and mvhd[0] and mvhd[1]:
            durations.append(mvhd[1] / mvhd[0])
        facts.duration_seconds = max(durations) if durations else None


def _timescale_and_duration(data: bytes) -> tuple[int, int] | None:
    """(timescale, duration) of an mvhd or mdhd body, version 0 or 1."""
    if data[:1] == b"\x01":
        return (_uint(data, 20, 4), _uint(data, 24, 8)) if len(data) >= 32 else None
    return (_uint(data, 12, 4), _uint(data, 16, 4)) if len(data) >= 20 else None


def _find(data: bytes, path: tuple[bytes, ...]) -> bytes | None:
    for kind, child in _children(data):
        if kind == path[0]:
            return child if len(path) == 1 else _find(child, path[1:])
    return None


def _uint(data: bytes, at: int, size: int) -> int:
    chunk = data[at : at + size]
    return int.from_bytes(chunk, "big") if len(chunk) == size else 0


def _fourcc(data: bytes) -> str:
    return data.decode("latin-1")
