"""The ObjectStore contract: what each verb promises, as streamer's callers rely on it, run
on every implementation: DirectoryStore (the unit tests' store) and ChunkStore on MinIO,
versitygw and MinIO over TLS. A test that passes on the servers and fails on the
directory is a DirectoryStore that drifted from S3."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from dirstore import DirectoryStore
from integration.servers import chunk_store, over_tls
from minio.error import S3Error

from streamer import objectstore
from streamer.bodies import InMemory, digests_of
from streamer.chunkstore import MISSING
from streamer.digests import CRC64NVME, SHA256, combine, hasher, of
from streamer.failures import classify
from streamer.layout import CHUNK_TAGS
from streamer.objectstore import (
    ABSENT,
    BucketMissing,
    CopiesUnchecked,
    PartSource,
    Taken,
    UploadGone,
)

SERVERS = ("minio", "versitygw", "tls_minio")
BIG = os.urandom(5 * 1024 * 1024 + 10)  # just over S3's least part
SMALL = os.urandom(1000)
JSON = "application/json"
MP4 = "video/mp4"


def new_bucket() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(
    params=["directory", *(pytest.param(s, marks=pytest.mark.integration) for s in SERVERS)]
)
def store_on(request, tmp_path):
    """Makes a store: on a new bucket of its own, or on the bucket named (not made)."""
    if request.param == "directory":

        def make(bucket: str | None = None):
            store = DirectoryStore(tmp_path / "s3", bucket or new_bucket())
            if bucket is None:
                store.ensure_bucket(create=True)
            return store

        return make
    server = request.getfixturevalue(request.param)

    def make(bucket: str | None = None):
        if bucket is None:
            bucket = new_bucket()
            server.client.make_bucket(bucket)
        return chunk_store(server, bucket, **(over_tls(server) if server.ca_file else {}))

    return make


@pytest.fixture
def store(store_on):
    return store_on()


def put(store, key: str, data: bytes, expect: str | None = None) -> str:
    return store.put(key, InMemory(data), of(SHA256, data), JSON, expect)


def put_chunk(store, key: str, data: bytes):
    """As a sender puts one: its digests taken as it is sent, or on a pass before."""
    body = InMemory(data)
    sums = None if store.trails else digests_of(store.chunk_algorithms, body)
    return store.put_chunk(key, body, sums, CHUNK_TAGS)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def joined_etag(etags: list[str]) -> str:
    """S3's ETag of an object joined from parts: the MD5 of their MD5s, and how many."""
    return f"{md5(b''.join(bytes.fromhex(e) for e in etags))}-{len(etags)}"


def two_parts(store, name: str) -> list[PartSource]:
    """Two chunks to join, the first just over 5 MiB, as the uploader knows them."""
    parts = []
    for index, data in enumerate((BIG, SMALL)):
        key = store.layout.chunk_key(name, index)
        etag, sums, _ = put_chunk(store, key, data)
        parts.append(PartSource(key, len(data), etag, sums[CRC64NVME].value))
    return parts


def whole_crc(parts: list[PartSource]) -> str:
    return combine((p.crc64nvme, p.size) for p in parts)


def copied_into_upload(store, key: str, parts: list[PartSource]):
    """An upload with `parts` copied in, as the uploader makes one: asking S3 to check the
    whole's crc64nvme where the store does, and without where S3 copies no part into
    such an upload (MinIO). Returns its id, whether it is checked, the parts' ETags."""
    upload_id, checked = store.begin_upload(key, MP4, store.checks_copies)
    try:
        etags = [store.copy_part(key, upload_id, n, p, checked) for n, p in enumerate(parts, 1)]
    except CopiesUnchecked:
        assert not store.checks_copies, "uploads are begun unchecked from now on"
        store.abort_upload(key, upload_id)
        upload_id, checked = store.begin_upload(key, MP4, store.checks_copies)
        etags = [store.copy_part(key, upload_id, n, p, checked) for n, p in enumerate(parts, 1)]
    return upload_id, checked, etags


# Objects


