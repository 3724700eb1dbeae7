"""How S3 checks each chunk's bytes (streamer.digests): a chunk is read once and sent with
its crc64nvme in a trailer S3 checks; over https unsigned, over http with each piece's
sha256 signed as it goes. A server that refuses the trailer gets the checksum in a header
(over http beside the chunk's signed sha256), one that refuses crc64nvme gets crc32c,
then signed sha256. The whole recording's
crc64nvme is combined from its chunks'. Against MinIO and versitygw, over http and over
https with a private CA."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading

import msgspec
import pytest
from awscrt.checksums import crc32c, crc64nvme
from harness import cli
from minio.error import S3Error
from recordings import GrowingFile, record_of

from integration.daemons import assert_exact
from integration.servers import ACCESS_KEY, chunk_store, manifest_of, object_bytes, over_tls
from streamer import objectstore
from streamer.bodies import Checked, InMemory, digests_of
from streamer.checkpoint import CheckpointStore
from streamer.chunkstore import ChunkStore
from streamer.config import S3Config
from streamer.digests import CRC32C, CRC64NVME, SHA256, of
from streamer.fileio import SourceChanged, Span
from streamer.objectstore import PiecedBodyRefused
from streamer.policy import TRANSIENT_CODES
from streamer.s3client import PieceSigner
from streamer.uploader.sending import place_chunk, put_span

KiB = 1024
pytestmark = pytest.mark.integration
on_tls_servers = pytest.mark.parametrize("server", ["tls_minio", "tls_versitygw"], indirect=True)
on_http_servers = pytest.mark.parametrize("server", ["minio", "versitygw"], indirect=True)


def crc64_of(data: bytes) -> str:
    return f"{crc64nvme(data):016x}"


def head_checksums(server, bucket: str, key: str) -> dict:
    """The checksum S3 stored with an object, and streamer's own record of its digest."""
    response = server.client._execute(
        "HEAD", bucket, key, headers={"x-amz-checksum-mode": "ENABLED"}
    )
    headers = {k.lower(): v for k, v in response.headers.items()}
    return {k: v for k, v in headers.items() if k.startswith(("x-amz-checksum-", "x-amz-meta-"))}


def b64(value: int, width: int = 8) -> str:
    return base64.b64encode(value.to_bytes(width, "big")).decode()


