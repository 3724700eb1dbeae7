"""The admin commands against a real checkpoint store and a real MinIO."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import pytest
from conftest import alive, clean_env, free_port, wait_until
from harness import cli, port_of
from recordings import GrowingFile, record

from integration.servers import binary
from streamer import config
from streamer.checkpoint import CheckpointStore
from streamer.health import HEALTHY_WITHIN
from streamer.naming import host_instance

pytestmark = pytest.mark.integration

KiB = 1024
ROOT = Path(__file__).resolve().parents[2]


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
    assert any(line.startswith("upload:") and "/s" in line for line in lines)
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
    assert f"config: {daemon.config_path} (--config)\n" in shown.stderr
    checked = cli(daemon, "config", "check")
    assert checked.stdout == "configuration ok\n"
    assert checked.stderr == f"config: {daemon.config_path} (--config)\n"
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
    assert f"config: {daemon.config_path} (--config)" in missing.stderr
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


def processes_naming(path: Path) -> dict[int, str]:
    """The running processes whose command line names something under `path`."""
    found = {}
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and alive(int(entry)):
                line = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if str(path) in line:
                    found[int(entry)] = line
    return found


MAKE_RUN = ["make", "-o", ".venv/.installed", "run"]  # -o: the checkout's virtualenv as it is
RUN_LOCAL = [".venv/bin/python", "ops/run_local.py"]  # what `make run` runs


class LocalRun:
    """`make run`, or the script it runs, in a copy of the files it uses (with the checkout's
    virtualenv, never reinstalled by a test), on free ports, for a user of its own."""

    def __init__(self, base: Path):
        self.base = base
        self.project = base / "project"
        (self.project / "ops").mkdir(parents=True)
        for name in ("Makefile", "setup.cfg", "pyproject.toml", "constraints.txt"):
            shutil.copy2(ROOT / name, self.project / name)  # older than .venv/.installed
        shutil.copy2(ROOT / "ops" / "run_local.py", self.project / "ops")
        (self.project / ".venv").symlink_to(ROOT / ".venv")
        self.user = {"HOME": str(base / "home"), "XDG_CONFIG_HOME": str(base / "xdg")}
        self.config_file = base / "xdg" / "streamer" / "config.json"
        # The metrics port too, in every terminal: 9108 may be another test's.
        self.metrics = {"STREAMER_METRICS_PORT": str(free_port())}
        self.minio_port = free_port()
        self.env = {
            **self.user,
            **self.metrics,
            "MINIO_PORT": str(self.minio_port),
            "MINIO_CONSOLE_PORT": str(free_port()),
            "MINIO_BIN": binary("MINIO_BIN", "minio"),
            "STREAMER_STREAM_IDLE_TIMEOUT": "2",
        }
        self.output = base / "run.out"
        self.process: subprocess.Popen | None = None

    def start(self, command: list[str], **env: str) -> LocalRun:
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                command,
                cwd=self.project,
                env=clean_env({**self.env, **env}),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def said(self) -> str:
        return self.output.read_text()

    def wait_for(self, text: str) -> None:
        wait_until(
            lambda: self.process.poll() is not None or text in self.said(), 60, what=repr(text)
        )
        assert self.process.poll() is None, self.said()

    def exit_code(self) -> int:
        return self.process.wait(timeout=60)

    def clean_up(self) -> None:
        for pid in processes_naming(self.base):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def local_run(tmp_path):
    run = LocalRun(tmp_path)
    yield run
    run.clean_up()


def test_make_run_serves_minio_and_streamer_every_command_finds_and_ctrl_c_stops_both(
    local_run, ffmpeg
):
    """`make run` as the README has it: a recording dropped into ./input is in MinIO, the
    admin commands of a second terminal find the config file it wrote, and Ctrl-C stops
    streamer and MinIO."""
    run = local_run.start(MAKE_RUN)
    run.wait_for("event=started")
    said = run.said()
    assert f"config     {run.config_file} (written now by `streamer config init`" in said
    assert f"watching   {run.project / 'input'} (*.mp4)" in said
    assert f"to s3://recordings/streams/{host_instance()}/" in said
    assert f"at http://127.0.0.1:{run.minio_port}\n" in said
    recording = run.project / "input" / "cam1.mp4"
    assert record(ffmpeg, recording, 2, "plain", live=False).wait() == 0
    run.wait_for("event=stream_finished")

    def second_terminal(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "streamer"), *args],
            cwd=run.base,
            env=clean_env({**run.user, **run.metrics}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result

    assert json.loads(second_terminal("status", "--json").stdout)["daemon"]["running"]
    [stream] = json.loads(second_terminal("streams", "list", "--json").stdout)
    assert stream["state"] == "complete"
    second_terminal("verify", stream["stream_id"])
    [remote] = json.loads(second_terminal("remote", "list", "--json").stdout)
    assert remote["stream_id"] == stream["stream_id"]
    second_terminal("restore", stream["stream_id"], "-o", str(run.base / "back.mp4"))
    assert (run.base / "back.mp4").read_bytes() == recording.read_bytes()

    running = processes_naming(run.base)
    assert any(" server " in line for line in running.values()), running
    assert any(" run --config " in line for line in running.values()), running
    os.killpg(run.process.pid, signal.SIGINT)  # Ctrl-C in make's terminal
    run.exit_code()
    assert not [pid for pid in running if alive(pid)]
    said = run.said()
    assert re.search(r"event=stopped .*exit_code=0", said), said[-3000:]
    assert "level=error" not in said and "Traceback" not in said


def test_run_local_stops_both_on_sigterm_and_keeps_the_config_file_it_finds(local_run):
    run = local_run.start(RUN_LOCAL)
    run.wait_for("event=started")
    written = run.config_file.read_bytes()
    running = processes_naming(run.base)
    run.process.terminate()  # as a service manager would: to it alone
    assert run.exit_code() == 0
    assert not [pid for pid in running if alive(pid)]

    run.start(RUN_LOCAL).wait_for("event=started")
    assert f"config     {run.config_file} (yours: every streamer command reads it)" in run.said()
    assert run.config_file.read_bytes() == written
    run.process.terminate()
    assert run.exit_code() == 0
    assert "level=error" not in run.said() and "Traceback" not in run.said()


def test_run_local_says_why_it_cannot_start_and_leaves_nothing_running(local_run):
    run = local_run
    run.config_file.parent.mkdir(parents=True)
    run.config_file.write_text(json.dumps({"watch": {"patern": "*.mov"}}))
    assert run.start(RUN_LOCAL).exit_code() == 2
    assert run.said() == (
        f"streamer: invalid configuration: watch.patern: unknown setting in {run.config_file}; "
        "did you mean watch.pattern?\n"
    )
    run.config_file.unlink()
    blocked = run.base / "a-file"
    blocked.touch()
    assert run.start(RUN_LOCAL, XDG_CONFIG_HOME=str(blocked)).exit_code() == 1
    assert run.said() == (f"streamer: cannot make the folder {blocked}/streamer: Not a directory\n")

    with socket.create_server(("127.0.0.1", run.minio_port)):  # the port is taken
        assert run.start(RUN_LOCAL).exit_code() == 1
    assert f"MinIO did not start: see {run.project}/.cache/run/minio.log" in run.said()
    assert "port is already in use" in run.said(), "what MinIO said"

    # Ctrl-C while MinIO starts: a stand-in that never answers, so the press comes then.
    never = run.base / "never-ready"
    never.write_text("#!/bin/sh\nwhile :; do sleep 1; done\n")
    never.chmod(0o755)
    run.start(RUN_LOCAL, MINIO_BIN=str(never)).wait_for("")
    wait_until(lambda: processes_naming(run.project / ".cache"), 30, what="the stand-in")
    os.killpg(run.process.pid, signal.SIGINT)
    assert run.exit_code() == 130
    assert not processes_naming(run.base)


def streamer(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`streamer` as a user runs it, in an 80-column terminal, with no configuration of
    the developer's."""
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env({"COLUMNS": "80", **(env or {})}),
    )