def test_an_object_reads_back_with_its_etag_and_the_digest_it_was_stored_with(store):
    data = b'{"stream": 1}'
    etag = put(store, "rec/a/metadata.json", data)
    assert etag == md5(data)
    assert store.get("rec/a/metadata.json") == data
    assert store.get_if_exists("rec/a/metadata.json") == data
    assert store.read("rec/a/metadata.json") == (data, etag)
    for checksum in (False, True):
        found = store.stat("rec/a/metadata.json", checksum=checksum)
        assert (found.size, found.etag, found.digest) == (len(data), etag, of(SHA256, data))
    crc = of(CRC64NVME, data)
    store.put("rec/a/crc", InMemory(data), crc, JSON)
    assert store.stat("rec/a/crc").digest == crc
    assert store.stat("rec/a/crc", checksum=True).crc64nvme == crc.value


def test_a_body_that_is_not_its_digest_is_refused_and_nothing_is_stored(store):
    with pytest.raises(S3Error) as refused:
        store.put("rec/wrong", InMemory(b"these bytes"), of(SHA256, b"others"), JSON)
    assert classify(refused.value) == "transient", "a body damaged on the way: sent again"
    assert store.stat("rec/wrong") is None


def test_a_write_expecting_nothing_where_an_object_is_is_taken_and_writes_nothing(store):
    etag = put(store, "rec/owner", b"first")
    with pytest.raises(Taken):
        put(store, "rec/owner", b"second", expect=ABSENT)
    assert store.read("rec/owner") == (b"first", etag)


def test_a_write_expecting_another_object_is_taken_and_writes_nothing(store):
    stale = put(store, "rec/owner", b"first")
    etag = put(store, "rec/owner", b"second")
    with pytest.raises(Taken):
        put(store, "rec/owner", b"third", expect=stale)
    assert store.read("rec/owner") == (b"second", etag)
    with pytest.raises(Taken):
        put(store, "rec/nothing-here", b"third", expect=etag)
    assert store.stat("rec/nothing-here") is None


def test_a_write_expecting_the_object_there_replaces_it(store):
    etag = put(store, "rec/owner", b"first")
    assert put(store, "rec/nothing-yet", b"new", expect=ABSENT) == md5(b"new")
    replaced = put(store, "rec/owner", b"second", expect=etag)
    assert store.read("rec/owner") == (b"second", replaced)


def test_a_chunk_goes_once_with_the_digest_s3_checked_it_by(store):
    key = store.layout.chunk_key("cam", 0)
    data = b"chunk bytes" * 500
    etag, sums, checked = put_chunk(store, key, data)
    assert etag == md5(data)
    assert sums[CRC64NVME] == of(CRC64NVME, data)
    assert sums[checked.algorithm] == checked == of(checked.algorithm, data)
    found = store.stat(key, checksum=True)
    assert (found.size, found.etag, found.digest) == (len(data), etag, checked)
    assert found.crc64nvme == sums[CRC64NVME].value
    with pytest.raises(Taken):
        put_chunk(store, key, b"other bytes")
    assert store.read(key) == (data, etag), "never written over"


def test_a_chunk_sent_with_its_digests_is_stored_with_the_one_checked(store):
    key = store.layout.chunk_key("cam", 1)
    body = InMemory(b"digested first" * 300)
    sums = digests_of(store.chunk_algorithms, body)
    etag, sent, checked = store.put_chunk(key, body, sums, None)
    assert etag == md5(b"digested first" * 300)
    assert sent[CRC64NVME] == sums[CRC64NVME] and checked == sent[checked.algorithm]
    assert store.stat(key, checksum=True).digest == checked


def test_of_chunks_raced_to_one_key_one_is_written(store):
    key, senders = store.layout.chunk_key("cam", 2), 6
    start, outcomes = threading.Barrier(senders), [None] * senders

    def send(n: int) -> None:
        start.wait()
        try:
            outcomes[n] = put_chunk(store, key, f"sender {n}".encode() * 100)[0]
        except Taken:
            outcomes[n] = "taken"

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written = [(n, etag) for n, etag in enumerate(outcomes) if etag != "taken"]
    assert len(written) == 1, outcomes
    ((n, etag),) = written
    assert store.read(key) == (f"sender {n}".encode() * 100, etag)


