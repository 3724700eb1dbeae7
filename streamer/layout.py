"""Where a stream's objects go in the bucket: one key layout, the only place that spells
a key, used by the uploader, the manifest, retention and the admin commands."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Every chunk object carries this tag, so that a lifecycle rule can expire chunks alone.
CHUNK_TAGS = {"streamer": "chunk"}
# <stream_id>/chunks/000041 or 000041.r2 (a later revision of the same bytes' place); a
# stream id may hold folders (`cam1/2026-12-06/late-20261206T221500Z`).
_CHUNK = re.compile(r"^(.+)/chunks/(\d{6,})(?:\.r(\d+))?$")


@dataclass(frozen=True)
class KeyOf:
    """What a key in the bucket is, read back from the layout: a stream's chunk, its
    metadata.json, or another object of it (its assembled recording)."""

    instance: str
    stream_id: str
    kind: str  # "chunk", "manifest" or "object"
    index: int = -1
    revision: int = 0


@dataclass(frozen=True)
class Layout:
    prefix: str
    instance: str

    def stream_prefix(self, stream_id: str) -> str:
        parts = (self.prefix.strip("/"), self.instance, stream_id)
        return "/".join(p for p in parts if p) + "/"

    def chunk_key(self, stream_id: str, index: int, revision: int = 0) -> str:
        suffix = f".r{revision}" if revision else ""
        return f"{self.stream_prefix(stream_id)}chunks/{index:06d}{suffix}"

    def assembled_key(self, stream_id: str, file_name: str) -> str:
        return f"{self.stream_prefix(stream_id)}{file_name}"

    def owner_key(self) -> str:
        """The instance's claim: which checkpoint store writes under it."""
        return f"{self.stream_prefix('')}.owner"

    def scratch_key(self, name: str) -> str:
        """An object `streamer doctor` writes, reads back and deletes."""
        return f"{self.stream_prefix('')}.doctor/{name}"

    def manifest_key(self, stream_id: str) -> str:
        return f"{self.stream_prefix(stream_id)}metadata.json"

    def instances_prefix(self) -> str:
        """Where every instance's streams are, under this prefix."""
        prefix = self.prefix.strip("/")
        return f"{prefix}/" if prefix else ""

    def parse(self, key: str) -> KeyOf | None:
        """The key's place in the layout (any instance under this prefix), or None for
        what is not a stream's (an instance's claim, doctor's scratch objects)."""
        rest = key.removeprefix(self.instances_prefix())
        if rest == key and self.instances_prefix():
            return None
        instance, _, below = rest.partition("/")
        if chunk := _CHUNK.match(below):
            stream_id, kind = chunk[1], "chunk"
        else:
            stream_id, _, name = below.rpartition("/")
            kind = "manifest" if name == "metadata.json" else "object"
            if not name:  # a folder marker (an S3 console's "create folder"): no object
                return None
        if not instance or not stream_id or stream_id.startswith("."):
            return None
        if any(not part for part in stream_id.split("/")):
            return None
        if kind == "chunk":
            return KeyOf(instance, stream_id, kind, int(chunk[2]), int(chunk[3] or 0))
        return KeyOf(instance, stream_id, kind)