def test_help_lists_every_command_on_one_whole_line():
    from streamer.cli import main

    groups = {(): main} | {(n,): c for n, c in main.commands.items() if isinstance(c, click.Group)}
    assert len(groups) >= 5
    for path, group in groups.items():
        shown = streamer(*path, "--help")
        assert shown.returncode == 0, shown.stderr
        listing = shown.stdout.split("\nCommands:\n")[1].splitlines()
        entries = [re.fullmatch(r"  (\S+) +(\S.*)", line) for line in listing]
        assert None not in entries, f"a line that is not one command's: {shown.stdout}"
        lines = {entry[1]: entry[2] for entry in entries}
        assert sorted(lines) == sorted(group.commands), path
        assert [line for line in lines.values() if line.endswith("...")] == [], path


def test_health_json_says_how_the_daemon_is_with_metrics_on_or_off(make_daemon, tmp_path):
    daemon = make_daemon().start()
    port = {"STREAMER_METRICS_PORT": str(port_of(daemon))}
    alive = cli(daemon, "--json", "health", env=port)
    assert alive.returncode == 0, alive.stderr
    assert json.loads(alive.stdout) == {
        "status": "ok",
        "http_status": 200,
        "seconds_since_loop": None,  # /healthz says it only when stalled
        "error": None,
    }
    daemon.stop()
    down = cli(daemon, "health", "--json", env=port)
    said = json.loads(down.stdout)
    assert down.returncode == 1 and down.stderr == ""
    assert (said["status"], said["http_status"], said["seconds_since_loop"]) == (
        "not running",
        None,
        None,
    )
    assert said["error"].startswith("no answer at http://127.0.0.1:")

    quiet = make_daemon(home="quiet", metrics={"enabled": False}, instance="quiet-host")
    never = cli(quiet, "health", "--json")
    assert never.returncode == 1
    assert json.loads(never.stdout)["status"] == "not running"
    assert "no heartbeat in" in json.loads(never.stdout)["error"]
    quiet.start()
    wait_until(lambda: cli(quiet, "health").returncode == 0, 10, what="a heartbeat")
    beating = json.loads(cli(quiet, "health", "--json").stdout)
    assert (beating["status"], beating["http_status"], beating["error"]) == ("ok", None, None)
    assert 0 <= beating["seconds_since_loop"] < HEALTHY_WITHIN
    quiet.stop()
    heartbeat = quiet.config_path.parent / "checkpoint" / "heartbeat"
    old = time.time() - 60
    os.utime(heartbeat, (old, old))
    stale = cli(quiet, "health", "--json")
    said = json.loads(stale.stdout)
    assert stale.returncode == 1 and said["status"] == "stalled"
    assert said["seconds_since_loop"] >= 60 and "last turned" in said["error"]

    not_a_directory = tmp_path / "not-a-directory"
    not_a_directory.touch()
    blind = cli(quiet, "health", "--json", env={"STREAMER_CHECKPOINT_PATH": str(not_a_directory)})
    assert blind.returncode == 1
    assert json.loads(blind.stdout) == {
        "status": "unknown",
        "http_status": None,
        "seconds_since_loop": None,
        "error": f"cannot read the heartbeat in {not_a_directory}: Not a directory",
    }