@on_tls_servers
def test_over_https_chunks_go_unsigned_and_s3_checks_their_crc64nvme(make_daemon, server, tmp_path):
    daemon = make_daemon(s3=over_tls(server)).start()
    writer = GrowingFile(daemon.watch / "tls.mp4", total=300 * KiB, rate=2000 * KiB).start()
    writer.wait()
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = assert_exact(server, daemon, event["stream_id"], writer.path)
    assert manifest["schema_version"] == 3
    data = writer.path.read_bytes()
    for chunk in manifest["chunks"]:
        piece = data[chunk["offset"] : chunk["offset"] + chunk["size"]]
        assert chunk["crc64nvme"] == crc64_of(piece)
        assert "sha256" not in chunk and "crc32c" not in chunk
        # S3's own record of the checksum it verified, and the one streamer stored.
        stored = head_checksums(server, daemon.bucket, chunk["key"])
        assert stored["x-amz-checksum-crc64nvme"] == b64(crc64nvme(piece))
        assert "x-amz-meta-crc64nvme" not in stored, "sent after the body: S3 keeps it"
    uploaded = daemon.find("chunk_uploaded")
    assert [e["digest"] for e in uploaded] == [
        f"crc64nvme:{c['crc64nvme']}" for c in manifest["chunks"]
    ]
    checked = cli(daemon, "verify", event["stream_id"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    quick = cli(daemon, "verify", "--quick", event["stream_id"])
    assert quick.returncode == 0, quick.stdout + quick.stderr
    shown = cli(daemon, "streams", "show", event["stream_id"])
    assert f"crc64nvme:{manifest['chunks'][0]['crc64nvme']}" in shown.stdout
    output = tmp_path / "restored.mp4"
    restored = cli(daemon, "restore", event["stream_id"], "-o", str(output))
    assert restored.returncode == 0, restored.stderr
    assert f"sha256 {manifest['sha256']}" in restored.stdout
    assert output.read_bytes() == data
    assert daemon.stop() == 0

    # A CRC proves less than a sha256: verify also holds the chunks together, and the
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
def test_a_body_that_is_not_its_crc64nvme_is_refused_and_retried_at_once(server, bucket):
    s3 = chunk_store(server, bucket, **over_tls(server))
    data = InMemory(b"the chunk's bytes" * 1000)
    assert s3.chunk_algorithms == (CRC64NVME,), "nothing but the CRC is taken"
    with pytest.raises(S3Error) as refused:
        s3.put("rec/wrong", data, of(CRC64NVME, b"other bytes"), "application/octet-stream")
    assert refused.value.code in TRANSIENT_CODES
    assert s3.stat("rec/wrong") is None, "nothing was stored"


@on_http_servers
def test_over_http_a_chunk_is_signed_by_its_sha256_and_checked_by_its_crc64nvme(server, bucket):
    s3 = chunk_store(server, bucket)
    assert s3.chunk_algorithms == (CRC64NVME, SHA256)
    body = InMemory(b"signed chunk" * 5000)
    sums = digests_of(s3.chunk_algorithms, body)
    _, _, checked = s3.put_chunk("rec/signed", body, sums, None)
    assert checked == sums[SHA256]
    stored = head_checksums(server, bucket, "rec/signed")
    assert stored["x-amz-checksum-crc64nvme"] == b64(int(sums[CRC64NVME].value, 16))
    assert stored["x-amz-meta-sha256"] == sums[SHA256].value
    # Each is checked: a wrong CRC with the right sha256, and the other way round.
    for wrong in (CRC64NVME, SHA256):
        bad = {**sums, wrong: of(wrong, b"other bytes")}
        with pytest.raises(S3Error) as refused:
            s3.put_chunk(f"rec/bad-{wrong}", body, bad, None)
        assert refused.value.code in TRANSIENT_CODES
        assert s3.stat(f"rec/bad-{wrong}") is None


@on_http_servers
def test_unsigned_payload_over_http_sends_the_crc64nvme_alone(make_daemon, server, bucket):
    s3 = chunk_store(server, bucket, unsigned_payload_over_http=True)
    assert s3.chunk_algorithms == (CRC64NVME,), "no sha256 of the bytes"
    body = InMemory(b"unsigned chunk" * 5000)
    with pytest.raises(S3Error) as refused:
        s3.put_chunk("rec/bad", body, {CRC64NVME: of(CRC64NVME, b"other")}, None)
    assert refused.value.code in TRANSIENT_CODES, "the CRC is still checked"
    daemon = make_daemon(s3={"unsigned_payload_over_http": True}).start()
    (daemon.watch / "plain.mp4").write_bytes(os.urandom(200 * KiB))
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = assert_exact(server, daemon, event["stream_id"], daemon.watch / "plain.mp4")
    assert all(set(c) & {"sha256", "crc32c"} == set() for c in manifest["chunks"])
    assert all(e["digest"].startswith("crc64nvme:") for e in daemon.find("chunk_uploaded"))
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("server", "secure", "refused", "fallback"),
    [
        ("minio", True, ("crc64nvme",), CRC32C),
        ("minio", True, ("crc64nvme", "crc32c"), SHA256),
        ("minio", False, ("crc64nvme",), SHA256),
    ],
    indirect=["server"],
)
def test_a_server_that_refuses_a_checksum_gets_the_next(
    make_daemon, server, proxy, tls_proxy, secure, refused, fallback
):
    """crc64nvme, then crc32c, then a signed sha256 (over http: crc64nvme beside the
    signed sha256, then sha256 alone). Each chunk keeps its crc64nvme, so the whole's is
    still combined from them."""
    through = tls_proxy if secure else proxy
    through.set("refuse_checksums", checksums=refused)
    s3 = {"endpoint": through.endpoint, **(over_tls(tls_proxy) if secure else {})}
    daemon = make_daemon(s3=s3).start()
    path = daemon.watch / "fallback.mp4"
    path.write_bytes(os.urandom(200 * KiB))
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = assert_exact(server, daemon, event["stream_id"], path)
    data = path.read_bytes()
    for chunk in manifest["chunks"]:
        piece = data[chunk["offset"] : chunk["offset"] + chunk["size"]]
        assert chunk["crc64nvme"] == crc64_of(piece)
        if fallback == CRC32C:
            assert chunk["crc32c"] == f"{crc32c(piece):08x}" and "sha256" not in chunk
        else:
            assert chunk["sha256"] == hashlib.sha256(piece).hexdigest()
            assert "crc32c" not in chunk
    told = daemon.find("checksum_refused")
    assert [(e["refused"], e["checksum"]) for e in told] == [(refused[-1], fallback)]
    assert not daemon.find("trailer_refused"), "the checksum was refused, not the trailer"
    assert all(e["digest"].startswith(f"{fallback}:") for e in daemon.find("chunk_uploaded"))
    checked = cli(daemon, "verify", event["stream_id"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert daemon.stop() == 0


@pytest.mark.parametrize("server", ["minio"], indirect=True)
def test_a_refusal_of_tags_over_https_costs_the_tags_not_crc64nvme(make_daemon, server, tls_proxy):
    """The first chunks' PUTs are refused with a code either refusal could give: they go
    with crc32c, then sha256, then without tags; the chunks after them keep crc64nvme."""
    tls_proxy.set("refuse_tags")
    daemon = make_daemon(s3=over_tls(tls_proxy, endpoint=tls_proxy.endpoint)).start()
    (daemon.watch / "untagged.mp4").write_bytes(b"u" * 300 * KiB)
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = assert_exact(server, daemon, event["stream_id"], daemon.watch / "untagged.mp4")
    # The chunks already in flight when the first refusal came may have gone with sha256.
    window = 3
    kinds = {
        "sha256" if "sha256" in c else "crc32c" if "crc32c" in c else "crc64nvme"
        for c in manifest["chunks"][window:]
    }
    assert kinds == {"crc64nvme"}, manifest["chunks"]
    for chunk in manifest["chunks"]:
        assert not server.client.get_object_tags(daemon.bucket, chunk["key"])
    assert not daemon.find("checksum_refused")
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

    def digested(span: Span) -> tuple[Checked, dict]:
        sums = digests_of(s3.chunk_algorithms, span)
        return Checked(span, sums[CRC64NVME]), sums

    sums = digests_of(s3.chunk_algorithms, span)
    rewrite(100 * KiB)
    with pytest.raises(S3Error) as refused:
        place_chunk(s3, "s", 0, 0, span, sums, probe=False)
    assert refused.value.code in TRANSIENT_CODES
    body, sums = digested(span)
    rewrite(200 * KiB)
    with pytest.raises(SourceChanged, match="changed since they were digested"):
        place_chunk(s3, "s", 0, 0, body, sums, probe=False)
    body, sums = digested(span)
    os.truncate(path, 200 * KiB)
    with pytest.raises(SourceChanged, match="ends before"):
        place_chunk(s3, "s", 0, 0, body, sums, probe=False)
    assert s3.stat(key) is None
    sent = put_span(s3, "s", 0, 0, Span(record_of(path), 0, 200 * KiB), probe=False)
    assert s3.get(key) == path.read_bytes()
    assert sent.head == path.read_bytes()[: len(sent.head)]
    assert sent.crc64nvme == crc64_of(path.read_bytes())


@pytest.mark.parametrize("server", ["tls_minio"], indirect=True)
def test_without_file_sha256_the_whole_is_proven_by_its_crc64nvme(make_daemon, server, tmp_path):
    """integrity.file_sha256 off: no sha256 anywhere. The assembled object (streamed from
    the file, checked as it is read) is proven by the crc64nvme of the chunks together
    before the chunks go; verify and restore check the whole by it, and a metadata.json
    whose crc64nvme is not the bytes' is caught."""
    daemon = make_daemon(
        s3=over_tls(server),
        integrity={"file_sha256": False},
        stream={"assemble": True, "keep_chunks": False},
    ).start()
    path = daemon.watch / "nosha.mp4"
    path.write_bytes(os.urandom(300 * KiB))
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    stream_id = event["stream_id"]
    assert event["sha256"] is None
    daemon.wait_for("chunks_deleted", timeout=60)
    manifest = manifest_of(server.client, daemon.bucket, stream_id)
    data = path.read_bytes()
    assert manifest["sha256"] is None and manifest["chunks_deleted_at"]
    assert manifest["crc64nvme"] == crc64_of(data)
    assert manifest["crc64nvme_checked_by"] == "streamer"
    for chunk in manifest["chunks"]:
        piece = data[chunk["offset"] : chunk["offset"] + chunk["size"]]
        assert chunk["crc64nvme"] == crc64_of(piece) and "sha256" not in chunk
    assert object_bytes(server.client, daemon.bucket, manifest["assembled"]["key"]) == data
    checked = cli(daemon, "verify", stream_id)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    output = tmp_path / "restored.mp4"
    restored = cli(daemon, "restore", stream_id, "-o", str(output), "--json")
    assert restored.returncode == 0, restored.stderr
    said = msgspec.json.decode(restored.stdout)
    assert said["crc64nvme"] == manifest["crc64nvme"] and said["sha256"] is None
    assert output.read_bytes() == path.read_bytes()
    assert daemon.stop() == 0

    key = f"rec/test-host/{stream_id}/metadata.json"
    lying = {**manifest, "crc64nvme": crc64_of(b"other bytes")}
    body = msgspec.json.encode(lying)
    server.client.put_object(daemon.bucket, key, io.BytesIO(body), len(body))
    refused = cli(daemon, "restore", stream_id, "-o", str(tmp_path / "again.mp4"))
    assert refused.returncode != 0
    assert "is not the bytes it was stored as: crc64nvme:" in refused.stderr
    assert not (tmp_path / "again.mp4").exists()

    store = CheckpointStore(str(daemon.config_path.parent / "checkpoint"), 1 << 30)
    try:
        store.update_stream(
            stream_id, lambda r: msgspec.structs.replace(r, crc64nvme=crc64_of(b"other"))
        )
    finally:
        store.close()
    wrong = cli(daemon, "verify", stream_id)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "the assembled object's bytes are not the stream's" in wrong.stdout


@pytest.mark.parametrize("server", ["versitygw"], indirect=True)
def test_s3_refuses_a_whole_object_whose_crc64nvme_is_not_its_parts(server, bucket):
    """Where the server takes a crc64nvme of each part it copies, it checks the whole's
    given at completion against them; and streamer checks each part's against its
    source's as recorded. Either refusal leaves no object and no upload open."""
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from streamer.objectstore import PartDiffers, PartSource

    s3 = chunk_store(server, bucket)
    pieces = [os.urandom(5 * 1024 * KiB), os.urandom(1000)]
    parts = []
    for n, piece in enumerate(pieces):
        body = InMemory(piece)
        etag, _, _ = s3.put_chunk(f"rec/part{n}", body, None, None)
        parts.append(PartSource(f"rec/part{n}", len(piece), etag, crc64_of(piece)))
    whole = crc64_of(b"".join(pieces))
    kind = "application/octet-stream"
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(S3Error) as refused:
            objectstore.compose(s3, "rec/whole", parts, kind, pool, crc64nvme=crc64_of(b"other"))
        assert refused.value.code in TRANSIENT_CODES
        with pytest.raises(PartDiffers, match="part 1 copied from rec/part0"):
            lying = [replace(parts[0], crc64nvme=whole), parts[1]]
            objectstore.compose(s3, "rec/whole", lying, kind, pool, crc64nvme=whole)
        assert s3.stat("rec/whole") is None
        assert not s3.open_uploads("rec/whole")
        etag, checked = objectstore.compose(s3, "rec/whole", parts, kind, pool, crc64nvme=whole)
    assert checked and s3.get("rec/whole") == b"".join(pieces)
    assert s3.stat("rec/whole", checksum=True).crc64nvme == whole


class CountedSpan(Span):
    """A span that counts its passes over the file."""

    passes = 0

    def pieces(self):
        self.passes += 1
        return super().pieces()


@on_http_servers
def test_over_http_a_piece_signed_without_the_key_is_refused(server, bucket):
    s3 = chunk_store(server, bucket)
    assert s3.trails
    # The pieces signed by one who has not the secret key: S3 checks each signature, and
    # refuses the body, as it would one damaged on the way: to be sent again.
    s3._client.piece_signer = lambda headers: PieceSigner("not the key", headers)
    body = InMemory(b"forged" * 5000)
    with pytest.raises(PiecedBodyRefused):
        s3.put_chunk("rec/forged", body, None, None)
    assert s3.stat("rec/forged") is None and not s3.trailer_refused
    # Refused again: the store takes it for a server that cannot check signed pieces, and
    # sends the chunk with its sha256 signed in the header instead.
    _, sums, checked = s3.put_chunk("rec/forged", body, None, None)
    assert s3.trailer_refused
    assert checked == sums[SHA256] == of(SHA256, b"forged" * 5000)
    assert s3.get("rec/forged") == b"forged" * 5000


@on_http_servers
def test_over_http_wrong_credentials_are_a_refusal_not_a_damaged_body(server, bucket):
    # Every request is refused, one without a body too: not a body to send again at once.
    config = S3Config(
        endpoint=server.endpoint, bucket=bucket, access_key=ACCESS_KEY, secret_key="wrong"
    )
    s3 = ChunkStore(config, "test-host")
    with pytest.raises(S3Error) as refused:
        s3.put_chunk("rec/denied", InMemory(b"denied" * 5000), None, None)
    assert refused.value.code == "SignatureDoesNotMatch"
    assert s3.trails and not s3.trailer_refused


@pytest.mark.parametrize(
    "server", ["minio", "versitygw", "tls_minio", "tls_versitygw"], indirect=True
)
def test_a_chunk_is_read_once_its_crc64nvme_sent_in_a_trailer(server, bucket, tmp_path):
    """Over http each piece's sha256 is signed as it goes, and the trailer too."""
    s3 = chunk_store(server, bucket, **(over_tls(server) if server.ca_file else {}))
    assert s3.trails
    path = tmp_path / "once.mp4"
    path.write_bytes(os.urandom(2 * 1024 * KiB + 123))  # three pieces, the last short
    span = CountedSpan(record_of(path), 0, path.stat().st_size)
    sent = put_span(s3, "s", 0, 0, span, probe=False)
    assert span.passes == 1
    data = path.read_bytes()
    assert sent.crc64nvme == crc64_of(data) and sent.digest == of(CRC64NVME, data)
    assert sent.head == data[: len(sent.head)]
    key = s3.layout.chunk_key("s", 0)
    assert s3.get(key) == data
    assert head_checksums(server, bucket, key)["x-amz-checksum-crc64nvme"] == b64(crc64nvme(data))
    # Found there after a crash: read once more, to compare.
    again = CountedSpan(record_of(path), 0, path.stat().st_size)
    found = put_span(s3, "s", 0, 0, again, probe=True)
    assert (found.revision, found.seconds, again.passes) == (0, None, 1)


@pytest.mark.parametrize("server", ["minio"], indirect=True)
def test_a_server_that_refuses_a_trailer_gets_the_checksum_in_a_header(
    make_daemon, server, tls_proxy
):
    tls_proxy.set("refuse_trailers")
    daemon = make_daemon(s3=over_tls(tls_proxy, endpoint=tls_proxy.endpoint)).start()
    path = daemon.watch / "header.mp4"
    path.write_bytes(os.urandom(300 * KiB))
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = assert_exact(server, daemon, event["stream_id"], path)
    assert all(set(c) & {"sha256", "crc32c"} == set() for c in manifest["chunks"])
    assert len(daemon.find("trailer_refused")) >= 1
    assert not daemon.find("checksum_refused"), "crc64nvme itself is taken"
    assert daemon.stop() == 0


@pytest.mark.parametrize("server", ["versitygw"], indirect=True)
def test_a_part_whose_crc64nvme_is_not_known_goes_into_no_checked_upload(server, bucket):
    """A chunk uploaded before crc64nvme: its part cannot be checked, so the upload that
    asks for a check gives way (CopiesUnchecked), and the uploader goes on asking."""
    from streamer.objectstore import CopiesUnchecked, PartSource

    s3 = chunk_store(server, bucket)
    data = os.urandom(1000)
    etag, _, _ = s3.put_chunk("rec/old", InMemory(data), None, None)
    upload_id, checked = s3.begin_upload("rec/whole", "application/octet-stream", True)
    assert checked
    with pytest.raises(CopiesUnchecked, match="crc64nvme of rec/old is not known"):
        s3.copy_part("rec/whole", upload_id, 1, PartSource("rec/old", 1000, etag), checked)
    assert s3.checks_copies, "the server was not at fault"
    s3.abort_upload("rec/whole", upload_id)


@pytest.mark.parametrize("server", ["minio"], indirect=True)
def test_a_server_that_refuses_a_checked_upload_gets_one_without(server, bucket, proxy):
    from concurrent.futures import ThreadPoolExecutor

    from streamer.objectstore import PartSource

    proxy.set("refuse_checksums", checksums=("crc64nvme",))
    s3 = chunk_store(proxy, bucket)
    data = os.urandom(1000)
    etag, sums, _ = chunk_store(server, bucket).put_chunk("rec/part", InMemory(data), None, None)
    assert s3.checks_copies
    part = PartSource("rec/part", 1000, etag, sums[CRC64NVME].value)
    with ThreadPoolExecutor(1) as pool:
        etag, checked = objectstore.compose(
            s3, "rec/whole", [part], "application/octet-stream", pool, crc64nvme=crc64_of(data)
        )
    assert not checked and not s3.checks_copies
    assert s3.get("rec/whole") == data
    assert not s3.open_uploads("rec/whole")


@pytest.mark.parametrize("server", ["minio"], indirect=True)
def test_a_trailer_refused_after_another_sender_gave_its_checksum_up_means_no_more(
    server, bucket, proxy
):
    """Two chunks on the wire with crc64nvme in a trailer, both refused: the one answered
    first gives crc64nvme up for the next checksum; the other is judged by the checksum its own
    trailer carried, not by crc32c, and trailers are not given up for it."""
    proxy.set("refuse_checksums", checksums=("crc64nvme",))
    s3 = chunk_store(proxy, bucket)
    on_the_wire, go_on = threading.Event(), threading.Event()

    class Held(InMemory):
        def pieces(self):
            on_the_wire.set()  # its headers are sent: the body is asked for
            assert go_on.wait(10)
            yield from super().pieces()

    data = os.urandom(100 * KiB)
    outcome = {}

    def second() -> None:
        outcome["put"] = s3.put_chunk("rec/second", Held(data), None, None)

    sender = threading.Thread(target=second)
    sender.start()
    assert on_the_wire.wait(10)
    s3.put_chunk("rec/first", InMemory(data), None, None)
    # Over http, a chunk whose crc64nvme is refused goes with its signed sha256 alone.
    assert (s3.checksum, s3.checksum_refused) == (SHA256, CRC64NVME)
    go_on.set()
    sender.join(30)
    _, sums, checked = outcome["put"]
    assert checked == of(SHA256, data) and sums[CRC64NVME] == of(CRC64NVME, data)
    assert not s3.trailer_refused
    assert object_bytes(server.client, bucket, "rec/second") == data


@pytest.mark.parametrize("server", ["minio"], indirect=True)
def test_two_bodies_damaged_on_the_way_are_each_sent_again_and_trailers_kept(server, bucket, proxy):
    """A body refused once is sent again; another's refusal meanwhile is its own first,
    not this one's second: each is remembered by its key."""
    s3 = chunk_store(proxy, bucket)
    proxy.damage_puts(2)
    data = {key: os.urandom(100 * KiB) for key in ("rec/one", "rec/two")}
    for key, sent in data.items():
        with pytest.raises(PiecedBodyRefused):
            s3.put_chunk(key, InMemory(sent), None, None)
    for key, sent in data.items():
        s3.put_chunk(key, InMemory(sent), None, None)
        assert s3.get(key) == sent
    assert s3.trails and not s3.trailer_refused
