"""What a sender decides without S3: whether an object holds a chunk's bytes, by the
digest it was stored with."""

from __future__ import annotations

from streamer.bodies import InMemory, digests_of
from streamer.digests import CRC32C, CRC64NVME, SHA256, of
from streamer.objectstore import StoredObject
from streamer.uploader.sending import same_bytes


def test_an_object_holds_the_same_bytes_by_the_digest_it_was_stored_with():
    data = InMemory(b"chunk bytes")
    sums = digests_of((CRC64NVME,), data)
    crc, sha = sums[CRC64NVME], of(SHA256, b"chunk bytes")
    assert same_bytes(StoredObject(len(data), "e", sha), data, sums)  # read again, by sha256
    assert same_bytes(StoredObject(len(data), "e", crc), data, sums)
    assert same_bytes(StoredObject(len(data), "e", of(CRC32C, b"chunk bytes")), data, sums)
    assert not same_bytes(StoredObject(len(data), "e", of(SHA256, b"other bytes")), data, sums)
    assert not same_bytes(StoredObject(len(data) + 1, "e", crc), data, sums)
    assert not same_bytes(StoredObject(len(data), "e", None), data, sums)
