"""stream.keep_chunks off (streamer/uploader/pruning.py): a finished stream's chunk objects
go once its assembled object is proven; verify, retention and restore then work from that
object."""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest
from harness import cli
from recordings import record, sha256_file

from integration.servers import Mc, MinioUser, both_servers, manifest_of, object_bytes

pytestmark = pytest.mark.integration

NO_CHUNKS = {"keep_chunks": False}


def chunk_keys(server, daemon, stream_id) -> list[str]:
    prefix = f"rec/test-host/{stream_id}/chunks/"
    return [o.object_name for o in server.client.list_objects(daemon.bucket, prefix, True)]


def recorded(ffmpeg, tmp_path, daemon, name="cam.mp4"):
    source = tmp_path / f"source-{name}"
    assert record(ffmpeg, source, 3, "fragmented", live=False).wait(60) == 0
    path = daemon.watch / name
    shutil.copy(source, path)
    stream_id = daemon.wait_for("stream_discovered", path=str(path))[0]["stream_id"]
    return stream_id, path


@both_servers
def test_chunks_go_once_the_whole_object_is_proven_and_everything_works_from_it(
    make_daemon, server, ffmpeg, tmp_path
):
    daemon = make_daemon(
        stream=NO_CHUNKS, retention={"delete_after_upload": True, "min_age": 0}
    ).start()
    stream_id, path = recorded(ffmpeg, tmp_path, daemon)
    kept = tmp_path / "kept.mp4"
    shutil.copy(path, kept)
    deleted = daemon.wait_for("chunks_deleted", stream_id=stream_id, timeout=60)[0]
    assert deleted["chunks"] >= 2
    assert chunk_keys(server, daemon, stream_id) == []
    manifest = manifest_of(server.client, daemon.bucket, stream_id)
    assert manifest["chunks_deleted_at"] and len(manifest["chunks"]) == deleted["chunks"]
    whole = object_bytes(server.client, daemon.bucket, manifest["assembled"]["key"])
    assert whole == kept.read_bytes()
    # Retention proves the file by the whole object, and deletes it.
    daemon.wait_for("source_deleted", stream_id=stream_id, timeout=60)
    assert not path.exists()
    assert cli(daemon, "verify", stream_id).returncode == 0
    out = tmp_path / "restored.mp4"
    restored = cli(daemon, "restore", stream_id, "-o", str(out))
    assert restored.returncode == 0, restored.stderr
    assert sha256_file(out) == sha256_file(kept)


def test_streams_finished_before_are_pruned_at_start_and_not_unassembled_ones(
    make_daemon, minio, ffmpeg, tmp_path
):
    daemon = make_daemon(stream={"assemble": False}).start()
    unassembled, _ = recorded(ffmpeg, tmp_path, daemon, "loose.mp4")
    daemon.wait_for("stream_finished", stream_id=unassembled, timeout=60)
    daemon.stop()
    before = make_daemon(stream={"assemble": True}).start()  # the same store and directory
    stream_id, _ = recorded(ffmpeg, tmp_path, before, "kept.mp4")
    before.wait_for("stream_finished", stream_id=stream_id, timeout=60)
    before.stop()
    assert chunk_keys(minio, before, stream_id)

    after = make_daemon(stream=NO_CHUNKS).start()
    after.wait_for("chunks_deleted", stream_id=stream_id, timeout=60)
    assert chunk_keys(minio, after, stream_id) == []
    assert chunk_keys(minio, after, unassembled), "a stream without a whole object keeps them"
    assert not after.find("chunks_deleted", stream_id=unassembled)


def test_a_whole_object_that_is_not_the_recording_keeps_the_chunks(
    make_daemon, minio, ffmpeg, tmp_path
):
    daemon = make_daemon().start()
    stream_id, path = recorded(ffmpeg, tmp_path, daemon)
    daemon.wait_for("stream_finished", stream_id=stream_id, timeout=60)
    daemon.stop()
    key = manifest_of(minio.client, daemon.bucket, stream_id)["assembled"]["key"]
    size = path.stat().st_size
    minio.client.put_object(daemon.bucket, key, io.BytesIO(b"\0" * size), size)

    again = make_daemon(stream=NO_CHUNKS).expect("chunks_kept").start()
    kept = again.wait_for("chunks_kept", stream_id=stream_id, timeout=60)[0]
    assert kept["final"] is True and "is not the one made" in kept["error"]
    assert chunk_keys(minio, again, stream_id), "the chunks are the recording now"
    assert manifest_of(minio.client, again.bucket, stream_id)["chunks_deleted_at"] is None


