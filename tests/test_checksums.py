"""How S3 checks each chunk's bytes (streamer.digests): over https a chunk goes unsigned
with a crc32c S3 checks, over http its sha256 is signed; a server that refuses crc32c
gets signed sha256 bodies. Against MinIO and versitygw over https with a private CA."""

from __future__ import annotations

import base64
import hashlib
import os

import crc32c
import msgspec
import pytest
from conftest import GrowingFile, assert_exact, chunk_store, cli, over_tls, record_of
from minio.error import S3Error

from streamer.bodies import InMemory, digest
from streamer.checkpoint import CheckpointStore
from streamer.digests import CRC32C, SHA256, Digest, of, recorded
from streamer.fileio import SourceChanged, Span
from streamer.policy import TRANSIENT_CODES
from streamer.uploader.sending import digest_chunk, place_chunk, same_bytes

KiB = 1024
on_tls_servers = pytest.mark.parametrize("server", ["tls_minio", "tls_versitygw"], indirect=True)


def test_a_digest_has_one_string_form_and_the_header_s3_checks():
    check = of(CRC32C, b"123456789")
    assert str(check) == "crc32c:e3069283"  # the CRC-32C check value
    assert Digest.parse(str(check)) == check
    assert check.header() == (
        "x-amz-checksum-crc32c",
        base64.b64encode(b"\xe3\x06\x92\x83").decode(),
    )
    signed = of(SHA256, b"abc")
    assert signed.value == hashlib.sha256(b"abc").hexdigest()
    assert signed.header()[1] == base64.b64encode(hashlib.sha256(b"abc").digest()).decode()
    assert digest(CRC32C, InMemory(b"123456789")) == check
    assert digest(CRC32C, InMemory(b"123456780")) != check
    assert recorded(None, "e3069283") == check and recorded(signed.value, None) == signed
    with pytest.raises(ValueError, match="not a digest"):
        Digest.parse("md5:abc")


def test_an_object_holds_the_same_bytes_by_the_digest_it_was_stored_with():
    from streamer.chunkstore import StoredObject

    data = InMemory(b"chunk bytes")
    crc, sha = of(CRC32C, b"chunk bytes"), of(SHA256, b"chunk bytes")
    assert same_bytes(StoredObject(len(data), "e", sha), data, crc)
    assert same_bytes(StoredObject(len(data), "e", crc), data, crc)
    assert not same_bytes(StoredObject(len(data), "e", of(SHA256, b"other bytes")), data, crc)
    assert not same_bytes(StoredObject(len(data) + 1, "e", crc), data, crc)
    assert not same_bytes(StoredObject(len(data), "e", None), data, crc)


