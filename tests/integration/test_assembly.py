"""The assembled object built while the recording is live: each committed chunk is copied
into its multipart upload at once, so completion copies only what is left. Against a real
S3 server; uploads are lost, daemons killed and files renamed for real."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from conftest import free_port, wait_until
from harness import AT_LEAST_ONE, at_least, cli, scrape
from recordings import sha256_file

from integration.daemons import FAST_RETRIES, others_flow
from integration.faultproxy import FaultProxy
from integration.servers import MinioUser, both_servers, manifest_of, object_bytes, reassemble

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# An ftyp box: the file's first bytes say MP4, so the upload begins as video/mp4.
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
LIVE = {"chunk_size": 5 * MiB, "idle_timeout": 3}


def recording(name: str, size: int) -> bytes:
    return MP4_HEAD + hashlib.shake_256(name.encode()).digest(size - len(MP4_HEAD))


def append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def shown(daemon, stream_id: str) -> dict:
    result = cli(daemon, "streams", "show", stream_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def parts_copied(daemon, stream_id: str) -> tuple[str | None, int]:
    """The stream's open assembly upload, and how many chunks are parts of it."""
    state = shown(daemon, stream_id)
    upload = state["record"]["assembly"]
    if upload is None:
        return None, 0
    copied = [c for c in state["chunks"] if c["part_upload"] == upload["upload_id"]]
    return upload["upload_id"], len(copied)


def wait_for_parts(daemon, stream_id: str, count: int) -> str:
    def done():
        upload_id, copied = parts_copied(daemon, stream_id)
        return upload_id if copied == count else None

    return wait_until(done, 30, interval=0.3, what=f"{count} parts copied while live")


def streaming(make_daemon, name: str, first: bytes, parts: int, **settings):
    """A daemon, and its file `name` holding `first`, whose first `parts` chunks have been
    copied into the stream's upload: (daemon, path, stream_id, upload_id)."""
    daemon = make_daemon(**{"stream": LIVE, **settings}).start()
    path = daemon.watch / name
    append(path, first)
    stream_id = daemon.wait_for("assembly_begun")[0]["stream_id"]
    return daemon, path, stream_id, wait_for_parts(daemon, stream_id, parts)


def open_uploads(server, bucket: str) -> list[str]:
    return [u.upload_id for u in server.client._list_multipart_uploads(bucket).uploads]


def assembled_exactly(server, daemon, stream_id: str, path) -> dict:
    """The chunks and the assembled object are both the file, and no upload is left open."""
    manifest = manifest_of(server.client, daemon.bucket, stream_id)
    expected = sha256_file(path)
    chunks = reassemble(server.client, daemon.bucket, manifest)
    whole = object_bytes(server.client, daemon.bucket, manifest["assembled"]["key"])
    assert hashlib.sha256(chunks).hexdigest() == expected == manifest["sha256"]
    assert hashlib.sha256(whole).hexdigest() == expected
    assert manifest["assembled"]["method"] == "compose"
    assert open_uploads(server, daemon.bucket) == [], "an upload was left open"
    return manifest


@both_servers
def test_chunks_are_copied_into_the_assembled_object_while_the_file_grows(make_daemon, server):
    data = recording("live", 23 * MiB)
    # Three full chunks, and a part of the fourth.
    daemon, path, stream_id, upload_id = streaming(make_daemon, "live.mp4", data[: 16 * MiB], 3)
    assert open_uploads(server, daemon.bucket) == [upload_id]
    assert not daemon.find("stream_finished")
    text = cli(daemon, "streams", "show", stream_id).stdout
    assert f"3 chunks copied into rec/test-host/{stream_id}/live.mp4" in text

    append(path, data[16 * MiB :])
    daemon.wait_for("stream_finished", timeout=60)
    assembled = daemon.find("stream_assembled", stream_id=stream_id)[0]
    assert assembled["parts_copied_live"] == 4, "only the tail is copied at completion"
    copied = scrape(daemon)
    assert copied["streamer_assembly_parts_copied_total{when=live}"] == 4
    assert copied["streamer_assembly_parts_copied_total{when=completion}"] == 1
    manifest = assembled_exactly(server, daemon, stream_id, path)
    info = server.client.stat_object(daemon.bucket, manifest["assembled"]["key"])
    assert info.content_type == "video/mp4"
    assert len(daemon.find("assembly_begun")) == 1
    assert shown(daemon, stream_id)["record"]["assembly"] is None


