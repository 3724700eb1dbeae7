"""The admin commands against a real checkpoint store and a real MinIO."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import GrowingFile, cli, port_of, wait_until

from streamer import config
from streamer.checkpoint import CheckpointStore

pytestmark = pytest.mark.integration

KiB = 1024


@pytest.fixture
def finished(make_daemon):
    daemon = make_daemon().start()
    (daemon.watch / "kept.mp4").write_bytes(b"k" * 200 * KiB)
    stream_id = daemon.wait_for("stream_finished")[0]["stream_id"]
    return daemon, stream_id


def test_verify_finds_a_good_stream_good_and_names_a_bad_chunk(finished, minio):
    daemon, stream_id = finished
    ok = cli(daemon, "verify", stream_id)
    assert ok.returncode == 0 and f"{stream_id}: ok (4 chunks)" in ok.stdout

    key = f"rec/test-host/{stream_id}/chunks/000001"
    minio.client.put_object(daemon.bucket, key, io.BytesIO(b"x" * 65536), 65536)
    minio.client.remove_object(daemon.bucket, f"rec/test-host/{stream_id}/chunks/000002")
    bad = cli(daemon, "verify", "--all")
    assert bad.returncode == 1
    assert f"{stream_id}: chunk 1 in S3 is not the one uploaded: 65536 bytes" in bad.stdout
    assert f"{stream_id}: chunk 2 is missing from S3 (rec/test-host/{stream_id}" in bad.stdout


def test_verify_checks_metadata_and_the_assembled_object_quickly_or_fully(finished, minio):
    daemon, stream_id = finished
    quick = cli(daemon, "verify", stream_id, "--quick", "--json")
    assert quick.returncode == 0, quick.stdout + quick.stderr
    [verdict] = json.loads(quick.stdout)
    assert verdict == {
        "stream_id": stream_id,
        "chunks": 4,
        "problems": [],
        "error": None,
        "ok": True,
    }
    [assembled] = [
        o.object_name
        for o in minio.client.list_objects(daemon.bucket, f"rec/test-host/{stream_id}/")
        if o.object_name.endswith("kept.mp4")
    ]
    minio.client.put_object(daemon.bucket, assembled, io.BytesIO(b"k" * 1024), 1024)
    manifest_key = f"rec/test-host/{stream_id}/metadata.json"
    stored = json.loads(minio.client.get_object(daemon.bucket, manifest_key).read())
    stored["total_size"] += 1
    body = json.dumps(stored).encode()
    minio.client.put_object(daemon.bucket, manifest_key, io.BytesIO(body), len(body))
    bad = cli(daemon, "verify", stream_id, "--quick")
    assert bad.returncode == 1
    assert f"{stream_id}: the assembled object in S3 is not the one made: 1024 bytes" in bad.stdout
    assert f"{stream_id}: metadata.json says total_size is {200 * KiB + 1}" in bad.stdout

    away = cli(daemon, "verify", stream_id, env={"STREAMER_S3_ENDPOINT": "127.0.0.1:9"})
    assert away.returncode == 3, away.stdout + away.stderr
    assert f"{stream_id}: not checked: cannot read it from S3" in away.stdout


def test_verify_compares_with_the_file_still_on_disk(finished):
    daemon, stream_id = finished
    daemon.stop()
    path = daemon.watch / "kept.mp4"
    stat = path.stat()
    with open(path, "r+b") as f:
        f.write(b"K")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime
    result = cli(daemon, "verify", stream_id)
    assert result.returncode == 1
    assert "chunk 0: the file's bytes differ from S3's" in result.stdout


def test_status_shows_progress_of_active_streams_and_the_daemon_s_own_view(make_daemon):
    daemon = make_daemon(stream={"idle_timeout": 30}).start()
    GrowingFile(daemon.watch / "live.mp4", total=300 * KiB, rate=1024 * KiB).start().wait()
    daemon.wait_for("chunk_uploaded", count=4)
    port = {"STREAMER_METRICS_PORT": str(port_of(daemon))}
    result = cli(daemon, "status", env=port)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("daemon:") and "running, 2 of 2 uploaders" in lines[0]
    assert "s3:         reachable" in lines and "checkpoint: writable" in lines
    assert any(line.startswith("uploading:") and "/s" in line for line in lines)
    assert "streams:    1 active" in result.stdout
    [row] = [
        line for line in lines if line.startswith(daemon.find("stream_discovered")[0]["stream_id"])
    ]
    assert "#" in row and "300.0 KiB" in row and " ago" in row
    data = json.loads(cli(daemon, "--json", "status", env=port).stdout)
    assert data["streams"]["active"] == 1 and data["active"][0]["on_disk"] == 300 * KiB
    assert data["daemon"]["running"] is True and data["daemon"]["s3_reachable"] is True
    assert isinstance(data["daemon"]["upload_rate"], float)

    daemon.stop()
    stopped = cli(daemon, "status", env=port)
    assert stopped.returncode == 0 and stopped.stdout.startswith("daemon:     not running")
    assert (
        json.loads(cli(daemon, "status", "--json", env=port).stdout)["daemon"]["running"] is False
    )


def test_list_and_show_print_readable_aligned_values(finished):
    daemon, stream_id = finished
    lines = cli(daemon, "streams", "list").stdout.splitlines()
    assert lines[0].split() == ["STREAM", "STATE", "UPLOADED", "CHUNKS", "LAST", "UPLOAD", "FILE"]
    assert lines[0].index("UPLOADED") + len("UPLOADED") == lines[1].index("KiB") + 3, "aligned"
    assert "200.0 KiB" in lines[1] and " ago" in lines[1]
    shown = cli(daemon, "streams", "show", stream_id).stdout
    assert "total size         200.0 KiB (204,800 bytes)" in shown
    assert "None" not in shown and "False" not in shown and "datetime" not in shown
    assert re.search(r"^completed at +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(", shown, re.M)
    # Options before the command, the configuration from the environment or the flag.
    before = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer",
            "--config",
            str(daemon.config_path),
            "--json",
            "streams",
            "list",
        ],
        capture_output=True,
        text=True,
        env=daemon.env,
    )
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)[0]["total_size"] == 200 * KiB


def test_health_follows_the_configuration_with_metrics_on_or_off(make_daemon):
    daemon = make_daemon().start()
    port = {"STREAMER_METRICS_PORT": str(port_of(daemon))}
    assert cli(daemon, "health", env=port).returncode == 0
    daemon.stop()
    down = cli(daemon, "health", env=port)
    assert down.returncode == 1 and "no answer at http://127.0.0.1:" in down.stderr

    quiet = make_daemon(home="quiet", metrics={"enabled": False}, instance="quiet-host")
    never = cli(quiet, "health")
    assert never.returncode == 1 and "no heartbeat" in never.stderr
    quiet.start()
    wait_until(lambda: cli(quiet, "health").returncode == 0, 10, what="a heartbeat")
    quiet.stop()
    heartbeat = quiet.config_path.parent / "checkpoint" / "heartbeat"
    old = time.time() - 60
    os.utime(heartbeat, (old, old))
    stale = cli(quiet, "health")
    assert stale.returncode == 1 and "last turned 60 s ago" in stale.stderr


def test_forget_asks_first_and_refuses_active_streams(finished, make_daemon):
    daemon, stream_id = finished
    declined = cli(daemon, "streams", "forget", stream_id, stdin="n\n")
    assert declined.returncode == 1
    assert stream_id in cli(daemon, "streams", "list").stdout
    assert cli(daemon, "streams", "forget", stream_id, "--yes").returncode == 0
    assert stream_id not in cli(daemon, "streams", "list").stdout

    (daemon.watch / "growing.mp4").write_bytes(b"g" * 10)
    active = daemon.wait_for("stream_discovered", count=2)[1]["stream_id"]
    refused = cli(daemon, "streams", "forget", active, "--yes")
    assert refused.returncode == 1 and "cancel it first" in refused.stderr


def test_forget_checks_again_after_asking_and_refuses_a_stream_retried_meanwhile(make_daemon):
    daemon = make_daemon().start()
    writer = GrowingFile(daemon.watch / "cam.mp4", total=512 * KiB, rate=256 * KiB).start()
    stream_id = daemon.wait_for("stream_discovered")[0]["stream_id"]
    assert cli(daemon, "streams", "cancel", stream_id).returncode == 0
    daemon.wait_for("stream_finished", stream_id=stream_id, status="cancelled")

    asking = subprocess.Popen(
        [sys.executable, "-m", "streamer", "streams", "forget", stream_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**daemon.env, "STREAMER_CONFIG": str(daemon.config_path)},
    )
    prompt = b""
    while not prompt.endswith(b"[y/N]: "):
        prompt += asking.stdout.read(1) or pytest.fail(f"no prompt, only {prompt!r}")
    assert cli(daemon, "streams", "retry", stream_id).returncode == 0
    _, err = asking.communicate(b"y\n", timeout=60)
    assert asking.returncode == 1
    assert (
        f"stream {stream_id} changed meanwhile: it is active now, no longer cancelled; "
        "nothing was forgotten"
    ) in err.decode()
    daemon.wait_for("stream_resumed", stream_id=stream_id)
    writer.wait()
    daemon.wait_for("stream_finished", stream_id=stream_id, count=2)


# An ftyp box, then no moov box: its stream finishes partial.
UNFINISHED_MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(200 * KiB)


def test_retry_refuses_a_stream_whose_chunks_were_deleted(make_daemon):
    daemon = make_daemon(stream={"keep_chunks": False}).start()
    (daemon.watch / "cut.mp4").write_bytes(UNFINISHED_MP4)
    finished = daemon.wait_for("stream_finished")[0]
    stream_id = finished["stream_id"]
    assert finished["status"] == "partial"
    daemon.wait_for("chunks_deleted", stream_id=stream_id)

    refused = cli(daemon, "streams", "retry", stream_id)
    assert refused.returncode == 1
    assert f"stream {stream_id} cannot be retried: its chunks were deleted from S3" in (
        refused.stderr
    )
    shown = json.loads(cli(daemon, "streams", "show", stream_id, "--json").stdout)
    assert shown["state"] == "partial"
    time.sleep(2.5)  # a rescan has passed
    assert not daemon.find("stream_resumed")


def test_a_stream_forgotten_before_its_uploader_takes_it_up_is_dropped(make_daemon):
    """An uploader handed a stream the checkpoint store no longer has says so and drops
    it, and the file is taken up again as a new stream; no uploader dies. (`streams
    forget` refuses an active stream now; the store is changed here as a forget that
    raced a retry once could.)"""
    daemon = make_daemon().start()
    uploaders = daemon.uploader_pids()
    for pid in uploaders:
        os.kill(pid, signal.SIGSTOP)
    try:
        (daemon.watch / "cam.mp4").write_bytes(b"c" * 100 * KiB)
        forgotten = daemon.wait_for("stream_discovered")[0]["stream_id"]
        settings = config.load(str(daemon.config_path), environ={})
        store = CheckpointStore(settings.checkpoint.path, settings.checkpoint.map_size)
        store.forget_stream(forgotten)
        store.close()
    finally:
        for pid in uploaders:
            os.kill(pid, signal.SIGCONT)

    daemon.wait_for("stream_unknown", stream_id=forgotten)
    again = daemon.wait_for("stream_discovered", count=2)[1]
    assert again["path"] == str(daemon.watch / "cam.mp4")
    finished = daemon.wait_for("stream_finished", stream_id=again["stream_id"])[0]
    assert finished["size"] == 100 * KiB
    assert len(daemon.find("stream_adopted")) == 1 and not daemon.find("uploader_died")


def test_config_check_and_show_keep_secrets(make_daemon, tmp_path):
    daemon = make_daemon()
    shown = cli(daemon, "config", "show")
    assert shown.returncode == 0
    config = json.loads(shown.stdout)
    assert config["s3"]["secret_key"] == "***" and config["stream"]["chunk_size"] == 65536
    assert "streamer-test-secret" not in shown.stdout
    assert cli(daemon, "config", "check").stdout.strip() == "configuration ok"
    bad = tmp_path / "bad.json"
    bad.write_text('{"workers": 0}')
    result = subprocess.run(
        [sys.executable, "-m", "streamer", "config", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "workers" in result.stderr


def test_helpful_errors(make_daemon):
    daemon = make_daemon()
    missing = cli(daemon, "streams", "list")
    assert missing.returncode == 1 and "no checkpoint store at" in missing.stderr
    daemon.start()
    unknown = cli(daemon, "verify", "nope")
    assert unknown.returncode == 2 and "no stream 'nope'" in unknown.stderr
    assert "give a STREAM_ID or --all" in cli(daemon, "verify").stderr


def test_backup_copies_the_store_while_the_daemon_writes(make_daemon, tmp_path):
    daemon = make_daemon(stream={"idle_timeout": 30}).start()
    (daemon.watch / "done.mp4").write_bytes(b"d" * 100 * KiB)
    writer = GrowingFile(daemon.watch / "live.mp4", total=600 * KiB, rate=200 * KiB).start()
    daemon.wait_for("chunk_uploaded", count=3)
    copy = tmp_path / "backup"
    result = cli(daemon, "checkpoint", "backup", str(copy))
    assert result.returncode == 0, result.stderr
    writer.wait()

    from_copy = cli(
        daemon, "streams", "list", "--json", env={"STREAMER_CHECKPOINT_PATH": str(copy)}
    )
    live = {s["stream_id"]: s for s in json.loads(cli(daemon, "streams", "list", "--json").stdout)}
    copied = {s["stream_id"]: s for s in json.loads(from_copy.stdout)}
    assert copied.keys() == live.keys() and len(copied) == 2
    assert all(0 < s["uploaded_bytes"] <= live[i]["uploaded_bytes"] for i, s in copied.items())

    again = cli(daemon, "checkpoint", "backup", str(copy))
    assert again.returncode == 1 and "is not empty" in again.stderr


class NotTheDaemon(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello, not JSON and not Prometheus\n")

    def log_message(self, *args) -> None:
        pass


def test_status_and_health_say_so_when_another_program_answers_on_the_port(finished):
    daemon, _ = finished
    daemon.stop()
    server = http.server.HTTPServer(("127.0.0.1", 0), NotTheDaemon)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    raw = socket.create_server(("127.0.0.1", 0))

    def answer_garbage():
        with contextlib.suppress(OSError):  # until the test closes it
            while True:
                conn, _ = raw.accept()
                conn.sendall(b"garbage\r\n\r\n")
                conn.close()

    threading.Thread(target=answer_garbage, daemon=True).start()
    try:
        for port in (server.server_port, raw.getsockname()[1]):
            env = {"STREAMER_METRICS_PORT": str(port)}
            shown = cli(daemon, "status", env=env)
            assert shown.returncode == 0, shown.stderr
            assert shown.stdout.startswith("daemon:     not running (")
            assert "Traceback" not in shown.stderr
            health = cli(daemon, "health", env=env)
            assert health.returncode == 1 and "Traceback" not in health.stderr
    finally:
        server.shutdown()
        raw.close()
