"""A PUT's body and the passes over it: bytes at hand (`InMemory`), a body that must read
as it did when it was digested (`Checked`), one that feeds hashers as it is sent
(`Tapped`), a file's head taken on the way (`Head`), and one pass that feeds every hasher
(`feed`, `digest`, `digests_of`); on bytes in memory and on a real file's `fileio.Span`."""

from __future__ import annotations

import array
import hashlib
import os

import pytest
from awscrt.checksums import crc64nvme
from recordings import record_of

from streamer import digests
from streamer.bodies import Checked, Head, InMemory, Tapped, digest, digests_of, feed
from streamer.digests import CRC32C, CRC64NVME, SHA256, Digest
from streamer.fileio import PIECE, SourceChanged, Span


class Pieces:
    """A body of the given pieces, whose bytes a test may change between passes; it
    counts the passes made over it."""

    def __init__(self, *pieces: bytes):
        self.parts = list(pieces)
        self.passes = 0

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def pieces(self):
        self.passes += 1
        for part in self.parts:
            yield memoryview(part)


class Seen:
    """A hasher that keeps what it was fed."""

    def __init__(self):
        self.data = b""

    def update(self, piece) -> None:
        self.data += bytes(piece)


def joined(body) -> bytes:
    return b"".join(bytes(piece) for piece in body.pieces())


def test_bytes_in_memory_are_the_same_body_on_every_pass_counted_in_bytes():
    body = InMemory(bytearray(b"metadata"))
    assert len(body) == 8 and joined(body) == joined(body) == b"metadata"
    wide = InMemory(memoryview(array.array("H", [1, 2, 3])))  # three 2-byte items
    assert len(wide) == 6 and joined(wide) == array.array("H", [1, 2, 3]).tobytes()


def test_a_checked_body_lets_every_piece_go_when_its_bytes_match_the_crc():
    body = Pieces(b"abc", b"def", b"g")
    crc = digests.of(CRC64NVME, b"abcdefg")
    checked = Checked(body, crc)
    assert len(checked) == 7 and joined(checked) == b"abcdefg"
    assert joined(Checked(body, digests.of(SHA256, b"abcdefg"))) == b"abcdefg"


def test_a_checked_body_whose_last_piece_changed_never_lets_that_piece_go():
    body = Pieces(b"abc", b"def", b"g")
    checked = Checked(body, digests.of(CRC64NVME, b"abcdefg"))
    body.parts[-1] = b"X"  # the recorder rewrote the chunk's last byte since its digest
    pieces = checked.pieces()
    assert [bytes(next(pieces)), bytes(next(pieces))] == [b"abc", b"def"]
    with pytest.raises(SourceChanged, match="changed since they were digested"):
        next(pieces)


def test_a_checked_body_whose_first_piece_changed_stops_before_it_is_whole():
    body = Pieces(b"abc", b"def")
    checked = Checked(body, digests.of(CRC32C, b"abcdef"))
    body.parts[0] = b"xyz"
    sent = []
    with pytest.raises(SourceChanged):
        for piece in checked.pieces():
            sent.append(bytes(piece))
    assert sent == [b"xyz"], "the body is cut short: its last piece never goes"


def test_a_tapped_body_feeds_its_hashers_on_every_pass():
    first, second = Seen(), Seen()
    body = Tapped(InMemory(b"chunk"), first, second)
    assert len(body) == 5 and joined(body) == b"chunk"
    assert first.data == second.data == b"chunk"
    joined(body)  # sent again (a retry): fed again
    assert first.data == second.data == b"chunkchunk"


def test_a_head_keeps_only_the_first_bytes_it_is_fed_across_pieces():
    head = Head(5)
    feed(Pieces(b"ab", b"cdef", b"ghi"), head)
    assert head.data == b"abcde"
    short = Head(16)
    feed(Pieces(b"ab", b"c"), short)
    assert short.data == b"abc", "a body shorter than the head is all of it"


def test_one_pass_feeds_every_hasher_and_none_reads_nothing():
    body = Pieces(b"0123", b"4567", b"89")
    seen, head = Seen(), Head(3)
    found = digests_of((SHA256, CRC64NVME, CRC32C), body, seen, head)
    assert body.passes == 1
    assert found == {a: digests.of(a, b"0123456789") for a in (SHA256, CRC64NVME, CRC32C)}
    assert (seen.data, head.data) == (b"0123456789", b"012")
    also = Seen()
    assert digest(CRC64NVME, body, also) == Digest(CRC64NVME, f"{crc64nvme(b'0123456789'):016x}")
    assert body.passes == 2 and also.data == b"0123456789"
    feed(body)
    assert body.passes == 2, "with no hasher the body is not read"


def test_a_span_of_a_file_is_digested_in_one_pass_its_head_taken_and_checked_when_sent(
    tmp_path,
):
    path = tmp_path / "cam.mp4"
    data = os.urandom(PIECE + 100)
    path.write_bytes(data)
    span = Span(record_of(path), 50, PIECE + 20)
    part = data[50 : PIECE + 70]
    head = Head(16)
    sums = digests_of((SHA256, CRC64NVME), span, head)
    assert sums[SHA256].value == hashlib.sha256(part).hexdigest()
    assert sums[CRC64NVME].value == f"{crc64nvme(part):016x}" and head.data == part[:16]
    tap = hashlib.sha256()
    assert joined(Checked(Tapped(span, tap), sums[CRC64NVME])) == part
    assert tap.hexdigest() == sums[SHA256].value
    with path.open("r+b") as f:  # rewritten in place, past the first piece
        f.seek(PIECE + 60)
        f.write(b"rewritten")
    with pytest.raises(SourceChanged, match="changed since they were digested"):
        joined(Checked(span, sums[CRC64NVME]))
