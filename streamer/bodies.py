"""A PUT's body: its length, and its bytes in pieces as many times as they are wanted (a
pass to digest them, another to send them). `InMemory` is bytes at hand (a claim,
metadata.json); `fileio.Span` is a chunk of a recording, read from the file on each
pass, so that no chunk is held in memory whole; `Checked` is a span that must read as it
did on its first pass; `Tapped`, one whose bytes feed hashers as they are sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from streamer import digests
from streamer.digests import Digest
from streamer.fileio import SourceChanged


class Body(Protocol):
    def __len__(self) -> int: ...

    def pieces(self) -> Iterator[memoryview]: ...


class InMemory:
    def __init__(self, data: bytes | bytearray | memoryview):
        self._data = memoryview(data).cast("B")

    def __len__(self) -> int:
        return len(self._data)

    def pieces(self) -> Iterator[memoryview]:
        yield self._data


class Checked:
    """A body read again that must be the bytes of the pass that took its `crc`: its last
    piece is let go only once the bytes before it match, so other bytes (a recorder that
    rewrote them in between) never make a whole body, whether or not the server checks
    the digest it is given. The check is a hardware CRC, about a tenth of a CPU-second
    per GiB."""

    def __init__(self, body: Body, crc: Digest):
        self.body = body
        self.crc = crc

    def __len__(self) -> int:
        return len(self.body)

    def pieces(self) -> Iterator[memoryview]:
        hasher, read, total = digests.hasher(self.crc.algorithm), 0, len(self.body)
        for piece in self.body.pieces():
            hasher.update(piece)
            read += len(piece)
            if read == total and hasher.hexdigest() != self.crc.value:
                raise SourceChanged("the bytes changed since they were digested")
            yield piece


class Tapped:
    """A body whose pieces also feed `hashers` as they pass, on every pass."""

    def __init__(self, body: Body, *hashers):
        self.body = body
        self.hashers = hashers

    def __len__(self) -> int:
        return len(self.body)

    def pieces(self) -> Iterator[memoryview]:
        for piece in self.body.pieces():
            for hasher in self.hashers:
                hasher.update(piece)
            yield piece


class Head:
    """The first `size` bytes of what it is fed: the file's head, taken in the same pass
    as chunk 0's digest."""

    def __init__(self, size: int):
        self._size = size
        self.data = b""

    def update(self, piece: memoryview) -> None:
        if len(self.data) < self._size:
            self.data += bytes(piece[: self._size - len(self.data)])


def feed(body: Body, *hashers) -> None:
    """One pass over `body`, each piece to every hasher (none: nothing is read)."""
    if not hashers:
        return
    for piece in body.pieces():
        for hasher in hashers:
            hasher.update(piece)


def digest(algorithm: str, body: Body, *also) -> Digest:
    """The digest of `body`'s bytes; `also`, other hashers, are fed them in the same pass."""
    return digests_of((algorithm,), body, *also)[algorithm]


def digests_of(algorithms: tuple[str, ...], body: Body, *also) -> dict[str, Digest]:
    """The digests of `body`'s bytes by each of `algorithms`, in one pass that feeds `also`,
    other hashers, too."""
    hashers = {algorithm: digests.hasher(algorithm) for algorithm in algorithms}
    feed(body, *hashers.values(), *also)
    return {a: Digest(a, h.hexdigest()) for a, h in hashers.items()}
