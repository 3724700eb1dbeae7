"""What ChunkStore does without a server: a chunk's aws-chunked body (`_Framing`), its
length stated before its bytes and the bytes themselves, unsigned and signed, parsed back
as S3 parses it, its signatures checked from the request's own; a PUT of such a body, from
`put_chunk` down to the bytes a server on loopback takes; which checksum a store's chunks go
with and what S3 checks them by; a multipart object's ETag; the digest an object was
stored with, read from its headers; the errors that say a write's condition does not hold
or an upload is gone; and a stream's reads paced to the bandwidth cap."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import io
import random
import re
import threading
from collections.abc import Iterator
from typing import NamedTuple

import pytest
from awscrt.checksums import crc32c, crc64nvme
from dirstore import s3_error
from minio.error import S3Error

from streamer import digests
from streamer.bandwidth import TokenBucket
from streamer.bodies import InMemory
from streamer.chunkstore import (
    ChunkStore,
    _Framing,
    _hex,
    _not_held,
    _PacedReader,
    _stored_digest,
    _upload_gone_if_missing,
    multipart_etag,
)
from streamer.config import S3Config
from streamer.digests import ALGORITHMS, CRC32C, CRC64NVME, SHA256, Digest
from streamer.fileio import PIECE
from streamer.objectstore import UploadGone
from streamer.s3client import PieceSigner

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AMZ_DATE = "20250102T030405Z"
REGION = "us-east-1"
SCOPE = f"{AMZ_DATE[:8]}/{REGION}/s3/aws4_request"
SEED = hashlib.sha256(b"the request's own signature").hexdigest()
# A request's headers once signed, as a PieceSigner is given them.
SIGNED_HEADERS = {
    "Authorization": (
        f"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/{SCOPE}, "
        f"SignedHeaders=host;x-amz-date, Signature={SEED}"
    ),
    "x-amz-date": AMZ_DATE,
}

# Around the hex width's steps (f, 10), a piece's edges, and several pieces with an odd end.
SIZES = [0, 1, 15, 16, 4095, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE, 2 * PIECE + 1]
SIZES.append(3 * PIECE + 12345)
DATA = random.Random(20250102).randbytes(max(SIZES))


class Parsed(NamedTuple):
    chunks: list[bytes]  # each chunk's bytes, the empty last one too
    signatures: list[str | None]  # each chunk's chunk-signature (None: unsigned)
    trailer: list[tuple[str, str]]  # the trailer's header lines, in order


def parse(framed: bytes, signed: bool) -> Parsed:
    """An aws-chunked body read as S3 reads it; asserts it is nothing else."""
    at = 0

    def line() -> str:
        nonlocal at
        end = framed.index(b"\r\n", at)
        text = framed[at:end].decode("ascii")
        at = end + 2
        return text

    chunks, signatures = [], []
    while True:
        head = line()
        if signed:
            size, _, signature = head.partition(";chunk-signature=")
            assert re.fullmatch("[0-9a-f]{64}", signature), head
        else:
            size, signature = head, None
        assert re.fullmatch("0|[1-9a-f][0-9a-f]*", size), head
        chunk = framed[at : at + int(size, 16)]
        assert len(chunk) == int(size, 16), "the body ends inside a chunk"
        chunks.append(chunk)
        signatures.append(signature)
        if not chunk:
            break
        at += len(chunk)
        assert framed[at : at + 2] == b"\r\n", "a chunk's bytes end in CRLF"
        at += 2
    trailer = []
    while text := line():
        name, colon, value = text.partition(":")
        assert colon, text
        trailer.append((name, value))
    assert at == len(framed), "nothing follows the trailer's empty line"
    return Parsed(chunks, signatures, trailer)


def checksum_b64(algorithm: str, data: bytes) -> str:
    """The checksum of `data` as S3 writes it, by the reference functions."""
    raw = {
        SHA256: lambda: hashlib.sha256(data).digest(),
        CRC64NVME: lambda: crc64nvme(data).to_bytes(8, "big"),
        CRC32C: lambda: crc32c(data).to_bytes(4, "big"),
    }[algorithm]()
    return base64.b64encode(raw).decode()


def signatures_of(parsed: Parsed, seed: str, amz_date: str, scope: str) -> list[str]:
    """The chunk signatures and the trailer's, as AWS's streaming SigV4 chains them from
    the request's `seed` signature: what the parsed body's must be."""
    key = f"AWS4{SECRET}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    empty = hashlib.sha256(b"").hexdigest()
    previous, expected = seed, []
    for chunk in parsed.chunks:
        payload = hashlib.sha256(chunk).hexdigest()
        text = f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{empty}\n{payload}"
        previous = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
        expected.append(previous)
    # The trailer is signed as its checksum lines, each ending in a bare newline.
    lines = "".join(f"{n}:{v}\n" for n, v in parsed.trailer if n != "x-amz-trailer-signature")
    payload = hashlib.sha256(lines.encode()).hexdigest()
    text = f"AWS4-HMAC-SHA256-TRAILER\n{amz_date}\n{scope}\n{previous}\n{payload}"
    expected.append(hmac.new(key, text.encode(), hashlib.sha256).hexdigest())
    return expected


def framed_as_sent(framing: _Framing, data: bytes, algorithm: str) -> bytes:
    """`data` framed as ChunkStore sends a chunk: frames of PIECE bytes, then the last."""
    view = memoryview(data)
    sent = [
        bytes(part)
        for start in range(0, len(view), PIECE)
        for part in framing.frame(view[start : start + PIECE])
    ]
    return b"".join([*sent, framing.last(digests.of(algorithm, data))])


def signer() -> PieceSigner:
    return PieceSigner(SECRET, SIGNED_HEADERS)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("size", SIZES)
def test_a_framed_body_is_as_long_as_stated_and_parses_back_to_its_bytes(size, signed, algorithm):
    data = DATA[:size]
    framing = _Framing(signer if signed else None)
    # Stated before a byte is read: the trailer's width from a CRC of nothing, as sent.
    stated = framing.length(size, digests.of(algorithm, b""))
    framed = framed_as_sent(framing, data, algorithm)
    assert stated == len(framed)
    parsed = parse(framed, signed)
    assert b"".join(parsed.chunks) == data
    full, rest = divmod(size, PIECE)
    assert [len(c) for c in parsed.chunks] == [PIECE] * full + [rest] * (rest > 0) + [0]
    checksum = (f"x-amz-checksum-{algorithm}", checksum_b64(algorithm, data))
    if not signed:
        assert parsed.trailer == [checksum]
        assert parsed.signatures == [None] * len(parsed.chunks)
        return
    expected = signatures_of(parsed, SEED, AMZ_DATE, SCOPE)
    assert parsed.trailer == [checksum, ("x-amz-trailer-signature", expected[-1])]
    assert parsed.signatures == expected[:-1]


def test_a_signed_body_s_signatures_chain_so_one_changed_byte_changes_every_one_after():
    data = DATA[: PIECE + 100]
    parsed = parse(framed_as_sent(_Framing(signer), data, CRC64NVME), signed=True)
    changed = parse(framed_as_sent(_Framing(signer), b"X" + data[1:], CRC64NVME), signed=True)
    assert changed.chunks[1:] == parsed.chunks[1:]
    pairs = zip(changed.signatures, parsed.signatures, strict=True)
    assert all(a != b for a, b in pairs), "the pieces after the first are signed the same"
    assert changed.trailer[1] != parsed.trailer[1]


def test_a_signed_framing_makes_its_signer_once_and_only_when_the_first_piece_goes():
    made = []

    def counted() -> PieceSigner:
        made.append(1)
        return signer()

    framing = _Framing(counted)
    framing.length(3 * PIECE, digests.of(CRC64NVME, b""))
    assert made == [], "the request is not signed yet when its length is stated"
    framed_as_sent(framing, DATA[: 2 * PIECE + 1], CRC64NVME)
    assert made == [1]


class Taking(http.server.BaseHTTPRequestHandler):
    """Takes each request's body whole and answers 200 with an ETag: what a PUT sends, to
    the byte, on a real socket, with no S3 behind it."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.sent.append((self.command, self.headers, body))
        self.send_response(200)
        self.send_header("ETag", '"0123abcd"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def taking() -> Iterator[http.server.ThreadingHTTPServer]:
    """A server on loopback that takes what is sent (`.sent`), and its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Taking)
    server.sent = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def store_at(port: int = 9, **s3) -> ChunkStore:
    config = S3Config(
        endpoint=f"127.0.0.1:{port}",
        access_key="AKIAIOSFODNN7EXAMPLE",
        secret_key=SECRET,
        region=REGION,
        **s3,
    )
    return ChunkStore(config, "test-host")


@pytest.mark.parametrize("size", [0, 5, 2 * PIECE + 7])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_a_chunk_put_with_its_crc_in_a_trailer_sends_the_length_it_states(taking, signed, size):
    store = store_at(taking.server_address[1], unsigned_payload_over_http=not signed)
    assert store.trails and store.checksum == CRC64NVME
    data = DATA[:size]
    etag, sums, checked = store.put_chunk("rec/cam/0000.chunk", InMemory(data), None, None)
    crc = Digest(CRC64NVME, f"{crc64nvme(data):016x}")
    assert (etag, sums, checked) == ("0123abcd", {CRC64NVME: crc}, crc)
    [(method, headers, body)] = taking.sent
    assert method == "PUT"
    assert int(headers["Content-Length"]) == len(body)
    assert int(headers["x-amz-decoded-content-length"]) == size
    assert headers["Content-Encoding"] == "aws-chunked"
    assert headers["x-amz-trailer"] == "x-amz-checksum-crc64nvme"
    parsed = parse(body, signed)
    assert b"".join(parsed.chunks) == data
    assert parsed.trailer[0] == ("x-amz-checksum-crc64nvme", checksum_b64(CRC64NVME, data))
    if not signed:
        assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        assert len(parsed.trailer) == 1
        return
    assert headers["x-amz-content-sha256"] == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    # Chained from the signature minio-py gave the request itself, by the secret key.
    scope = f"{headers['x-amz-date'][:8]}/{REGION}/s3/aws4_request"
    assert f"Credential=AKIAIOSFODNN7EXAMPLE/{scope}," in headers["Authorization"]
    seed = headers["Authorization"].rsplit("Signature=", 1)[1]
    expected = signatures_of(parsed, seed, headers["x-amz-date"], scope)
    assert parsed.signatures == expected[:-1]
    assert parsed.trailer[1] == ("x-amz-trailer-signature", expected[-1])


@pytest.mark.parametrize(
    ("s3", "first_pass", "checked_by"),
    [
        ({}, (CRC64NVME, SHA256), SHA256),
        ({"unsigned_payload_over_http": True}, (CRC64NVME,), CRC64NVME),
        ({"secure": True}, (CRC64NVME,), CRC64NVME),
        ({"secure": True, "tls_skip_verify": True}, (CRC64NVME, SHA256), SHA256),
    ],
    ids=["http", "http-unsigned", "https", "https-unverified"],
)
def test_a_chunk_s_bytes_are_signed_over_http_or_unverified_tls_and_checked_by_crc_over_tls(
    s3, first_pass, checked_by
):
    store = store_at(**s3)
    sums = {a: digests.of(a, b"chunk") for a in ALGORITHMS}
    assert store.checksum == CRC64NVME and store.checksum_refused is None
    assert store.chunk_algorithms == first_pass
    assert store.checking_digest(sums) == sums[checked_by]


def test_a_multipart_etag_is_the_md5_of_the_parts_md5s_and_their_count():
    parts = [random.Random(n).randbytes(1000 + n) for n in range(3)]
    md5s = [hashlib.md5(p, usedforsecurity=False) for p in parts]
    joined = b"".join(m.digest() for m in md5s)
    expected = hashlib.md5(joined, usedforsecurity=False).hexdigest()
    assert multipart_etag([m.hexdigest() for m in md5s]) == f"{expected}-3"
    one = hashlib.md5(md5s[0].digest(), usedforsecurity=False).hexdigest()
    assert multipart_etag([md5s[0].hexdigest()]) == f"{one}-1"
    swapped = [md5s[1].hexdigest(), md5s[0].hexdigest(), md5s[2].hexdigest()]
    assert multipart_etag(swapped) != f"{expected}-3"
    assert multipart_etag([md5s[0].hexdigest(), "not-an-md5"]) == "", "matches no ETag"


def test_a_checksum_s3_gives_in_base64_is_kept_in_hex():
    raw = random.Random(7).randbytes(8)
    assert _hex(base64.b64encode(raw).decode()) == raw.hex()
    assert _hex(None) is None and _hex("") is None


def test_an_object_s_stored_digest_is_streamer_s_own_first_then_a_full_object_crc():
    sha = hashlib.sha256(b"chunk").hexdigest()
    crc = f"{crc64nvme(b'chunk'):016x}"
    own = {"x-amz-meta-crc32c": "e3069283", "x-amz-meta-sha256": sha}
    assert _stored_digest(own) == Digest(SHA256, sha), "sha256 before a CRC"
    s3s = {"x-amz-checksum-crc64nvme": checksum_b64(CRC64NVME, b"chunk")}
    assert _stored_digest({**s3s, "x-amz-meta-crc32c": "e3069283"}, True) == Digest(
        CRC32C, "e3069283"
    )
    assert _stored_digest(s3s, full_object=True) == Digest(CRC64NVME, crc)
    assert _stored_digest(s3s) is None, "a checksum of parts is no digest of the bytes"
    both = {**s3s, "x-amz-checksum-crc32c": checksum_b64(CRC32C, b"chunk")}
    assert _stored_digest(both, True) == Digest(CRC64NVME, crc)
    only32 = {"x-amz-checksum-crc32c": checksum_b64(CRC32C, b"chunk")}
    assert _stored_digest(only32, True) == Digest(CRC32C, f"{crc32c(b'chunk'):08x}")
    sha_b64 = {"x-amz-checksum-sha256": checksum_b64(SHA256, b"chunk")}
    assert _stored_digest(sha_b64, True) is None, "only a CRC S3 keeps is read"
    assert _stored_digest({"etag": "abc", "content-length": "5"}, True) is None


@pytest.mark.parametrize(
    ("code", "condition", "not_held"),
    [
        ("PreconditionFailed", {"If-None-Match": "*"}, True),
        ("ConditionalRequestConflict", {"If-Match": '"e"'}, True),
        ("PreconditionFailed", {}, True),
        ("NoSuchKey", {"If-Match": '"e"'}, True),
        ("NotFound", {"If-Match": '"e"'}, True),
        ("NoSuchKey", {"If-None-Match": "*"}, False),
        ("NoSuchKey", {}, False),
        ("AccessDenied", {"If-Match": '"e"'}, False),
        ("NotImplemented", {"If-None-Match": "*"}, False),
    ],
)
def test_a_write_s_condition_did_not_hold_when_s3_says_so_or_if_match_finds_nothing(
    code, condition, not_held
):
    status = {"PreconditionFailed": 412, "ConditionalRequestConflict": 409}.get(code, 404)
    assert _not_held(s3_error(code, status, "rec/cam/0000.chunk"), condition) is not_held


def test_an_upload_s3_no_longer_knows_is_gone_and_other_errors_pass_as_they_are():
    with (
        pytest.raises(UploadGone, match="upload u-17 is gone") as gone,
        _upload_gone_if_missing("u-17"),
    ):
        raise s3_error("NoSuchUpload", 404, "rec/cam/0000.chunk")
    assert gone.value.__suppress_context__, "minio-py's error and its frames are dropped"
    for code, status in (("NoSuchKey", 404), ("NoSuchBucket", 404), ("AccessDenied", 403)):
        other = s3_error(code, status, "rec/cam/0000.chunk")
        with pytest.raises(S3Error) as raised, _upload_gone_if_missing("u-17"):
            raise other
        assert raised.value is other
    with _upload_gone_if_missing("u-17"):
        pass


class Metered:
    """A bandwidth cap that records what it is asked to pace, and whether it let it all go
    before the reader went on."""

    def __init__(self):
        self.paced: list[bytes] = []
        self.done = 0

    def pace(self, pieces):
        for piece in pieces:
            self.paced.append(bytes(piece))
            yield piece
        self.done += 1


def test_a_paced_reader_reads_the_stream_unchanged_each_read_paid_for_before_it_returns():
    data = random.Random(3).randbytes(10_000)
    cap = Metered()
    reader = _PacedReader(io.BytesIO(data), cap)
    assert reader.read(4096) == data[:4096]
    assert (cap.paced, cap.done) == ([data[:4096]], 1)
    assert reader.read() == data[4096:]
    assert reader.read(10) == b""
    assert b"".join(cap.paced) == data and cap.done == 3


def test_a_paced_reader_charges_the_shared_bucket_for_every_byte_it_reads(monkeypatch):
    now = [0.0]
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    monkeypatch.setattr("streamer.bandwidth.time.sleep", sleep)
    bucket = TokenBucket(1000, clock=lambda: now[0])
    reader = _PacedReader(io.BytesIO(bytes(20_000)), bucket)
    assert len(reader.read(12_000)) + len(reader.read()) == 20_000
    # A burst's worth goes at once; the rest at the rate.
    assert sum(waits) == pytest.approx((20_000 - bucket.burst) / bucket.rate)
