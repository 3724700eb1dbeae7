"""Faults, for real: a misbehaving network between streamer and MinIO, MinIO itself going
away, wrong credentials, an operator cancelling, and odd files in the directory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import time
import urllib.request

import lmdb
import pytest
from conftest import wait_until
from harness import AT_LEAST_ONE, at_least, cli, get_json, port_of, scrape
from recordings import GrowingFile, sha256_file

from integration.daemons import FAST_RETRIES, assert_exact, others_flow
from integration.filesystems import fill_up
from integration.servers import (
    MinioUser,
    both_servers,
    chunk_store,
    manifest_of,
    object_bytes,
    objects,
)
from streamer import bodies
from streamer.bodies import InMemory
from streamer.config import Config
from streamer.uploader.sending import place_chunk

pytestmark = pytest.mark.integration

KiB = 1024
WINDOW = Config().stream.upload_window


def proxied(make_daemon, proxy, s3=None, **overrides):
    s3 = {"endpoint": proxy.endpoint, **FAST_RETRIES, **(s3 or {})}
    return make_daemon(s3=s3, **overrides)


def test_a_silent_connection_is_given_up_within_the_read_timeout(make_daemon, minio, proxy):
    daemon = proxied(make_daemon, proxy).start()
    writer = GrowingFile(daemon.watch / "silent.mp4", total=1536 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=2)
    proxy.set("blackhole")
    # read_timeout is 2 s; minio-py's own default would have waited 5 minutes.
    retry = daemon.wait_for("upload_retry", timeout=60)[0]
    assert "timed out" in retry["error"].lower() or "timeout" in retry["error"].lower()
    time.sleep(3)
    proxy.set("pass")
    writer.wait()
    daemon.wait_for("stream_finished", timeout=60)
    assert_exact(minio, daemon, stream_id, writer.path)


def test_resets_and_refusals_are_retried_until_s3_is_back(make_daemon, minio, proxy):
    daemon = proxied(make_daemon, proxy).start()
    writer = GrowingFile(daemon.watch / "flaky.mp4", total=1536 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=2)
    proxy.set("reset")
    daemon.wait_for("upload_retry", count=2, timeout=30)
    proxy.set("refuse")
    retries = len(daemon.find("upload_retry"))
    refused = daemon.wait_for("upload_retry", count=retries + 2, timeout=30)
    assert any("refused" in r["error"].lower() for r in refused[retries:])
    proxy.set("pass")
    writer.wait()
    daemon.wait_for("stream_finished", timeout=60)
    manifest = assert_exact(minio, daemon, stream_id, writer.path)
    attempts = [r["attempt"] for r in daemon.find("upload_retry")]
    assert max(attempts) >= 3, "the same step was retried, with backoff, several times"
    counted = scrape(daemon)
    assert counted["streamer_upload_retries_total"] >= len(attempts)
    assert counted["streamer_upload_errors_total{kind=transient}"] >= len(attempts)
    assert manifest["status"] == "invalid"  # synthetic bytes: uploaded exactly all the same


def test_a_throttled_link_still_delivers(make_daemon, minio, proxy):
    proxy.set("throttle", rate=512 * KiB)
    daemon = proxied(make_daemon, proxy).start()
    writer = GrowingFile(daemon.watch / "thin.mp4", total=768 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    writer.wait()
    daemon.wait_for("stream_finished", timeout=60)
    assert_exact(minio, daemon, stream_id, writer.path)


def test_the_bandwidth_cap_holds_for_all_uploaders_together(make_daemon, minio, proxy):
    """Three streams on two uploaders share one cap: the bytes that reach the server over
    ten seconds never exceed it by more than the bucket's burst and the sockets' buffers,
    and every stream moves. (How close to the cap it runs is a speed: `make bench`.)"""
    cap = 2 * 1024 * KiB
    daemon = proxied(
        make_daemon,
        proxy,
        s3={"max_bytes_per_second": cap},
        stream={"chunk_size": 256 * KiB, "idle_timeout": 60},
    )
    for name in ("one.mp4", "two.mp4", "three.mp4"):
        (daemon.watch / name).write_bytes(hashlib.shake_256(name.encode()).digest(10 * 1024 * KiB))
    daemon.start()
    daemon.wait_for("chunk_uploaded", count=3)
    time.sleep(1)

    def chunks_per_stream():
        per_stream = {}
        for event in daemon.find("chunk_uploaded"):
            per_stream[event["stream_id"]] = per_stream.get(event["stream_id"], 0) + 1
        return per_stream

    # The clock is read outside the byte counts: a slow test can only lengthen the window
    # it measures, and so only lower the rate it sees, never raise it.
    started, bytes_before, chunks_before = time.monotonic(), proxy.uploaded, chunks_per_stream()
    time.sleep(10)
    bytes_after, chunks_after, ended = proxy.uploaded, chunks_per_stream(), time.monotonic()
    rate = (bytes_after - bytes_before) / (ended - started)
    assert rate <= 1.1 * cap, f"{rate / cap:.2f} x the cap"
    moved = {s: chunks_after[s] - chunks_before.get(s, 0) for s in chunks_after}
    assert len(moved) == 3 and min(moved.values()) >= 0.2 * sum(moved.values()), moved
    assert scrape(daemon)["streamer_bandwidth_wait_seconds_total"] > 0


@pytest.mark.parametrize("window", [1, 3])
def test_chunks_in_flight_follow_the_window_and_commit_in_order(make_daemon, minio, proxy, window):
    # Slow enough that requests overlap, fast enough that the whole file (assembled at
    # the end) passes within the 2 s read timeout.
    proxy.set("throttle", rate=512 * KiB)
    daemon = proxied(make_daemon, proxy, workers=1, stream={"upload_window": window}).start()
    path = daemon.watch / "window.mp4"
    path.write_bytes(os.urandom(8 * 64 * KiB + 100))
    stream_id = daemon.wait_for("stream_finished", timeout=60)[0]["stream_id"]
    committed = [e["index"] for e in daemon.find("chunk_uploaded", stream_id=stream_id)]
    assert committed == list(range(9)), "committed strictly in chunk order"
    assert_exact(minio, daemon, stream_id, path)
    # The pool opens a connection only when its open ones are all busy.
    if window == 1:
        assert proxy.peak_connections <= 2  # one sender, and the loop's own requests
    else:
        assert proxy.peak_connections >= 3


def test_streams_share_the_window_and_all_finish_in_order(make_daemon, minio, proxy):
    proxy.set("throttle", rate=512 * KiB)
    daemon = proxied(make_daemon, proxy, workers=1, stream={"upload_window": 2}).start()
    paths = [daemon.watch / f"share-{i}.mp4" for i in range(4)]
    for path in paths:
        path.write_bytes(os.urandom(6 * 64 * KiB + 10))
    daemon.wait_for("stream_finished", count=4, timeout=90)
    by_path = {e["path"]: e["stream_id"] for e in daemon.find("stream_discovered")}
    for path in paths:
        stream_id = by_path[str(path)]
        committed = [e["index"] for e in daemon.find("chunk_uploaded", stream_id=stream_id)]
        assert committed == list(range(7))
        assert_exact(minio, daemon, stream_id, path)


@both_servers
def test_the_server_stopped_mid_stream_and_started_again(make_daemon, own_server):
    own_server.client.make_bucket("outage")
    daemon = make_daemon(s3={"endpoint": own_server.endpoint, "bucket": "outage", **FAST_RETRIES})
    daemon.start()
    writer = GrowingFile(daemon.watch / "outage.mp4", total=2048 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=2)
    own_server.stop()
    daemon.wait_for("upload_retry", count=2, timeout=30)
    time.sleep(3)
    own_server.start()
    writer.wait()
    daemon.wait_for("stream_finished", timeout=60)
    daemon.bucket = "outage"
    assert_exact(own_server, daemon, stream_id, writer.path)


def test_wrong_credentials_are_a_clear_slow_error_and_the_secret_stays_secret(make_daemon, minio):
    secret = "Sup3r-Secret-Value-for-the-test"
    daemon = make_daemon(s3={"secret_key": secret, **FAST_RETRIES, "retry_cap": 3}).start()
    (daemon.watch / "denied.mp4").write_bytes(b"z" * 100 * KiB)
    daemon.expect(s3_rejected=at_least(2))
    rejected = daemon.wait_for("s3_rejected", count=2, timeout=30)
    # A HEAD request's 403 has no body: minio-py names it AccessDenied.
    codes = ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")
    assert any(code in rejected[0]["error"] for code in codes)
    assert all(r["delay"] == 3 for r in rejected), "rejections wait the full cap"
    assert "check s3.access_key" in rejected[0]["hint"]
    assert daemon.process.poll() is None
    metrics_port = port_of(daemon)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        exposed = r.read().decode()
    assert 'streamer_upload_errors_total{kind="rejected"}' in exposed
    # The uploaders' bucket checks may be refused before the file is found.
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    outputs = [
        cli(daemon, *args)
        for args in (
            ("streams", "list"),
            ("streams", "list", "--json"),
            ("streams", "show", stream_id, "--json"),
        )
    ]
    assert all(o.returncode == 0 for o in outputs)
    assert daemon.stop() == 0
    everything = [daemon.log_path.read_bytes(), daemon.output().encode(), exposed.encode()]
    everything += [(o.stdout + o.stderr).encode() for o in outputs]
    checkpoint = daemon.config_path.parent / "checkpoint"
    everything += [p.read_bytes() for p in checkpoint.iterdir()]
    for blob in everything:
        assert secret.encode() not in blob


def test_a_chunk_removed_from_s3_keeps_the_stream_from_completing_until_put_back(
    make_daemon, minio
):
    MiB = 1024 * KiB
    daemon = make_daemon(s3=FAST_RETRIES, stream={"chunk_size": 5 * MiB, "idle_timeout": 2}).start()
    path = daemon.watch / "gap.mp4"
    path.write_bytes(os.urandom(11 * MiB))
    stream_id = daemon.wait_for("chunk_uploaded", count=2)[0]["stream_id"]
    key = f"rec/test-host/{stream_id}/chunks/000000"
    minio.client.remove_object(daemon.bucket, key)
    # Its copy into the whole object may be on the way: it finds nothing to copy either.
    daemon.expect(s3_rejected=at_least(2), part_copy_failed=at_least(0))
    rejected = daemon.wait_for("s3_rejected", count=2, timeout=30)
    assert all(r["stream_id"] == stream_id for r in rejected)
    assert all(f"chunk 0 is missing from S3 ({key})" in r["error"] for r in rejected)
    assert "put the chunk back" in rejected[0]["hint"]
    assert not daemon.find("stream_finished"), "never finished with a hole in it"
    record = json.loads(cli(daemon, "streams", "show", stream_id, "--json").stdout)["record"]
    uploads = [u.upload_id for u in minio.client._list_multipart_uploads(daemon.bucket).uploads]
    assert uploads == [record["assembly"]["upload_id"]], "only the stream's own upload is open"

    first = path.read_bytes()[: 5 * MiB]
    minio.client.put_object(daemon.bucket, key, io.BytesIO(first), len(first))
    daemon.wait_for("stream_finished", timeout=30)
    manifest = manifest_of(minio.client, daemon.bucket, stream_id)
    assert manifest["status"] == "invalid" and manifest["sha256"] == sha256_file(path)
    whole = object_bytes(minio.client, daemon.bucket, manifest["assembled"]["key"])
    assert hashlib.sha256(whole).hexdigest() == manifest["sha256"]
    assert not minio.client._list_multipart_uploads(daemon.bucket).uploads


def test_a_refused_metadata_json_parks_its_stream_and_the_others_flow(
    make_daemon, minio, bucket, tmp_path
):
    """S3 refuses one stream's metadata.json (a bucket policy here; a 503 or a restart
    elsewhere) at the last step of its completion: that stream waits and tries again, the
    uploader lives on, another stream on it finishes, and the first finishes once S3
    takes the object."""
    user = MinioUser(minio, bucket, tmp_path)
    keys = {"access_key": user.access_key, "secret_key": user.secret_key}
    daemon = make_daemon(workers=1, s3={**keys, **FAST_RETRIES}).start()
    user.refuse_puts("rec/test-host/refused-*/metadata.json")
    daemon.expect(s3_rejected=at_least(2))
    refused = daemon.watch / "refused.mp4"
    refused.write_bytes(hashlib.shake_256(b"refused").digest(100 * KiB))
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    rejections = daemon.wait_for("s3_rejected", count=2, stream_id=stream_id)
    assert all("AccessDenied" in r["error"] for r in rejections)
    other = hashlib.shake_256(b"other").digest(100 * KiB)
    others_flow(minio, daemon, stream_id, daemon.watch / "other.mp4", other)

    user.refuse_puts()
    daemon.wait_for("stream_finished", stream_id=stream_id, timeout=30)
    assert_exact(minio, daemon, stream_id, refused)
    assert len(daemon.find("uploader_spawned")) == 1, "the uploader lived through it"


def test_a_refused_stream_is_parked_then_stuck_and_its_object_made_once(
    make_daemon, minio, bucket, tmp_path
):
    """A metadata.json S3 refuses for good: the stream is `parked` with why (it will not
    heal by itself) and when it is due, then `stuck` once it has failed for
    stream.stuck_after; each retry uses the whole object already proven, never copies it
    again; once S3 takes it, the stream resumes and finishes."""
    user = MinioUser(minio, bucket, tmp_path)
    keys = {"access_key": user.access_key, "secret_key": user.secret_key}
    daemon = make_daemon(
        workers=1,
        s3={**keys, "retry_base": 0.2, "retry_cap": 2},
        stream={"stuck_after": 8},
    ).start()
    user.refuse_puts("rec/test-host/refused-*/metadata.json")
    refused = daemon.watch / "refused.mp4"
    refused.write_bytes(hashlib.shake_256(b"refused").digest(200 * KiB))
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("s3_rejected", stream_id=stream_id)

    port = {"STREAMER_METRICS_PORT": str(port_of(daemon))}

    def parked():
        listed = json.loads(cli(daemon, "streams", "list", "--json", env=port).stdout)
        return next((s for s in listed if s["state"] == "parked"), None)

    shown = wait_until(parked, 10, what="the stream listed as parked")
    assert shown["stream_id"] == stream_id and not shown["heals"]
    assert "AccessDenied" in shown["reason"] and "will not heal by itself" in shown["reason"]
    parked_gauge = "streamer_streams{state=parked}"
    wait_until(lambda: scrape(daemon)[parked_gauge] == 1, 10, what="the parked gauge")

    stuck = daemon.wait_for("stream_stuck", stream_id=stream_id, timeout=30)[0]
    assert stuck["failing_for"] >= 8 and "AccessDenied" in stuck["reason"]
    status, ready = get_json(daemon, "/readyz")
    assert status == 503 and [s["stream_id"] for s in ready["checks"]["streams"]["stuck"]] == [
        stream_id
    ]
    assert scrape(daemon)["streamer_streams{state=stuck}"] == 1
    listed = cli(daemon, "streams", "list", "--state", "stuck", env=port)
    assert stream_id in listed.stdout and "AccessDenied" in listed.stdout
    shown = cli(daemon, "status", env=port).stdout
    assert "1 stuck" in shown and f"{stream_id} stuck: S3Error" in shown
    rejections = len(daemon.find("s3_rejected", stream_id=stream_id))
    assert rejections >= 3
    assert len(daemon.find("stream_assembled", stream_id=stream_id)) == 1
    assert len(daemon.find("assembled_object_reused", stream_id=stream_id)) >= rejections - 1

    user.refuse_puts()
    daemon.wait_for("stream_finished", stream_id=stream_id, timeout=30)
    assert_exact(minio, daemon, stream_id, refused)
    assert len(daemon.find("stream_assembled", stream_id=stream_id)) == 1
    wait_until(lambda: get_json(daemon, "/readyz")[0] == 200, 5, what="ready again")
    assert scrape(daemon)["streamer_streams{state=stuck}"] == 0
    daemon.expect(stream_stuck=1, s3_rejected=range(rejections, 1000))


def test_a_stream_parked_by_an_uploader_that_died_is_not_stuck_once_it_flows_again(
    make_daemon, minio, bucket, tmp_path
):
    """Its new owner never saw it fail: the first chunk it commits tells the supervisor
    the stream is parked no longer, so it never turns stuck while it flows."""
    user = MinioUser(minio, bucket, tmp_path)
    keys = {"access_key": user.access_key, "secret_key": user.secret_key}
    daemon = make_daemon(
        workers=1, s3={**keys, "retry_base": 0.2, "retry_cap": 1}, stream={"stuck_after": 12}
    )
    daemon.expect(uploader_died=1, s3_rejected=AT_LEAST_ONE).start()
    user.refuse_puts("rec/test-host/flowing-*/chunks/*")
    writer = GrowingFile(daemon.watch / "flowing.mp4", total=2048 * KiB, rate=64 * KiB).start()
    stream_id = daemon.wait_for("s3_rejected")[0]["stream_id"]
    wait_until(
        lambda: get_json(daemon, "/readyz")[1]["checks"]["streams"]["parked"], 10, what="parked"
    )
    [uploader] = daemon.uploader_pids()
    os.kill(uploader, signal.SIGKILL)
    daemon.wait_for("uploader_spawned", count=2)
    user.refuse_puts()
    daemon.wait_for("chunk_uploaded", stream_id=stream_id, timeout=30)
    time.sleep(14)  # past stream.stuck_after since its first failure, while it flows
    assert not writer.done.is_set(), "still recording"
    assert not daemon.find("stream_stuck")
    streams = get_json(daemon, "/readyz")[1]["checks"]["streams"]
    assert streams == {"ok": True, "parked": [], "stuck": []}
    writer.wait()


def test_a_missing_bucket_that_may_not_be_created_is_reported(make_daemon, minio):
    daemon = make_daemon(
        s3={"bucket": "no-such-bucket-here", "create_bucket": False, **FAST_RETRIES}
    ).start()
    (daemon.watch / "nowhere.mp4").write_bytes(b"n" * 10 * KiB)
    daemon.expect(s3_rejected=AT_LEAST_ONE)
    rejected = daemon.wait_for("s3_rejected", timeout=30)[0]
    assert "does not exist and s3.create_bucket is off" in rejected["error"]
    assert not minio.client.bucket_exists("no-such-bucket-here")


def test_an_operator_cancels_a_stream_and_retries_it(make_daemon, minio):
    daemon = make_daemon().start()
    writer = GrowingFile(daemon.watch / "cancel.mp4", total=3072 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=2)
    result = cli(daemon, "streams", "cancel", stream_id)
    assert result.returncode == 0, result.stderr
    event = daemon.wait_for("stream_finished", timeout=30)[0]
    assert event["status"] == "cancelled"
    uploaded = len(daemon.find("chunk_uploaded"))
    manifest = manifest_of(minio.client, daemon.bucket, stream_id)
    assert manifest["status_reason"] == "cancelled by an operator"
    assert manifest["chunk_count"] == uploaded

    time.sleep(3)  # the file keeps growing: it is not picked up again
    assert len(daemon.find("chunk_uploaded")) == uploaded
    assert len(daemon.find("stream_discovered")) == 1
    assert cli(daemon, "streams", "cancel", stream_id).returncode == 1

    chunks = f"rec/test-host/{stream_id}/chunks/"
    before = {k: v for k, v in objects(minio, daemon.bucket, stream_id).items() if chunks in k}
    assert cli(daemon, "streams", "retry", stream_id).returncode == 0
    writer.wait()
    daemon.wait_for("stream_finished", count=2, timeout=60)
    assert_exact(minio, daemon, stream_id, writer.path)
    uploaded_indices = [e["index"] for e in daemon.find("chunk_uploaded")]
    assert len(uploaded_indices) == len(set(uploaded_indices)), "retry resumed, not restarted"
    after = objects(minio, daemon.bucket, stream_id)
    assert {k: after[k] for k in before} == before, "no chunk of the cancelled run sent again"


def test_a_cancelled_stream_is_never_taken_up_again_while_it_is_concluded(
    make_daemon, minio, proxy
):
    """One owner per stream: while the cancelled stream's conclusion waits for S3 (PUTs
    refused), its recorder keeps writing; the stream is not rediscovered, resumed or
    assigned again, and nothing is uploaded for it after its cancelled finish."""
    daemon = proxied(make_daemon, proxy).start()
    writer = GrowingFile(daemon.watch / "busy.mp4", total=3072 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    daemon.wait_for("chunk_uploaded", count=2)
    proxy.set("refuse_puts")
    assert cli(daemon, "streams", "cancel", stream_id).returncode == 0
    daemon.wait_for("stream_lost", stream_id=stream_id, status="cancelled")
    grown = writer.written
    wait_until(lambda: writer.written > grown + 256 * KiB, 10, what="the recorder to go on")
    daemon.wait_for("upload_retry", count=2)  # the conclusion waits for S3
    proxy.set("pass")
    finished = daemon.wait_for("stream_finished", stream_id=stream_id)[0]
    assert finished["status"] == "cancelled"
    writer.wait()
    time.sleep(2.5)  # a rescan has passed
    assert len(daemon.find("stream_adopted", stream_id=stream_id)) == 1
    assert not daemon.find("stream_resumed") and len(daemon.find("stream_discovered")) == 1
    events = daemon.read_events()
    after = events[events.index(finished) :]
    assert not [e for e in after if e.get("event") == "chunk_uploaded"]
    manifest = manifest_of(minio.client, daemon.bucket, stream_id)
    assert manifest["chunk_count"] == len(daemon.find("chunk_uploaded", stream_id=stream_id))


def test_streams_list_and_show(make_daemon, minio):
    daemon = make_daemon().start()
    (daemon.watch / "listed.mp4").write_bytes(b"l" * 70 * KiB)
    stream_id = daemon.wait_for("stream_finished")[0]["stream_id"]
    listing = cli(daemon, "streams", "list", "--json")
    rows = json.loads(listing.stdout)
    assert [(r["stream_id"], r["state"], r["uploaded_bytes"]) for r in rows] == [
        (stream_id, "invalid", 70 * KiB)
    ]
    shown = cli(daemon, "streams", "show", stream_id)
    assert shown.returncode == 0 and "65,536" in shown.stdout and stream_id in shown.stdout
    missing = cli(daemon, "streams", "show", "nope")
    assert missing.returncode == 1 and "no stream 'nope'" in missing.stderr


# Odd files in the directory: each has a defined outcome, and the other streams go on.


def with_a_good_stream(daemon):
    good = GrowingFile(daemon.watch / "good.mp4", total=256 * KiB, rate=512 * KiB).start()
    return good


def finished_stream(daemon, name_prefix: str) -> dict:
    return wait_until(
        lambda: [
            e for e in daemon.find("stream_finished") if e["stream_id"].startswith(name_prefix)
        ],
        30,
        what=f"{name_prefix}* to finish",
    )[0]


def good_stream_finished(minio, daemon, good) -> None:
    good.wait()
    assert_exact(minio, daemon, finished_stream(daemon, "good-")["stream_id"], good.path)


def test_a_zero_byte_file_is_finished_as_invalid(make_daemon, minio):
    daemon = make_daemon().start()
    (daemon.watch / "empty.mp4").touch()
    good = with_a_good_stream(daemon)
    event = finished_stream(daemon, "empty-")
    manifest = manifest_of(minio.client, daemon.bucket, event["stream_id"])
    assert (manifest["status"], manifest["total_size"], manifest["chunks"]) == ("invalid", 0, [])
    assert manifest["sha256"] == hashlib.sha256(b"").hexdigest()
    good_stream_finished(minio, daemon, good)


def test_directories_and_symlinks_named_like_recordings_are_ignored(make_daemon, minio, tmp_path):
    daemon = make_daemon().start()
    (daemon.watch / "folder.mp4").mkdir()
    target = tmp_path / "outside.mp4"
    target.write_bytes(b"outside the watch directory" * 100)
    (daemon.watch / "link.mp4").symlink_to(target)
    good = with_a_good_stream(daemon)
    good_stream_finished(minio, daemon, good)
    time.sleep(2.5)  # a rescan has passed
    assert [e["path"] for e in daemon.find("stream_discovered")] == [str(good.path)]


def test_an_unreadable_file_is_reported_and_uploaded_once_readable(make_daemon, minio):
    # Without CAP_DAC_OVERRIDE, root meets file permissions like any user.
    daemon = make_daemon(
        wrapper=["setpriv", "--bounding-set", "-dac_override,-dac_read_search"],
        s3=FAST_RETRIES,
    ).start()
    locked = daemon.watch / "locked.mp4"
    locked.write_bytes(b"k" * 100 * KiB)
    locked.chmod(0)
    good = with_a_good_stream(daemon)
    retry = daemon.wait_for("upload_retry", timeout=30)[0]
    assert "Permission denied" in retry["error"]
    good_stream_finished(minio, daemon, good)
    locked.chmod(0o644)
    event = finished_stream(daemon, "locked-")
    assert_exact(minio, daemon, event["stream_id"], locked)


def test_a_file_created_and_removed_at_once_changes_nothing(make_daemon, minio):
    daemon = make_daemon().start()
    for n in range(20):
        flash = daemon.watch / f"flash-{n}.mp4"
        flash.write_bytes(b"f" * 1000)
        flash.unlink()
    good = with_a_good_stream(daemon)
    good_stream_finished(minio, daemon, good)
    time.sleep(2.5)  # a rescan has passed: no flash file exists any more to be found

    def flashes(event: str) -> list[dict]:
        return [e for e in daemon.find(event) if e["stream_id"].startswith("flash-")]

    # A flash file seen before it vanished is finished as partial, with nothing of it in
    # S3; one never seen leaves no trace. Either way no error, and nothing is uploaded.
    discovered = {e["stream_id"] for e in flashes("stream_discovered")}

    def all_finished():
        statuses = {e["stream_id"]: e["status"] for e in flashes("stream_finished")}
        return [statuses] if statuses.keys() >= discovered else None

    [statuses] = wait_until(all_finished, 30, what="every flash stream seen to finish")
    assert statuses == dict.fromkeys(discovered, "partial")
    assert not flashes("chunk_uploaded")
    assert not daemon.find("file_failed") and not daemon.find("scan_failed")


@pytest.mark.parametrize(
    "name",
    [
        "with spaces.mp4",
        "caméra-ünïcode.mp4",
        "new\nline.mp4",
        "..dots..mp4",
        ".hidden.mp4",
        "x" * 251 + ".mp4",
    ],
)
def test_odd_names_get_safe_keys_inside_the_prefix(make_daemon, minio, name):
    daemon = make_daemon().start()
    path = daemon.watch / name
    path.write_bytes(hashlib.shake_256(name.encode()).digest(100 * KiB))
    event = daemon.wait_for("stream_finished", timeout=30)[0]
    manifest = assert_exact(minio, daemon, event["stream_id"], path)
    assert manifest["source"]["name"] == name
    keys = [c["key"] for c in manifest["chunks"]] + [manifest["assembled"]["key"]]
    for key in keys:
        assert key.startswith(f"rec/test-host/{event['stream_id']}/")
        assert all(c.isascii() and (c.isalnum() or c in "._-/") for c in key), key
        assert "/../" not in key and "/./" not in key and "//" not in key


def test_an_inotify_overflow_is_caught_by_a_rescan(make_daemon, minio):
    limit = "/proc/sys/fs/inotify/max_queued_events"
    with open(limit) as f:
        saved = f.read().strip()
    with open(limit, "w") as f:
        f.write("16")  # read when the daemon's inotify instance is made
    try:
        daemon = make_daemon(watch={"rescan_interval": 3600}).start()
    finally:
        with open(limit, "w") as f:
            f.write(saved)
    os.kill(daemon.process.pid, 19)  # SIGSTOP: let events pile up unread
    try:
        for n in range(60):
            (daemon.watch / f"burst-{n:02d}.mp4").write_bytes(b"b" * (1000 + n))
    finally:
        os.kill(daemon.process.pid, 18)  # SIGCONT
    daemon.wait_for("inotify_overflow", timeout=10)
    daemon.wait_for("stream_finished", count=60, timeout=90)
    assert len({e["stream_id"] for e in daemon.find("stream_finished")}) == 60


def test_ten_thousand_files_in_the_directory(make_daemon, minio):
    daemon = make_daemon(stream={"assemble": False}, watch={"rescan_interval": 5})
    for n in range(10_000):
        (daemon.watch / f"many-{n:05d}.mp4").write_bytes(b"%05d" % n)
    started = time.monotonic()
    daemon.start(timeout=300)  # its first scan discovers all of them
    daemon.wait_for("stream_finished", count=10_000, timeout=600)
    elapsed = time.monotonic() - started
    finished = daemon.find("stream_finished")
    assert len({e["stream_id"] for e in finished}) == 10_000
    listed = sum(1 for _ in minio.client.list_objects(daemon.bucket, prefix="rec/", recursive=True))
    assert listed == 20_001  # one chunk and one metadata.json each, and the instance's claim
    print(f"10,000 files uploaded in {elapsed:.0f} s")


def _hold_the_store(path: str, read: bool) -> None:
    from streamer.checkpoint import CheckpointStore

    store = CheckpointStore(path, 1 << 20)
    txn = store._env.begin() if read else None  # a reader slot, held until the process dies
    if txn is not None:
        txn.get(b"anything")
    time.sleep(120)


def test_stale_lmdb_readers_of_killed_processes_are_cleared_at_start(make_daemon):
    import multiprocessing

    daemon = make_daemon()
    checkpoint = str(daemon.config_path.parent / "checkpoint")
    fork = multiprocessing.get_context("fork")
    # While any process has the environment open, a dead reader's slot stays taken.
    keeper = fork.Process(target=_hold_the_store, args=(checkpoint, False))
    reader = fork.Process(target=_hold_the_store, args=(checkpoint, True))
    keeper.start()
    reader.start()
    try:
        time.sleep(1)
        os.kill(reader.pid, signal.SIGKILL)
        reader.join()
        daemon.start()
        cleared = daemon.wait_for("stale_readers_cleared")[0]
        assert cleared["count"] >= 1
    finally:
        keeper.kill()
        keeper.join()


def test_a_body_damaged_on_the_way_is_refused_and_sent_again(make_daemon, minio, proxy):
    daemon = proxied(make_daemon, proxy).start()
    writer = GrowingFile(daemon.watch / "damaged.mp4", total=512 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("chunk_uploaded")[0]["stream_id"]
    proxy.damage_puts(1)
    # S3 computes the damaged piece's sha256 and refuses it: it is not as signed.
    refused = daemon.wait_for("upload_retry", stream_id=stream_id)[0]
    assert "PiecedBodyRefused" in refused["error"] and "malformed chunked" in refused["error"]
    damaged_key = refused["error"].split("resource: /", 1)[1].split(",", 1)[0]
    writer.wait()
    daemon.wait_for("stream_finished", timeout=60)
    assert proxy.damaged == 1 and len(daemon.find("upload_retry")) == 1
    assert not daemon.find("trailer_refused"), "one damaged body is not a server's refusal"
    stored = object_bytes(minio.client, daemon.bucket, damaged_key.split("/", 1)[1])
    index = int(damaged_key.rsplit("/", 1)[1])
    assert stored == writer.data[index * 64 * KiB : (index + 1) * 64 * KiB], "sent again whole"
    assert_exact(minio, daemon, stream_id, writer.path)
    committed = [e["index"] for e in daemon.find("chunk_uploaded", stream_id=stream_id)]
    assert committed == list(range(len(committed))), "each chunk committed once, in order"


def test_a_full_checkpoint_filesystem_is_a_state_not_a_crash(make_daemon, minio, tmpfs):
    """The checkpoint store's filesystem fills up mid-recording, and is full again at the
    next start: no process dies, /readyz and the metric say so, nothing runs ahead of what
    can be recorded, SIGTERM stops it, and every recording finishes exact once there is
    room again."""
    disk = tmpfs("checkpoint", "4m")
    daemon = make_daemon(checkpoint={"path": str(disk / "store")}, workers=1).start()
    (daemon.watch / "before.mp4").write_bytes(hashlib.shake_256(b"before").digest(300 * KiB))
    daemon.wait_for("stream_finished")
    growing = GrowingFile(daemon.watch / "growing.mp4", total=4096 * KiB, rate=512 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered", count=2)[1]["stream_id"]
    daemon.wait_for("chunk_uploaded", stream_id=stream_id)
    fill_up(disk / "filler")
    daemon.expect("checkpoint_unwritable")  # once, until it is writable again
    daemon.wait_for("checkpoint_unwritable")
    status, body = get_json(daemon, "/readyz")
    assert status == 503 and body["checks"]["checkpoint"]["ok"] is False
    # ENOSPC, or an I/O error where LMDB's write was cut short: either way it says why.
    assert "its filesystem is full" in body["checks"]["checkpoint"]["error"]
    assert scrape(daemon)["streamer_checkpoint_writable"] == 0
    growing.wait()
    time.sleep(3)  # idle: finishing waits for what cannot be recorded
    assert not daemon.find("stream_finished", stream_id=stream_id)
    committed = len(daemon.find("chunk_uploaded", stream_id=stream_id))  # logged once recorded
    in_s3 = [key for key in objects(minio, daemon.bucket, stream_id) if "/chunks/" in key]
    assert committed < len(in_s3) <= committed + WINDOW, "no further ahead than the window"
    assert daemon.stop() == 0, "SIGTERM stops it while the store is full"

    daemon.expect("checkpoint_unwritable").start()  # the filesystem still full
    (daemon.watch / "while-full.mp4").write_bytes(hashlib.shake_256(b"full").digest(200 * KiB))
    daemon.wait_for("checkpoint_unwritable", this_run=True)
    assert len(daemon.find("uploader_spawned")) == 2, "no uploader died"
    os.unlink(disk / "filler")
    daemon.wait_for("checkpoint_writable", this_run=True)
    for path in ("growing.mp4", "while-full.mp4"):
        daemon.wait_for("stream_finished", sha256=sha256_file(daemon.watch / path))
    assert not daemon.find("supervisor_crashed") and not daemon.find("uploader_died")


def test_an_unreadable_stream_record_is_passed_over_and_the_rest_runs(make_daemon, minio):
    """A record in the checkpoint store that does not decode (damaged, or written by a
    newer version): logged once with its id at start, left as it is, and the daemon runs."""
    daemon = make_daemon().start()
    daemon.stop()
    env = lmdb.open(str(daemon.config_path.parent / "checkpoint"), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"damaged-1", b"\xc1 not msgpack", db=env.open_db(b"streams", txn=txn))
        txn.put(b"damaged-1", b"", db=env.open_db(b"active", txn=txn))
    env.close()

    daemon.expect("stream_unreadable").start()
    [unreadable] = daemon.wait_for("stream_unreadable", this_run=True)
    assert unreadable["stream_id"] == "damaged-1" and "cannot be read" in unreadable["error"]
    fresh = daemon.watch / "fresh.mp4"
    fresh.write_bytes(hashlib.shake_256(b"fresh").digest(200 * KiB))
    finished = daemon.wait_for("stream_finished", this_run=True)[0]
    assert_exact(minio, daemon, finished["stream_id"], fresh)
    time.sleep(2.5)  # a rescan has passed: reported once
    assert len(daemon.find("stream_unreadable")) == 1


def test_one_instance_name_has_one_owner(make_daemon, minio):
    """Two hosts, two checkpoint stores, one instance name in one bucket: the first claims
    it; the second refuses to start (exit 3), saying how to resolve it, and writes nothing."""
    first = make_daemon(home="first").start()
    (first.watch / "mine.mp4").write_bytes(hashlib.shake_256(b"mine").digest(100 * KiB))
    first.wait_for("stream_finished")
    claim = object_bytes(minio.client, first.bucket, "rec/test-host/.owner").decode()
    owner = json.loads(claim)["store"]

    second = make_daemon(home="second")
    # Each uploader says so, unless the halt that the first one brings comes first.
    second.expect(instance_taken=range(1, 3), uploader_died=1, halting=1, exit_codes=(3,))
    (second.watch / "theirs.mp4").write_bytes(b"t" * 100 * KiB)
    second.start(wait=False)
    assert second.process.wait(30) == 3
    taken = second.find("instance_taken")[0]  # each uploader says so
    assert (
        owner in taken["error"] and "give this host an instance name of its own" in taken["error"]
    )
    assert "delete s3://" in taken["error"]
    assert not second.find("chunk_uploaded")
    assert object_bytes(minio.client, first.bucket, "rec/test-host/.owner").decode() == claim


@both_servers
def test_a_chunk_put_never_overwrites_an_object_it_did_not_write(server, bucket):
    """Where the server takes a conditional PUT (If-None-Match), an object at the key goes
    to the next revision instead of being written over, even without a probe."""
    s3 = chunk_store(server, bucket)
    foreign = b"written by someone else"
    key = s3.layout.chunk_key("s", 0)
    server.client.put_object(bucket, key, io.BytesIO(foreign), len(foreign))
    data = b"the chunk's bytes"
    body = InMemory(data)
    sums = bodies.digests_of(s3.chunk_algorithms, body)
    revision, _, _, _, seconds = place_chunk(s3, "s", 0, 0, body, sums, False)
    assert (revision, seconds is not None) == (1, True)
    assert object_bytes(server.client, bucket, key) == foreign
    assert object_bytes(server.client, bucket, s3.layout.chunk_key("s", 0, 1)) == data