def test_only_the_object_with_the_etag_given_is_removed(store):
    stale = put(store, "rec/chunk", b"first")
    etag = put(store, "rec/chunk", b"second")
    assert store.remove_if("rec/chunk", stale) is False
    assert store.read("rec/chunk") == (b"second", etag)
    assert store.remove_if("rec/chunk", etag) is True
    assert store.stat("rec/chunk") is None
    assert store.remove_if("rec/chunk", etag) is False
    put(store, "rec/scratch", b"x")
    store.remove("rec/scratch")
    store.remove("rec/scratch")  # gone already: nothing to do
    assert store.stat("rec/scratch") is None


def test_a_key_that_holds_nothing(store, tmp_path):
    assert store.get_if_exists("rec/none") is None
    assert store.read("rec/none") is None
    assert store.stat("rec/none") is None
    assert store.stat("rec/none", checksum=True) is None
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        for read in (
            lambda: store.get("rec/none"),
            lambda: store.fetch_into("rec/none", fd, 0, 10, None),
            lambda: store.digest_of("rec/none", SHA256),
        ):
            with pytest.raises(S3Error) as missing:
                read()
            assert missing.value.code in MISSING and classify(missing.value) == "rejected"
    finally:
        os.close(fd)


# Listings


def test_listings_are_in_key_order_and_children_are_the_folders_under_a_prefix(store):
    keys = ["rec/a/1", "rec/a/2", "rec/a-b", "rec/ab", "rec/b/c/3", "rec/top", "other/x"]
    etags = {key: put(store, key, key.encode()) for key in reversed(keys)}
    walked = list(store.walk("rec/"))
    assert [key for key, _ in walked] == [
        "rec/a-b",
        "rec/a/1",
        "rec/a/2",
        "rec/ab",
        "rec/b/c/3",
        "rec/top",
    ], "UTF-8 binary order of the whole key"
    for key, found in walked:
        assert (found.size, found.etag) == (len(key), etags[key])
        assert found.modified is not None and found.modified.tzinfo is not None
    assert store.listing("rec/") == dict(walked)
    assert list(store.listing("rec/a")) == ["rec/a-b", "rec/a/1", "rec/a/2", "rec/ab"]
    assert list(store.listing("rec/a/")) == ["rec/a/1", "rec/a/2"]
    assert store.listing("rec/nothing/") == {}
    assert store.children("") == ["other/", "rec/"]
    assert store.children("rec/") == ["rec/a/", "rec/b/"]
    assert store.children("rec/b/") == ["rec/b/c/"]
    assert store.children("rec/a/") == []


def test_fetch_into_writes_the_bytes_at_an_offset_with_their_digest(store, tmp_path):
    data = b"piece of a recording" * 200
    digest = of(SHA256, data)
    store.put("rec/piece", InMemory(data), digest, JSON)
    chunk = store.layout.chunk_key("cam", 0)
    _, _, checked = put_chunk(store, chunk, data)
    path = tmp_path / "restored"
    path.write_bytes(b"head")
    fd = os.open(path, os.O_RDWR)
    try:
        got = store.fetch_into("rec/piece", fd, 4, len(data), None, block=1000)
        assert (got.size, got.digest, got.stored) == (len(data), digest, digest)
        got = store.fetch_into(chunk, fd, 4 + len(data), len(data), CRC64NVME)
        assert (got.digest, got.stored) == (of(CRC64NVME, data), checked)
        got = store.fetch_into(chunk, fd, 4 + len(data), len(data), None)
        assert got.digest == got.stored == checked, "hashed as it was stored"
    finally:
        os.close(fd)
    assert path.read_bytes() == b"head" + data + data


def test_fetch_into_writes_no_byte_past_its_size_and_says_how_long_the_object_is(store, tmp_path):
    data = b"a longer object than its place" * 100
    store.put("rec/long", InMemory(data), of(SHA256, data), JSON)
    path = tmp_path / "restored"
    path.write_bytes(b"x" * 40)
    fd = os.open(path, os.O_RDWR)
    try:
        got = store.fetch_into("rec/long", fd, 10, 20, None, block=7)
    finally:
        os.close(fd)
    assert (got.size, got.digest) == (len(data), of(SHA256, data))
    assert path.read_bytes() == b"x" * 10 + data[:20] + b"x" * 10


