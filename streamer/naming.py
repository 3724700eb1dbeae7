"""Names derived from recordings: stream ids that are readable, stable and safe as S3 keys."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import unicodedata
from collections.abc import Callable
from datetime import datetime

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 80
# Folders of a stream id, in all: with the prefix, the instance, the stem and the file's
# name, a key stays well within S3's 1024 bytes.
MAX_FOLDERS = 400


def slug(name: str) -> str:
    """A key-safe form of a file name's stem: ASCII letters, digits, '.', '_', '-'."""
    stem, _ = os.path.splitext(name)
    return _safe(stem) or "stream"


def _safe(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _UNSAFE.sub("_", ascii_text).strip("._-")[:MAX_STEM]


def stream_id_for(relative_path: str, first_seen: datetime, taken: Callable[[str], bool]) -> str:
    """`<folder>/.../<slug>-<UTC first seen>` for a file at `relative_path` below the watch
    directory (each folder key-safe too), with `-2`, `-3`... for a generation that would
    collide: `cam1/2026-12-06/late.mp4` -> `cam1/2026-12-06/late-20261206T221500Z`."""
    folders, name = os.path.split(relative_path)
    parts = [_safe(folder) or "folder" for folder in folders.split(os.sep) if folder]
    base = "/".join([*_within(parts, MAX_FOLDERS), f"{slug(name)}-{first_seen:%Y%m%dT%H%M%SZ}"])
    candidate, n = base, 1
    while taken(candidate):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _within(parts: list[str], limit: int) -> list[str]:
    """The folders as they are, or, longer than `limit` in all (S3 takes keys of 1024 bytes
    at most), the first ones and a hash of the rest: still one folder per place."""
    if len("/".join(parts)) <= limit:
        return parts
    kept = []
    for part in parts:
        if len("/".join([*kept, part])) > limit - 20:
            break
        kept.append(part)
    rest = hashlib.sha256("/".join(parts[len(kept) :]).encode()).hexdigest()[:16]
    return [*kept, f"~{rest}"]


def host_instance() -> str:
    """This host's name, key-safe: the default instance name."""
    return _UNSAFE.sub("_", socket.gethostname()).strip("._-")[:64] or "streamer"


def object_name(name: str) -> str:
    """A key-safe file name, extension kept: `Front Door.MP4` -> `Front_Door.mp4`."""
    _, ext = os.path.splitext(name)
    safe_ext = _UNSAFE.sub("", ext.lower())[:16]
    return slug(name) + (safe_ext if safe_ext not in ("", ".") else "")