@both_servers
def test_chunks_carry_a_tag_a_lifecycle_rule_can_expire_them_by(make_daemon, server, tmp_path):
    daemon = make_daemon().start()
    (daemon.watch / "tagged.mp4").write_bytes(os.urandom(200 * 1024))
    stream_id = daemon.wait_for("stream_finished")[0]["stream_id"]
    keys = [
        o.object_name
        for o in server.client.list_objects(daemon.bucket, f"rec/test-host/{stream_id}/", True)
    ]
    chunks = [k for k in keys if "/chunks/" in k]
    assert len(chunks) == 4 and len(keys) > len(chunks)
    for key in keys:
        tags = server.client.get_object_tags(daemon.bucket, key) or {}
        assert dict(tags) == ({"streamer": "chunk"} if key in chunks else {}), key
    if server.name == "minio":  # the rule the docs give is one the server takes
        mc = Mc(server, tmp_path)
        mc("ilm", "rule", "add", "--tags", "streamer=chunk", "--expire-days", "30",
           f"t/{daemon.bucket}")  # fmt: skip
        [rule] = json.loads(mc("ilm", "rule", "ls", "--json", f"t/{daemon.bucket}"))["config"][
            "Rules"
        ]
        assert rule["Filter"] == {"Tag": {"Key": "streamer", "Value": "chunk"}}


def test_refused_deletes_keep_the_chunks_and_doctor_says_so(make_daemon, minio, bucket, tmp_path):
    user = MinioUser(minio, bucket, tmp_path)
    user.refuse_puts("*", action="s3:DeleteObject")
    s3 = {"access_key": user.access_key, "secret_key": user.secret_key}
    daemon = make_daemon(s3=s3)
    kept = cli(daemon, "doctor")
    assert kept.returncode == 0 and "could not delete" in kept.stdout
    refused = cli(daemon, "doctor", env={"STREAMER_STREAM_KEEP_CHUNKS": "false"})
    assert refused.returncode == 1 and "allow DeleteObject" in refused.stdout

    # The next stream's too, if its deletes are refused before the daemon stops.
    pruning = make_daemon(s3=s3, stream=NO_CHUNKS).expect(chunks_kept=range(1, 3)).start()
    (pruning.watch / "stays.mp4").write_bytes(os.urandom(200 * 1024))
    stream_id = pruning.wait_for("stream_finished")[0]["stream_id"]
    kept = pruning.wait_for("chunks_kept", stream_id=stream_id, timeout=60)[0]
    assert kept["final"] is True and "AccessDenied" in kept["error"]
    assert len(chunk_keys(minio, pruning, stream_id)) == 4
    assert manifest_of(minio.client, bucket, stream_id)["chunks_deleted_at"] is None
    shown = json.loads(cli(pruning, "streams", "show", stream_id, "--json").stdout)
    assert "AccessDenied" in shown["record"]["chunks_kept_because"], "not asked again"
    others = pruning.watch / "next.mp4"
    others.write_bytes(os.urandom(100 * 1024))
    pruning.wait_for("stream_finished", count=2)  # the daemon goes on


def test_a_server_that_takes_no_tags_still_takes_every_chunk(make_daemon, minio, proxy):
    proxy.set("refuse_tags")
    daemon = make_daemon(s3={"endpoint": proxy.endpoint}).start()
    path = daemon.watch / "untagged.mp4"
    path.write_bytes(os.urandom(200 * 1024))
    stream_id = daemon.wait_for("stream_finished")[0]["stream_id"]
    chunks = chunk_keys(minio, daemon, stream_id)
    assert len(chunks) == 4
    assert all(not minio.client.get_object_tags(daemon.bucket, key) for key in chunks)
    assert not daemon.find("upload_retry"), "the tags were dropped, not the chunk retried"
    assert cli(daemon, "verify", stream_id).returncode == 0