def test_digest_of_reads_the_object_pinned_to_its_etag(store):
    stale = put(store, "rec/whole.mp4", b"first bytes")
    etag = put(store, "rec/whole.mp4", b"second bytes")
    together = hasher(SHA256)
    assert store.digest_of("rec/whole.mp4", SHA256, together) == of(SHA256, b"second bytes")
    assert together.hexdigest() == of(SHA256, b"second bytes").value
    assert store.digest_of("rec/whole.mp4", CRC64NVME, etag=etag) == of(CRC64NVME, b"second bytes")
    with pytest.raises(Taken):
        store.digest_of("rec/whole.mp4", SHA256, etag=stale)


def test_a_stream_is_put_whole_and_the_same_bytes_again_are_taken_as_written(store):
    for data in (b"a small recording", BIG):
        key = f"rec/streamed-{len(data)}.mp4"
        etag = store.put_stream(key, io.BytesIO(data), len(data), MP4, ABSENT)
        assert store.get(key) == data and store.stat(key).etag == etag
        again = store.put_stream(key, io.BytesIO(data), len(data), MP4, ABSENT)
        assert again == etag, "the object there is these very bytes"
        with pytest.raises(Taken):
            store.put_stream(key, io.BytesIO(data[::-1]), len(data), MP4, ABSENT)
    assert etag.endswith("-2"), "over 5 MiB: in parts"
    assert not store.open_uploads(key)


# The whole object: a multipart upload of copied parts


def test_parts_copied_into_an_upload_join_into_one_object(store):
    parts = two_parts(store, "cam")
    key = store.layout.assembled_key("cam", "cam.mp4")
    upload_id, checked, etags = copied_into_upload(store, key, parts)
    assert etags == [p.etag for p in parts], "a part's ETag is its bytes' MD5"
    assert upload_id in store.open_uploads(key)
    crcs = [*(p.crc64nvme for p in parts), whole_crc(parts)] if checked else None
    etag = store.complete_upload(key, upload_id, etags, ABSENT, crcs)
    assert etag == joined_etag(etags) and etag.endswith("-2")
    assert store.get(key) == BIG + SMALL
    found = store.stat(key, checksum=True)
    assert (found.size, found.etag) == (len(BIG) + len(SMALL), etag)
    if checked:  # versitygw, the directory: S3 keeps the whole's crc64nvme it checked
        assert found.crc64nvme == whole_crc(parts) == of(CRC64NVME, BIG + SMALL).value
    assert upload_id not in store.open_uploads(key)


def test_a_whole_that_is_not_its_parts_crc64nvme_is_refused(store):
    parts = two_parts(store, "cam")
    key = store.layout.assembled_key("cam", "cam.mp4")
    upload_id, checked, etags = copied_into_upload(store, key, parts)
    if not checked:  # MinIO: no upload is checked, and no crc64nvme goes with one
        store.abort_upload(key, upload_id)
        return
    wrong = [*(p.crc64nvme for p in parts), "0" * 16]
    with pytest.raises(S3Error):
        store.complete_upload(key, upload_id, etags, ABSENT, wrong)
    assert store.stat(key) is None, "nothing was written"
    right = [*(p.crc64nvme for p in parts), whole_crc(parts)]
    assert store.complete_upload(key, upload_id, etags, ABSENT, right) == joined_etag(etags)


def test_a_join_expecting_another_object_is_taken_and_writes_nothing(store):
    parts = two_parts(store, "cam")
    key = store.layout.assembled_key("cam", "cam.mp4")
    there = put(store, key, b"another recording")
    upload_id, checked, etags = copied_into_upload(store, key, parts)
    crcs = [*(p.crc64nvme for p in parts), whole_crc(parts)] if checked else None
    with pytest.raises(Taken):
        store.complete_upload(key, upload_id, etags, ABSENT, crcs)
    assert store.read(key) == (b"another recording", there)
    assert store.complete_upload(key, upload_id, etags, there, crcs) == joined_etag(etags)
    assert store.get(key) == BIG + SMALL