@on_tls_servers
def test_over_https_chunks_go_unsigned_and_s3_checks_their_crc32c(make_daemon, server, tmp_path):
    daemon = make_daemon(s3=over_tls(server)).start()
    writer = GrowingFile(daemon.watch / "tls.mp4", total=300 * KiB, rate=2000 * KiB).start()
    writer.wait()
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = assert_exact(server, daemon, event["stream_id"], writer.path)
    assert manifest["schema_version"] == 2
    data = writer.path.read_bytes()
    for chunk in manifest["chunks"]:
        expected = crc32c.CRC32CHash(data[chunk["offset"] : chunk["offset"] + chunk["size"]])
        assert chunk["crc32c"] == expected.hexdigest() and "sha256" not in chunk
        # S3's own record of the checksum it verified, and the one streamer stored.
        response = server.client._execute(
            "HEAD", daemon.bucket, chunk["key"], headers={"x-amz-checksum-mode": "ENABLED"}
        )
        headers = {k.lower(): v for k, v in response.headers.items()}
        assert headers["x-amz-checksum-crc32c"] == base64.b64encode(expected.digest()).decode()
        assert headers["x-amz-meta-crc32c"] == chunk["crc32c"]
    uploaded = daemon.find("chunk_uploaded")
    assert [e["digest"] for e in uploaded] == [f"crc32c:{c['crc32c']}" for c in manifest["chunks"]]
    checked = cli(daemon, "verify", event["stream_id"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    quick = cli(daemon, "verify", "--quick", event["stream_id"])
    assert quick.returncode == 0, quick.stdout + quick.stderr
    shown = cli(daemon, "streams", "show", event["stream_id"])
    assert f"crc32c:{manifest['chunks'][0]['crc32c']}" in shown.stdout
    output = tmp_path / "restored.mp4"
    restored = cli(daemon, "restore", event["stream_id"], "-o", str(output))
    assert restored.returncode == 0, restored.stderr
    assert output.read_bytes() == data
    assert daemon.stop() == 0

    # A crc32c proves less than a sha256: verify also holds the chunks together, and the
    # file, to the stream's sha256 (here the checkpoint's, made wrong on purpose).
    store = CheckpointStore(str(daemon.config_path.parent / "checkpoint"), 1 << 30)
    try:
        store.update_stream(
            event["stream_id"], lambda r: msgspec.structs.replace(r, sha256="0" * 64)
        )
    finally:
        store.close()
    wrong = cli(daemon, "verify", event["stream_id"])
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "the chunks together are not the stream" in wrong.stdout
    assert "the file's bytes are not the stream's (sha256)" not in wrong.stdout, "one at a time"


@on_tls_servers
def test_a_body_that_is_not_its_crc32c_is_refused_and_retried_at_once(server, bucket):
    s3 = chunk_store(server, bucket, **over_tls(server))
    data = InMemory(b"the chunk's bytes" * 1000)
    assert s3.chunk_algorithm == CRC32C
    with pytest.raises(S3Error) as refused:
        s3.put("rec/wrong", data, of(CRC32C, b"other bytes"), "application/octet-stream")
    assert refused.value.code in TRANSIENT_CODES
    assert s3.stat("rec/wrong") is None, "nothing was stored"


def test_over_http_chunks_keep_their_signed_sha256(minio, bucket):
    s3 = chunk_store(minio, bucket)
    assert s3.chunk_algorithm == SHA256


@pytest.mark.parametrize("server", ["minio"], indirect=True)
def test_a_server_that_refuses_crc32c_gets_signed_sha256_bodies(make_daemon, server, tls_proxy):
    tls_proxy.set("refuse_checksums")
    daemon = make_daemon(s3=over_tls(tls_proxy, endpoint=tls_proxy.endpoint)).start()
    (daemon.watch / "fallback.mp4").write_bytes(b"f" * 200 * KiB)
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = assert_exact(server, daemon, event["stream_id"], daemon.watch / "fallback.mp4")
    assert all(len(c.get("sha256") or "") == 64 for c in manifest["chunks"])
    assert not any("crc32c" in c for c in manifest["chunks"])
    assert daemon.find("crc32c_refused")
    assert all(e["digest"].startswith("sha256:") for e in daemon.find("chunk_uploaded"))
    assert daemon.stop() == 0


@pytest.mark.parametrize("server", ["minio"], indirect=True)
def test_a_refusal_of_tags_over_https_costs_the_tags_not_crc32c(make_daemon, server, tls_proxy):
    """The first chunks' PUTs are refused with a code either refusal could give: they go
    with sha256 and then without tags; the chunks after them keep crc32c."""
    tls_proxy.set("refuse_tags")
    daemon = make_daemon(s3=over_tls(tls_proxy, endpoint=tls_proxy.endpoint)).start()
    (daemon.watch / "untagged.mp4").write_bytes(b"u" * 300 * KiB)
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = assert_exact(server, daemon, event["stream_id"], daemon.watch / "untagged.mp4")
    # The chunks already in flight when the first refusal came may have gone with sha256.
    window = 3
    kinds = {"sha256" if "sha256" in c else "crc32c" for c in manifest["chunks"][window:]}
    assert kinds == {"crc32c"}, manifest["chunks"]
    for chunk in manifest["chunks"]:
        assert not server.client.get_object_tags(daemon.bucket, chunk["key"])
    assert not daemon.find("crc32c_refused")
    assert daemon.stop() == 0


@pytest.mark.parametrize("server", ["minio", "tls_minio", "tls_versitygw"], indirect=True)
def test_a_chunk_whose_file_changes_between_its_digest_and_its_send_is_not_stored(
    server, bucket, tmp_path
):
    """A chunk is digested on one pass over its file and sent, read again, on the next.
    Bytes rewritten in between are refused by S3, which checks the body against the
    digest; and streamer's own check of the second pass stops the body before its end,
    whether or not the server checks. A file cut short during the send stops it too.
    Nothing is stored, and the next try goes."""
    s3 = chunk_store(server, bucket, **(over_tls(server) if server.ca_file else {}))
    path = tmp_path / "rec.mp4"
    path.write_bytes(b"a" * 300 * KiB)
    span = Span(record_of(path), 0, 300 * KiB)
    key = s3.layout.chunk_key("s", 0)

    def rewrite(at: int) -> None:
        with path.open("r+b") as f:
            f.seek(at)
            f.write(b"b")

    digested = digest(s3.chunk_algorithm, span)
    rewrite(100 * KiB)
    with pytest.raises(S3Error) as refused:
        place_chunk(s3, "s", 0, 0, span, digested, probe=False)
    assert refused.value.code in TRANSIENT_CODES
    first = digest_chunk(s3, span, 0)
    rewrite(200 * KiB)
    with pytest.raises(SourceChanged, match="changed since they were digested"):
        place_chunk(s3, "s", 0, 0, first.body, first.digest, probe=False)
    first = digest_chunk(s3, span, 0)
    os.truncate(path, 200 * KiB)
    with pytest.raises(SourceChanged, match="ends before"):
        place_chunk(s3, "s", 0, 0, first.body, first.digest, probe=False)
    assert s3.stat(key) is None
    first = digest_chunk(s3, Span(record_of(path), 0, 200 * KiB), 0)
    place_chunk(s3, "s", 0, 0, first.body, first.digest, probe=False)
    assert s3.get(key) == path.read_bytes()
    assert first.head == path.read_bytes()[: len(first.head)]
