"""A digest's one string form and the header S3 checks it by; a whole file's crc64nvme
combined from its chunks' CRCs, without their bytes."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from awscrt.checksums import crc64nvme

from streamer.bodies import InMemory, digest
from streamer.digests import CRC32C, CRC64NVME, SHA256, Digest, combine, of, recorded

KiB = 1024


def crc64_of(data: bytes) -> str:
    return f"{crc64nvme(data):016x}"


def test_a_digest_has_one_string_form_and_the_header_s3_checks():
    check = of(CRC64NVME, b"123456789")
    assert str(check) == "crc64nvme:ae8b14860a799888"  # the CRC-64/NVME check value
    assert str(of(CRC32C, b"123456789")) == "crc32c:e3069283"  # the CRC-32C check value
    assert Digest.parse(str(check)) == check
    assert check.header() == (
        "x-amz-checksum-crc64nvme",
        base64.b64encode(bytes.fromhex("ae8b14860a799888")).decode(),
    )
    signed = of(SHA256, b"abc")
    assert signed.value == hashlib.sha256(b"abc").hexdigest()
    assert signed.header()[1] == base64.b64encode(hashlib.sha256(b"abc").digest()).decode()
    assert digest(CRC64NVME, InMemory(b"123456789")) == check
    assert digest(CRC64NVME, InMemory(b"123456780")) != check
    # What S3 checked a chunk by: a signed sha256 first, then the CRC it went with.
    assert recorded(None, None, check.value) == check
    assert recorded(None, "e3069283", check.value) == of(CRC32C, b"123456789")
    assert recorded(signed.value, None, check.value) == signed
    with pytest.raises(ValueError, match="not a digest"):
        Digest.parse("md5:abc")


def test_the_whole_crc64nvme_is_combined_from_its_pieces_without_the_bytes():
    pieces = [os.urandom(n) for n in (5 * KiB, 1, 64 * KiB + 3, 0, 7)]
    assert combine((crc64_of(p), len(p)) for p in pieces) == crc64_of(b"".join(pieces))
    assert combine([]) == crc64_of(b"")
    assert combine([(crc64_of(pieces[0]), len(pieces[0])), (None, 1)]) is None
    swapped = [pieces[1], pieces[0], *pieces[2:]]
    assert combine((crc64_of(p), len(p)) for p in swapped) != crc64_of(b"".join(pieces))
