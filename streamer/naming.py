"""Names derived from recordings: stream ids that are readable, stable and safe as S3 keys."""

from __future__ import annotations

import os
import re
import socket
import unicodedata
from collections.abc import Callable
from datetime import datetime

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 80


def slug(name: str) -> str:
    """A key-safe form of a file name's stem: ASCII letters, digits, '.', '_', '-'."""
    stem, _ = os.path.splitext(name)
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    cleaned = _UNSAFE.sub("_", ascii_stem).strip("._-")
    return cleaned[:MAX_STEM] or "stream"


def stream_id_for(name: str, first_seen: datetime, taken: Callable[[str], bool]) -> str:
    """`<slug>-<UTC first seen>`, with `-2`, `-3`... for a generation that would collide."""
    base = f"{slug(name)}-{first_seen:%Y%m%dT%H%M%SZ}"
    candidate, n = base, 1
    while taken(candidate):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def host_instance() -> str:
    """This host's name, key-safe: the default instance name."""
    return _UNSAFE.sub("_", socket.gethostname()).strip("._-")[:64] or "streamer"


def object_name(name: str) -> str:
    """A key-safe file name, extension kept: `Front Door.MP4` -> `Front_Door.mp4`."""
    _, ext = os.path.splitext(name)
    safe_ext = _UNSAFE.sub("", ext.lower())[:16]
    return slug(name) + (safe_ext if safe_ext not in ("", ".") else "")
