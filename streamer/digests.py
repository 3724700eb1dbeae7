"""What identifies a chunk's bytes: a `Digest`, an algorithm and its value in hex, with one
canonical string form ("crc64nvme:ae8b14860a799888", "sha256:<64 hex digits>").

- crc64nvme: a 64-bit CRC, computed in hardware at about seven times sha256's speed. Over
  https a chunk goes unsigned (TLS authenticates it) and S3 checks its body against this
  CRC, which it stores. It catches every burst of changed bits up to 64 long and all but
  one in 2^64 of any other accidental change, and the CRCs of consecutive pieces combine
  into the CRC of the whole without the bytes (`combine`): the whole recording's comes
  from its chunks', with no other pass over the file. It is no defence against bytes
  changed on purpose: TLS is that on the way, and the whole file's sha256
  (`integrity.file_sha256`) is it at rest.
- crc32c: the same kind of check in 32 bits, for a server that refuses crc64nvme.
- sha256: cryptographic. Over plain http it is the chunk's signed payload hash, so S3
  refuses a body that is not exactly what was hashed, whoever changed it on the way.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

from msgspec import Struct

SHA256 = "sha256"
CRC64NVME = "crc64nvme"
CRC32C = "crc32c"
ALGORITHMS = (SHA256, CRC64NVME, CRC32C)


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

    @property
    def b64(self) -> str:
        """Its value as S3 writes a checksum: base64 of its bytes."""
        return base64.b64encode(bytes.fromhex(self.value)).decode()

    def header(self) -> tuple[str, str]:
        """The S3 checksum header that makes S3 check a body against this digest."""
        return f"x-amz-checksum-{self.algorithm}", self.b64


def recorded(sha256: str | None, crc32c: str | None, crc64nvme: str | None = None) -> Digest | None:
    """The digest S3 checked a chunk by, of those its record keeps (None: it keeps none): a
    signed sha256 where there is one, else the CRC it was sent with (a chunk sent with
    crc32c keeps the crc64nvme streamer took of it too)."""
    if sha256 is not None:
        return Digest(SHA256, sha256)
    if crc32c is not None:
        return Digest(CRC32C, crc32c)
    return Digest(CRC64NVME, crc64nvme) if crc64nvme is not None else None


class _Crc:
    """An incremental CRC with hashlib's `update` and `hexdigest`. awscrt's CRCs run in
    hardware and let go of the GIL while they do, so sender threads hash side by side."""

    def __init__(self, function, width: int):
        self._function = function
        self._digits = width // 4
        self.value = 0

    def update(self, data) -> None:
        self.value = self._function(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:0{self._digits}x}"


def hasher(algorithm: str):
    """An incremental hasher (update, hexdigest) for `algorithm`."""
    if algorithm == SHA256:
        return hashlib.sha256()
    # Here: the supervisor, which hashes nothing, never loads it.
    from awscrt import checksums

    if algorithm == CRC64NVME:
        return _Crc(checksums.crc64nvme, 64)
    return _Crc(checksums.crc32c, 32)


def of(algorithm: str, data) -> Digest:
    h = hasher(algorithm)
    h.update(data)
    return Digest(algorithm, h.hexdigest())


def whole(sha256: str | None, crc64nvme: str | None) -> Digest | None:
    """What a recording's bytes together are proven by: the file's sha256 where it was
    taken, else the crc64nvme of its chunks together; None if neither is known."""
    if sha256 is not None:
        return Digest(SHA256, sha256)
    return Digest(CRC64NVME, crc64nvme) if crc64nvme is not None else None


def combine(pieces: Iterable[tuple[str, int]]) -> str | None:
    """The crc64nvme of consecutive pieces' bytes from each one's crc64nvme (hex) and size,
    without the bytes; None if a piece's CRC is not known."""
    from awscrt import checksums

    whole = 0
    for value, size in pieces:
        if value is None:
            return None
        whole = checksums.combine_crc64nvme(whole, int(value, 16), size)
    return f"{whole:016x}"
