"""Where a stream's objects go in the bucket: one key layout, the only place that spells
a key, used by the uploader, the manifest, retention and the admin commands."""

from __future__ import annotations

from dataclasses import dataclass


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