def test_an_upload_lost_while_live_or_at_completion_is_begun_again(make_daemon, minio):
    data = recording("lost", 23 * MiB)
    settings = {"s3": FAST_RETRIES, "stream": {**LIVE, "idle_timeout": 4}}
    daemon, path, stream_id, first = streaming(
        make_daemon, "lost.mp4", data[: 10 * MiB], 2, **settings
    )
    key = f"rec/test-host/{stream_id}/lost.mp4"

    # Lost while live (MinIO expires uploads older than a day): the next chunk's copy
    # finds it gone, and the chunk after that begins another, into which all are copied.
    minio.client._abort_multipart_upload(daemon.bucket, key, first)
    append(path, data[10 * MiB : 15 * MiB])
    daemon.wait_for("assembly_upload_lost", stream_id=stream_id)
    append(path, data[15 * MiB : 20 * MiB])
    daemon.wait_for("assembly_begun", count=2)
    second = wait_for_parts(daemon, stream_id, 4)
    assert second != first

    # Lost after the last copy, before completion: assembled afresh.
    minio.client._abort_multipart_upload(daemon.bucket, key, second)
    append(path, data[20 * MiB :])
    daemon.wait_for("stream_finished", timeout=60)
    assert len(daemon.find("assembly_upload_lost", stream_id=stream_id)) == 2
    assert daemon.find("stream_assembled")[0]["parts_copied_live"] == 0
    assembled_exactly(minio, daemon, stream_id, path)


def test_a_killed_daemon_resumes_the_upload_it_began(make_daemon, minio):
    data = recording("resumed", 27 * MiB)
    daemon, path, stream_id, _ = streaming(make_daemon, "resumed.mp4", data[: 15 * MiB], 3)

    daemon.kill()  # the uploaders die with it
    daemon.start()
    append(path, data[15 * MiB :])
    daemon.wait_for("stream_finished", timeout=60)
    assert len(daemon.find("assembly_begun")) == 1, "the recorded upload is used again"
    assembled = daemon.find("stream_assembled", stream_id=stream_id)[0]
    assert assembled["parts_copied_live"] == 5  # three before the kill, two after
    assembled_exactly(minio, daemon, stream_id, path)


def test_a_cancelled_stream_aborts_its_upload(make_daemon, minio):
    daemon, _, stream_id, _ = streaming(
        make_daemon, "cancelled.mp4", recording("cancelled", 11 * MiB), 2
    )
    assert cli(daemon, "streams", "cancel", stream_id).returncode == 0
    daemon.wait_for("stream_finished", status="cancelled", timeout=30)
    wait_until(lambda: not open_uploads(minio, daemon.bucket), 10, what="upload aborted")
    assert shown(daemon, stream_id)["record"]["assembly"] is None


def test_a_file_renamed_while_live_is_assembled_under_its_new_name(make_daemon, minio):
    data = recording("renamed", 12 * MiB)
    daemon, before, stream_id, _ = streaming(make_daemon, "before.mp4", data[: 10 * MiB], 2)
    after = daemon.watch / "after.mp4"
    before.rename(after)
    daemon.wait_for("stream_renamed", stream_id=stream_id)
    append(after, data[10 * MiB :])
    daemon.wait_for("stream_finished", timeout=60)
    manifest = assembled_exactly(minio, daemon, stream_id, after)
    assert manifest["assembled"]["key"] == f"rec/test-host/{stream_id}/after.mp4"
    assert daemon.find("stream_assembled")[0]["parts_copied_live"] == 0
    objects = minio.client.list_objects(daemon.bucket, prefix=f"rec/test-host/{stream_id}/")
    assert f"rec/test-host/{stream_id}/before.mp4" not in {o.object_name for o in objects}


@both_servers
def test_a_part_rewritten_after_it_was_copied_is_copied_again(make_daemon, server):
    daemon, path, stream_id, _ = streaming(
        make_daemon, "patched.mp4", recording("patched", 12 * MiB), 2
    )
    with open(path, "r+b") as f:  # as ffmpeg patches the mdat size when it finishes
        f.seek(40)
        f.write(b"\xff\xff\xff\xff")
    daemon.wait_for("stream_finished", timeout=60)
    assert daemon.find("chunk_reuploaded", stream_id=stream_id, index=0)
    assert daemon.find("stream_assembled")[0]["parts_copied_live"] == 1
    manifest = assembled_exactly(server, daemon, stream_id, path)
    assert manifest["chunks"][0]["revision"] == 1


def as_user(make_daemon, minio, bucket, tmp_path, **stream):
    """A daemon whose S3 user can be refused writes by a bucket policy."""
    user = MinioUser(minio, bucket, tmp_path)
    s3 = {"access_key": user.access_key, "secret_key": user.secret_key, **FAST_RETRIES}
    return make_daemon(s3=s3, stream={**LIVE, **stream}, workers=1).start(), user


def test_a_refused_part_copy_waits_while_the_other_streams_flow(
    make_daemon, minio, bucket, tmp_path
):
    """The upload is begun and chunk 0 copied; then S3 refuses the assembled object's
    writes: chunk 1's copy is tried again after its backoff, another stream on the same
    uploader finishes meanwhile, and the stream finishes exact, assembled, once allowed."""
    daemon, user = as_user(make_daemon, minio, bucket, tmp_path)
    data = recording("refused", 10 * MiB)
    path = daemon.watch / "refused.mp4"
    append(path, data[: 5 * MiB])
    stream_id = daemon.wait_for("assembly_begun")[0]["stream_id"]
    wait_for_parts(daemon, stream_id, 1)
    user.refuse_puts("rec/test-host/*/refused.mp4")
    # Its completion too, if it comes before the refusal ends.
    daemon.expect(part_copy_failed=AT_LEAST_ONE, s3_rejected=at_least(0))
    append(path, data[5 * MiB :])
    failed = daemon.wait_for("part_copy_failed", stream_id=stream_id)
    assert all("AccessDenied" in f["error"] for f in failed)
    others_flow(minio, daemon, stream_id, daemon.watch / "other.mp4", recording("other", MiB))

    user.refuse_puts()
    daemon.wait_for("stream_finished", stream_id=stream_id, timeout=60)
    assembled_exactly(minio, daemon, stream_id, path)
    assert len(daemon.find("uploader_spawned")) == 1, "the uploader lived through it"


