"""What identifies a chunk's bytes: a `Digest`, an algorithm and its value in hex, with one
canonical string form ("crc32c:e3069283", "sha256:<64 hex digits>").

- sha256: cryptographic. Over plain http it is the chunk's signed payload hash, so S3
  refuses a body that is not exactly what was hashed, whoever changed it on the way.
- crc32c: a 32-bit CRC (Castagnoli), computed in hardware at about ten times sha256's
  speed; over https the body is sent unsigned (TLS authenticates it) and S3 checks it
  against this CRC. It catches every burst of changed bits up to 32 long and all but one
  in 2^32 of any other accidental change. It is no defence against bytes changed on
  purpose: TLS is that on the way, and the whole file's sha256 in metadata.json is it
  at rest.
"""

from __future__ import annotations

import base64
import hashlib

from msgspec import Struct

SHA256 = "sha256"
CRC32C = "crc32c"
ALGORITHMS = (SHA256, CRC32C)


class Digest(Struct, frozen=True):
    algorithm: str
    value: str  # hex

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, _, value = text.partition(":")
        if algorithm not in ALGORITHMS or not value:
            raise ValueError(f"not a digest: {text!r}")
        return cls(algorithm, value)

    def header(self) -> tuple[str, str]:
        """The S3 checksum header that makes S3 check a body against this digest."""
        value = base64.b64encode(bytes.fromhex(self.value)).decode()
        return f"x-amz-checksum-{self.algorithm}", value


def recorded(sha256: str | None, crc32c: str | None) -> Digest | None:
    """The digest of a record that keeps one of the two (None: it keeps neither)."""
    if sha256 is not None:
        return Digest(SHA256, sha256)
    return Digest(CRC32C, crc32c) if crc32c is not None else None


def hasher(algorithm: str):
    """An incremental hasher (update, hexdigest) for `algorithm`."""
    if algorithm == SHA256:
        return hashlib.sha256()
    import crc32c  # here: the supervisor, which hashes nothing, never loads it

    return crc32c.CRC32CHash()


def of(algorithm: str, data) -> Digest:
    h = hasher(algorithm)
    h.update(data)
    return Digest(algorithm, h.hexdigest())
