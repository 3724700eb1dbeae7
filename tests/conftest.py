"""Real parts for the tests: a MinIO server process, the streamer daemon as a subprocess,
and recordings written live by ffmpeg or by a synthetic writer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from minio import Minio

ACCESS_KEY = "streamer-test"
SECRET_KEY = "streamer-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ffprobe_duration(path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out)["format"]["duration"])


class MinioServer:
    def __init__(self, binary: str, data_dir: Path):
        self.binary, self.data_dir = binary, data_dir
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "MINIO_ROOT_USER": ACCESS_KEY,
            "MINIO_ROOT_PASSWORD": SECRET_KEY,
            "MINIO_BROWSER": "off",
        }
        self.env = env
        self.start()
        self.client = Minio(self.endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region="us-east-1")

    def start(self) -> None:
        with open(self.data_dir.parent / "minio.log", "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "server", str(self.data_dir), "--address", self.endpoint, "--quiet"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._live, 30, what="MinIO to start")

    def _live(self) -> bool:
        try:
            urllib.request.urlopen(f"http://{self.endpoint}/minio/health/live", timeout=1)
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def minio_binary() -> str:
    binary = os.environ.get("MINIO_BIN") or shutil.which("minio")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail("no MinIO server binary: run `make minio` or set MINIO_BIN")
    return binary


@pytest.fixture(scope="session")
def minio(tmp_path_factory):
    server = MinioServer(minio_binary(), tmp_path_factory.mktemp("minio") / "data")
    yield server
    server.stop()


@pytest.fixture
def bucket(minio) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    minio.client.make_bucket(name)
    return name


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if not path:
        pytest.fail("ffmpeg is not installed: `make test` installs it (apt-get install ffmpeg)")
    return path


class Daemon:
    """`streamer run` as a real process, with its JSON log lines parsed as they come."""

    def __init__(self, config_path: Path, log_path: Path, env: dict | None = None, wrapper=()):
        self.config_path = config_path
        self.wrapper = list(wrapper)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(config_path.parent / "metrics")
        self.process: subprocess.Popen | None = None
        self._offset = 0
        self.events: list[dict] = []

    def start(self) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.wrapper,
                    sys.executable,
                    "-m",
                    "streamer",
                    "run",
                    "--config",
                    str(self.config_path),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_for("metrics_listening")  # the last step of a start
        return self

    def read_events(self) -> list[dict]:
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "unparsed", "line": line.decode(errors="replace")})
        return self.events

    def find(self, event: str, **fields) -> list[dict]:
        return [
            e
            for e in self.read_events()
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_for(self, event: str, timeout: float = 30, count: int = 1, **fields) -> list[dict]:
        def seen():
            if self.process.poll() is not None and len(self.find(event, **fields)) < count:
                raise AssertionError(
                    f"streamer exited ({self.process.returncode}) before "
                    f"{event}; log:\n{self.log_path.read_text()[-4000:]}"
                )
            found = self.find(event, **fields)
            return found if len(found) >= count else None

        return wait_until(seen, timeout, what=f"{count} x {event} {fields}")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def uploader_pids(self) -> list[int]:
        return [e["pid"] for e in self.find("uploader_spawned")]

    def stop(self, timeout: float = 30) -> int:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def make_daemon(tmp_path, minio, bucket):
    """Build a config for a fresh watch directory and checkpoint store; start daemons on it.
    Daemons made with the same `home` share them (a restart); another `home` is another
    host, with its own directory, store and log."""
    daemons: list[Daemon] = []

    def make(wrapper=(), env=None, home: str = "", **overrides) -> Daemon:
        base = tmp_path / home
        watch = base / "input"
        watch.mkdir(parents=True, exist_ok=True)
        config = {
            "watch": {"directory": str(watch), "rescan_interval": 2},
            "stream": {"chunk_size": 64 * 1024, "idle_timeout": 2},
            "s3": {
                "endpoint": minio.endpoint,
                "bucket": bucket,
                "prefix": "rec",
                "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY,
            },
            "checkpoint": {"path": str(base / "checkpoint")},
            "metrics": {"host": "127.0.0.1", "port": free_port()},
            "workers": 2,
            "grace_period": 10,
            "instance": "test-host",
        }
        for section, values in overrides.items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:
                config[section] = values
        config_path = base / "config.json"
        config_path.write_text(json.dumps(config))
        daemon = Daemon(config_path, base / "streamer.log", env=env, wrapper=wrapper)
        daemon.watch = watch
        daemon.bucket = bucket
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        if daemon.process:
            daemon.stop()


class GrowingFile:
    """A synthetic recorder: appends `total` deterministic bytes at `rate` bytes/s."""

    def __init__(self, path: Path, total: int, rate: int, block: int = 16 * 1024):
        self.path, self.total, self.rate, self.block = path, total, rate, block
        self.written = 0
        self.done = threading.Event()
        self.data = hashlib.shake_256(path.name.encode()).digest(total)
        self._thread = threading.Thread(target=self._write, daemon=True)

    def start(self) -> GrowingFile:
        self._thread.start()
        return self

    def _write(self) -> None:
        with open(self.path, "wb") as f:
            while self.written < self.total:
                part = self.data[self.written : self.written + self.block]
                f.write(part)
                f.flush()
                self.written += len(part)
                time.sleep(len(part) / self.rate)
        self.done.set()

    def wait(self, timeout: float = 60) -> None:
        assert self.done.wait(timeout), "writer did not finish"


def record(
    ffmpeg: str, path: Path, seconds: float, kind: str, live: bool = True
) -> subprocess.Popen:
    """ffmpeg writing a real recording (in real time if `live`): kind is plain, faststart
    or fragmented."""
    movflags = {
        "plain": [],
        "faststart": ["-movflags", "+faststart"],
        "fragmented": ["-movflags", "frag_keyframe+empty_moov+default_base_moof", "-g", "25"],
    }[kind]
    return subprocess.Popen(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-nostdin",
            *(["-re"] if live else []),
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            str(seconds),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "2M",
            "-c:a",
            "aac",
            *movflags,
            str(path),
        ],
    )


def object_bytes(client: Minio, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def manifest_of(client: Minio, bucket: str, stream_id: str, prefix: str = "rec/test-host") -> dict:
    return json.loads(object_bytes(client, bucket, f"{prefix}/{stream_id}/metadata.json"))


def reassemble(client: Minio, bucket: str, manifest: dict) -> bytes:
    return b"".join(object_bytes(client, bucket, c["key"]) for c in manifest["chunks"])