def test_a_part_whose_source_changed_since_is_not_copied(store):
    parts = two_parts(store, "cam")
    key = store.layout.assembled_key("cam", "cam.mp4")
    upload_id, _ = store.begin_upload(key, MP4)
    changed = put(store, parts[1].key, b"rewritten")
    with pytest.raises(S3Error) as refused:
        store.copy_part(key, upload_id, 2, parts[1])
    assert classify(refused.value) == "rejected"
    assert upload_id in store.open_uploads(key), "the upload is still there"
    now = PartSource(parts[1].key, len(b"rewritten"), changed)
    etags = [store.copy_part(key, upload_id, n, p) for n, p in enumerate([parts[0], now], 1)]
    store.complete_upload(key, upload_id, etags)
    assert store.get(key) == BIG + b"rewritten"


def test_an_aborted_upload_is_gone(store):
    parts = two_parts(store, "cam")
    key = store.layout.assembled_key("cam", "cam.mp4")
    upload_id, checked = store.begin_upload(key, MP4)
    first = store.copy_part(key, upload_id, 1, parts[0])
    store.abort_upload(key, upload_id)
    assert upload_id not in store.open_uploads(key)
    with pytest.raises(UploadGone):
        store.copy_part(key, upload_id, 2, parts[1])
    with pytest.raises(UploadGone):
        store.complete_upload(key, upload_id, [first])
    store.abort_upload(key, upload_id)  # gone already: nothing to do
    with pytest.raises(UploadGone):
        store.copy_part(key, "no-such-upload", 1, parts[0])
    copied = [PartSource(p.key, p.size, p.etag, None, first) for p in parts[:1]] + parts[1:]
    with ThreadPoolExecutor(2) as pool, pytest.raises(UploadGone):
        objectstore.compose(store, key, copied, MP4, pool, (upload_id, checked))
    assert store.stat(key) is None


def test_compose_copies_the_parts_not_copied_yet_and_joins_them(store):
    parts = two_parts(store, "cam")
    whole = whole_crc(parts)
    with ThreadPoolExecutor(2) as pool:
        key = store.layout.assembled_key("cam", "fresh.mp4")
        try:
            etag, checked = objectstore.compose(
                store, key, parts, MP4, pool, expect=ABSENT, crc64nvme=whole
            )
        except CopiesUnchecked:  # as the uploader: composed again, unchecked from now on
            etag, checked = objectstore.compose(
                store, key, parts, MP4, pool, expect=ABSENT, crc64nvme=whole
            )
        assert checked == store.checks_copies
        assert store.get(key) == BIG + SMALL
        assert etag == joined_etag([p.etag for p in parts])
        if checked:
            assert store.stat(key, checksum=True).crc64nvme == whole
        again = objectstore.compose(store, key, parts, MP4, pool, expect=ABSENT, crc64nvme=whole)
        assert again == (etag, checked), "an object of these very parts is taken as written"
        assert not store.open_uploads(key)

        # Into an upload begun while live, its first part copied then.
        key = store.layout.assembled_key("cam", "live.mp4")
        upload_id, checked = store.begin_upload(key, MP4, store.checks_copies)
        first = store.copy_part(key, upload_id, 1, parts[0], checked)
        ahead = [PartSource(p.key, p.size, p.etag, p.crc64nvme, first) for p in parts[:1]]
        made = objectstore.compose(
            store, key, ahead + parts[1:], MP4, pool, (upload_id, checked), ABSENT, whole
        )
        assert made == (etag, checked)
        assert store.get(key) == BIG + SMALL
        assert not store.open_uploads(key)


def test_a_bucket_is_made_only_where_streamer_may(store_on):
    bucket = new_bucket()
    store = store_on(bucket)
    with pytest.raises(BucketMissing):
        store.ensure_bucket(create=False)
    assert store.ensure_bucket(create=True) is True
    assert store.ensure_bucket(create=False) is False
    assert store.ensure_bucket(create=True) is False


def test_how_chunks_go_to_a_server_that_takes_crc64nvme(store):
    assert store.checksum == CRC64NVME and store.checksum_refused is None
    assert CRC64NVME in store.chunk_algorithms
    assert store.trails and not store.trailer_refused
    assert store.conditional_writes
    sums = digests_of(store.chunk_algorithms, InMemory(b"x"))
    assert store.checking_digest(sums) in sums.values()
