"""Real parts for the tests: S3 server processes (MinIO and versitygw), the streamer daemon
as a subprocess, and recordings written live by ffmpeg or by a synthetic writer."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import urllib3
from faultproxy import FaultProxy
from minio import Minio
from prometheus_client.parser import text_string_to_metric_families

# Timeouts and backoff short enough for a fault to show within seconds.
FAST_RETRIES = {"connect_timeout": 1, "read_timeout": 2, "retry_base": 0.2, "retry_cap": 2}
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


class S3Server:
    """A real S3 server process on a free port, stopped and started again on its data."""

    name = ""

    def __init__(
        self, binary: str, data_dir: Path, env: dict | None = None, ca_file: Path | None = None
    ):
        self.binary, self.data_dir, self.ca_file = binary, data_dir, ca_file
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.start()
        tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": str(ca_file)} if ca_file else {}
        self.client = Minio(
            self.endpoint,
            ACCESS_KEY,
            SECRET_KEY,
            secure=bool(ca_file),
            region="us-east-1",
            http_client=urllib3.PoolManager(**tls),
        )

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.data_dir.parent / f"{self.name}.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._live, 30, what=f"{self.name} to start")

    def _live(self) -> bool:
        scheme = "https" if self.ca_file else "http"
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        try:
            urllib.request.urlopen(f"{scheme}://{self.endpoint}/", timeout=1, context=context)
        except urllib.error.HTTPError:
            return True  # it answers
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class MinioServer(S3Server):
    name = "minio"

    def __init__(
        self, binary: str, data_dir: Path, env: dict | None = None, certs_dir: Path | None = None
    ):
        self.certs_dir = certs_dir
        env = {
            "MINIO_ROOT_USER": ACCESS_KEY,
            "MINIO_ROOT_PASSWORD": SECRET_KEY,
            "MINIO_BROWSER": "off",
            **(env or {}),
        }
        super().__init__(
            binary, data_dir, env, ca_file=certs_dir / "CAs" / "ca.crt" if certs_dir else None
        )

    def command(self) -> list[str]:
        certs = ["--certs-dir", str(self.certs_dir)] if self.certs_dir else []
        return [
            self.binary,
            "server",
            str(self.data_dir),
            "--address",
            self.endpoint,
            "--quiet",
            *certs,
        ]


def make_certificates(directory: Path) -> Path:
    """A private CA and a certificate for 127.0.0.1 signed by it, laid out as MinIO's
    --certs-dir wants them (public.crt, private.key, CAs/ca.crt)."""
    (directory / "CAs").mkdir(parents=True)
    ca_crt, ca_key = directory / "CAs" / "ca.crt", directory / "ca.key"
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        *key,
        "-keyout",
        ca_key,
        "-out",
        ca_crt,
        "-days",
        "2",
        "-subj",
        "/CN=streamer test CA",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    csr = directory / "server.csr"
    openssl(
        "req", *key, "-keyout", directory / "private.key", "-out", csr, "-subj", "/CN=127.0.0.1"
    )
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca_crt,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        directory / "public.crt",
        "-days",
        "2",
        "-extfile",
        extensions,
    )
    return directory


class VersityServer(S3Server):
    """versitygw serving S3 from a plain directory: a second, independent implementation."""

    name = "versitygw"

    def __init__(self, binary: str, data_dir: Path):
        super().__init__(
            binary, data_dir, {"ROOT_ACCESS_KEY": ACCESS_KEY, "ROOT_SECRET_KEY": SECRET_KEY}
        )

    def command(self) -> list[str]:
        return [self.binary, "--port", self.endpoint, "posix", str(self.data_dir)]


def binary(variable: str, name: str) -> str:
    path = os.environ.get(variable) or shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"no {name} binary: run `make {name}` or set {variable}")
    return path


SERVERS = {
    "minio": lambda data: MinioServer(binary("MINIO_BIN", "minio"), data),
    "versitygw": lambda data: VersityServer(binary("VERSITYGW_BIN", "versitygw"), data),
}
# The cases that matter run against both servers: `@both_servers` on a test that takes
# `server` (and so `make_daemon`, `bucket`); other tests get MinIO.
both_servers = pytest.mark.parametrize("server", sorted(SERVERS), indirect=True)


@pytest.fixture(scope="session")
def minio(tmp_path_factory):
    server = SERVERS["minio"](tmp_path_factory.mktemp("minio") / "data")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def versitygw(tmp_path_factory):
    server = SERVERS["versitygw"](tmp_path_factory.mktemp("versitygw") / "data")
    yield server
    server.stop()


KMS_KEY_ID = "streamer-test-key"


@pytest.fixture(scope="session")
def tls_minio(tmp_path_factory):
    """MinIO over https with a certificate from a private CA, and a static KMS key so it
    can encrypt at rest (SSE-S3 and SSE-KMS)."""
    base = tmp_path_factory.mktemp("tls-minio")
    key = base64.b64encode(hashlib.sha256(b"streamer test kms key").digest()).decode()
    server = MinioServer(
        binary("MINIO_BIN", "minio"),
        base / "data",
        env={"MINIO_KMS_SECRET_KEY": f"{KMS_KEY_ID}:{key}"},
        certs_dir=make_certificates(base / "certs"),
    )
    yield server
    server.stop()


@pytest.fixture
def server(request) -> S3Server:
    return request.getfixturevalue(getattr(request, "param", "minio"))


@pytest.fixture
def own_server(server, tmp_path) -> S3Server:
    """A server of the same kind for this test alone, free to be stopped and started."""
    own = SERVERS[server.name](tmp_path / f"own-{server.name}" / "data")
    yield own
    if own.process.poll() is None:
        own.stop()


@pytest.fixture
def bucket(server) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    server.client.make_bucket(name)
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

    def start(self, wait: bool = True) -> Daemon:
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
        if wait:
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


def port_of(daemon) -> int:
    return json.loads(daemon.config_path.read_text())["metrics"]["port"]


def scrape(daemon) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port_of(daemon)}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def cli(daemon, *args, stdin: str | None = None, env=None) -> subprocess.CompletedProcess:
    """An admin command against the daemon's configuration."""
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args, "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        env={**daemon.env, **(env or {})},
    )


@pytest.fixture
def proxy(minio):
    """A misbehaving network between streamer and the MinIO (tests/faultproxy.py)."""
    proxy = FaultProxy(("127.0.0.1", minio.port))
    yield proxy
    proxy.close()


@pytest.fixture
def make_daemon(tmp_path, server, bucket):
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
                "endpoint": server.endpoint,
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


def assert_exact(server: S3Server, daemon: Daemon, stream_id: str, path: Path) -> dict:
    """The stream's chunks in S3, joined, are the file, byte for byte, and its manifest
    lists them in order, without gap or overlap."""
    manifest = manifest_of(server.client, daemon.bucket, stream_id)
    data = reassemble(server.client, daemon.bucket, manifest)
    assert hashlib.sha256(data).hexdigest() == sha256_file(path) == manifest["sha256"]
    assert manifest["total_size"] == len(data) == path.stat().st_size
    assert [c["index"] for c in manifest["chunks"]] == list(range(manifest["chunk_count"]))
    ends = [c["offset"] + c["size"] for c in manifest["chunks"]]
    assert [c["offset"] for c in manifest["chunks"]] == [0, *ends[:-1]]
    return manifest