def test_a_command_without_json_refuses_the_one_given_before_it_and_does_nothing(
    finished, tmp_path
):
    daemon, _ = finished
    copy = tmp_path / "backup"
    refused = cli(daemon, "--json", "checkpoint", "backup", str(copy))
    assert refused.returncode == 2
    assert "`streamer checkpoint backup` has no --json: leave it out" in refused.stderr
    assert not copy.exists()
    listed = cli(daemon, "--json", "streams", "list")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1

    from streamer.cli import main

    without = [path for path, c in leaves(main) if not any(p.name == "as_json" for p in c.params)]
    assert {("run",), ("streams", "cancel"), ("config", "init")} <= set(without)
    missing = str(tmp_path / "missing.json")  # were one not refused, it could not do much
    for path in without:
        said = streamer("--json", "--config", missing, *path, env={"HOME": str(tmp_path)})
        assert said.returncode == 2, path
        assert f"`streamer {' '.join(path)}` has no --json: leave it out" in said.stderr, path


def leaves(group: click.Group, path: tuple[str, ...] = ()):
    """Every command below a group that is not a group itself, with its path."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from leaves(command, (*path, name))
        else:
            yield (*path, name), command


def test_one_chunk_is_said_in_the_singular(make_daemon, tmp_path):
    daemon = make_daemon().start()
    (daemon.watch / "short.mp4").write_bytes(b"s" * 10 * KiB)
    stream_id = daemon.wait_for("stream_finished")[0]["stream_id"]
    verified = cli(daemon, "verify", stream_id)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == f"{stream_id}: ok (1 chunk)\n"
    restored = cli(daemon, "restore", stream_id, "-o", str(tmp_path / "short.mp4"))
    assert restored.returncode == 0, restored.stderr
    assert f"{stream_id}: invalid, 10.0 KiB in 1 piece, sha256 " in restored.stdout  # not an MP4