def test_a_refused_final_compose_waits_and_finishes_once_allowed(
    make_daemon, minio, bucket, tmp_path
):
    """The parts were copied while live; S3 refuses the object at completion (the last
    copies, completing the upload): the stream waits and finishes exact once allowed."""
    daemon, user = as_user(make_daemon, minio, bucket, tmp_path, idle_timeout=2)
    data = recording("late", 12 * MiB)
    path = daemon.watch / "late.mp4"
    append(path, data[: 10 * MiB])
    stream_id = daemon.wait_for("assembly_begun")[0]["stream_id"]
    wait_for_parts(daemon, stream_id, 2)
    user.refuse_puts("rec/test-host/*/late.mp4")
    daemon.expect(s3_rejected=at_least(2))
    append(path, data[10 * MiB :])
    rejected = daemon.wait_for("s3_rejected", count=2, stream_id=stream_id, timeout=60)
    assert all("AccessDenied" in r["error"] for r in rejected)
    assert not daemon.find("stream_finished", stream_id=stream_id)

    user.refuse_puts()
    daemon.wait_for("stream_finished", stream_id=stream_id, timeout=60)
    assembled_exactly(minio, daemon, stream_id, path)
    assert daemon.find("stream_assembled", stream_id=stream_id)[0]["parts_copied_live"] == 2
    assert len(daemon.find("uploader_spawned")) == 1, "the uploader lived through it"


def checksum_of(server, bucket: str, key: str) -> dict:
    response = server.client._execute(
        "HEAD", bucket, key, headers={"x-amz-checksum-mode": "ENABLED"}
    )
    return {k.lower(): v for k, v in response.headers.items() if "checksum" in k.lower()}


@both_servers
def test_s3_checks_the_whole_object_s_crc64nvme_where_it_takes_one_of_copied_parts(
    make_daemon, server
):
    """versitygw takes a crc64nvme of each part it copies and checks the whole object's
    against the chunks' combined: metadata.json says S3 checked it, and pruning takes
    that as its proof instead of reading the object back. MinIO copies no part into an
    upload that asks for one: the uploader begins another, once, and the whole is proven
    by the crc64nvme streamer combined, read back."""
    from awscrt.checksums import crc64nvme

    proxy = FaultProxy(("127.0.0.1", server.port), free_port())  # counts the bytes read
    settings = {"stream": {**LIVE, "keep_chunks": False}, "s3": {"endpoint": proxy.endpoint}}
    daemon = make_daemon(**settings, workers=1).start()
    data = recording("checked", 12 * MiB)
    path = daemon.watch / "checked.mp4"
    append(path, data[: 6 * MiB])
    stream_id = daemon.wait_for("assembly_begun")[0]["stream_id"]
    read_before = proxy.downloaded  # nothing but the look at the bucket, and listings
    append(path, data[6 * MiB :])
    deleted = daemon.wait_for("chunks_deleted", timeout=90)[0]
    read_to_prove = proxy.downloaded - read_before
    manifest = manifest_of(server.client, daemon.bucket, stream_id)
    crc = f"{crc64nvme(data):016x}"
    assert manifest["crc64nvme"] == crc and manifest["sha256"] == sha256_file(path)
    whole = manifest["assembled"]["key"]
    assert object_bytes(server.client, daemon.bucket, whole) == data
    stored = checksum_of(server, daemon.bucket, whole)
    if server.name == "versitygw":
        assert manifest["crc64nvme_checked_by"] == "s3"
        assert manifest["assembled"]["crc64nvme"] == crc
        assert stored["x-amz-checksum-crc64nvme"] == base64.b64encode(bytes.fromhex(crc)).decode()
        assert stored["x-amz-checksum-type"] == "FULL_OBJECT"
        assert deleted["proven_by"] == "the crc64nvme S3 checked"
        assert read_to_prove < MiB, "not read back"
        assert not daemon.find("assembly_unchecked")
        assert daemon.find("stream_assembled")[0]["checked_by_s3"] is True
    else:
        assert manifest["crc64nvme_checked_by"] == "streamer"
        assert manifest["assembled"]["crc64nvme"] is None
        assert len(daemon.find("assembly_unchecked")) == 1, "learnt once, per uploader"
        assert deleted["proven_by"] == "reading it back"
        assert read_to_prove >= len(data)
    assert open_uploads(server, daemon.bucket) == [], "an upload was left open"
    checked = cli(daemon, "verify", stream_id)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert daemon.stop() == 0
    proxy.close()
