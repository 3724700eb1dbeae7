"""The real Dockerfile and docker-compose.yml on a real Docker engine: recordings in
./input end up in MinIO, byte-exact, through kills, restarts and a stop. The stack runs
from a copy of the project, on free ports: the repository's own ./input, and the quick
start's ports, are never touched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import clean_env, free_port
from minio import Minio
from recordings import record

import streamer

ROOT = Path(__file__).resolve().parents[2]
PROJECT = f"streamertest{os.getpid()}"
SECRET = "compose-Secret-4711"
pytestmark = pytest.mark.compose


# Compose v2 (the docker CLI plugin) and Debian's docker-compose 1.29: users have either.
IMPLEMENTATIONS = {"v2": ["docker", "compose"], "v1": ["docker-compose"]}


def compose_command(version: str) -> list[str]:
    command = IMPLEMENTATIONS[version]
    if subprocess.run([*command, "version"], capture_output=True).returncode != 0:
        pytest.fail(f"`{' '.join(command)}` is not installed: `make docker` installs it")
    return command


def copy_of_the_project(destination: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "input", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


class Stack:
    def __init__(
        self,
        version: str,
        directory: Path,
        secret_file: Path | None = None,
        project: str = PROJECT,
    ):
        self.command = [*compose_command(version), "-p", project]
        self.directory = directory
        self.minio_port = free_port()
        self.balancer_port = free_port()
        self.env = clean_env(
            {
                "MINIO_ROOT_USER": "streamer-admin",
                "S3_SECRET_KEY_FILE": str(secret_file or ""),
                "STREAMER_STREAM_CHUNK_SIZE": str(1024 * 1024),
                "STREAMER_STREAM_IDLE_TIMEOUT": "5",
                "MINIO_PORT": str(self.minio_port),
                "BALANCER_PORT": str(self.balancer_port),
                "MINIO_CONSOLE_PORT": str(free_port()),
                "METRICS_PORT": str(free_port()),
                "PROMETHEUS_PORT": str(free_port()),
                "GRAFANA_PORT": str(free_port()),
            }
        )

    def run(self, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*self.command, *args],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args}: {result.stdout}\n{result.stderr}")
        return result

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).stdout.strip()

    def logs(self, service: str = "") -> str:
        return self.run("logs", "--no-color", *([service] if service else [])).stdout

    def events(self) -> list[dict]:
        found = []
        for line in self.logs("streamer").splitlines():
            _, _, payload = line.partition("| ")
            try:
                found.append(json.loads(payload))
            except ValueError:
                continue
        return found

    def wait_for(self, event: str, count: int = 1, timeout: float = 120, **fields) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [
                e
                for e in self.events()
                if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            ]
            if len(found) >= count:
                return found
            time.sleep(1)
        raise AssertionError(f"no {count} x {event} {fields}:\n{self.logs()[-5000:]}")


def stack_in_a_copy(version: str, tmp_path_factory, project: str = PROJECT) -> Stack:
    secret_file = tmp_path_factory.mktemp("secrets") / "s3_secret_key"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o644)  # read by streamer's own user in its container
    directory = copy_of_the_project(tmp_path_factory.mktemp("compose") / "streamer")
    (directory / "input").mkdir()
    return Stack(version, directory, secret_file, project)


@pytest.fixture(scope="module", params=sorted(IMPLEMENTATIONS))
def stack(request, tmp_path_factory):
    stack = stack_in_a_copy(request.param, tmp_path_factory)
    stack.run("up", "-d", "--build", timeout=1200)
    yield stack
    stack.run("down", "-v", "--remove-orphans", check=False)


def exact(stack: Stack, stream_id: str, path: Path, port: int | None = None) -> dict:
    """The stream's chunks, read from the store on `port` (the single MinIO's by default),
    are the file, byte for byte."""
    client = Minio(
        f"127.0.0.1:{port or stack.minio_port}",
        "streamer-admin",
        SECRET,
        secure=False,
        region="us-east-1",
    )
    stream_prefix = None
    for obj in client.list_objects("recordings", prefix="streams/", recursive=True):
        if obj.object_name.endswith(f"/{stream_id}/metadata.json"):
            stream_prefix = obj.object_name.rsplit("/", 1)[0]
    assert stream_prefix, f"no metadata.json for {stream_id}"
    response = client.get_object("recordings", f"{stream_prefix}/metadata.json")
    manifest = json.loads(response.read())
    data = b"".join(client.get_object("recordings", c["key"]).read() for c in manifest["chunks"])
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert hashlib.sha256(data).hexdigest() == expected == manifest["sha256"]
    return manifest


def finished_recording(path: Path) -> Path:
    """A finished MP4 of 4 seconds, written by ffmpeg."""
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=rate=25",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            str(path),
        ],
        check=True,
    )
    return path


def test_the_stack_uploads_survives_kills_and_restarts_and_stops_cleanly(stack, tmp_path):
    stack.wait_for("started")
    input_dir = stack.directory / "input"
    finished = finished_recording(tmp_path / "finished.mp4")
    shutil.copy(finished, input_dir / "finished.mp4")
    live_path = input_dir / "live.mp4"
    recorder = record("ffmpeg", live_path, 40, "fragmented")

    first = stack.wait_for("stream_discovered", count=2)
    live_id = next(e["stream_id"] for e in first if e["path"].endswith("live.mp4"))
    stack.wait_for("chunk_uploaded", count=2, stream_id=live_id)
    # SIGKILL the streamer mid-recording, then start it again.
    subprocess.run(["docker", "kill", "-s", "KILL", stack.container("streamer")], check=True)
    time.sleep(2)
    stack.run("start", "streamer")
    stack.wait_for("stream_resumed", stream_id=live_id)
    time.sleep(5)
    # MinIO restarts mid-stream.
    stack.run("restart", "minio")
    assert recorder.wait(120) == 0

    done = stack.wait_for("stream_finished", count=2, timeout=180)
    by_name = {e["stream_id"].split("-2")[0]: e["stream_id"] for e in done}
    exact(stack, by_name["finished"], input_dir / "finished.mp4")
    manifest = exact(stack, live_id, live_path)
    assert manifest["status"] == "complete"

    # A stop is graceful, and within the stop grace period: else Docker kills it (137).
    stack.run("stop", "streamer")
    inspect = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.ExitCode}}", f"{PROJECT}_streamer_1"],
        capture_output=True,
        text=True,
    )
    if inspect.returncode != 0:  # compose v2 names containers with dashes
        inspect = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.ExitCode}}", f"{PROJECT}-streamer-1"],
            capture_output=True,
            text=True,
        )
    assert inspect.stdout.strip() == "0"

    # down and up again, volumes kept: nothing is uploaded again.
    uploaded_before = len(stack.wait_for("chunk_uploaded"))
    stack.run("down")
    stack.run("up", "-d")
    stack.wait_for("started")  # the new container's own log
    time.sleep(10)
    events = stack.events()
    assert not [e for e in events if e.get("event") == "chunk_uploaded"], "re-uploaded"
    assert not [e for e in events if e.get("event") == "stream_discovered"]
    assert uploaded_before >= 5
    assert SECRET not in stack.logs()


def test_retention_in_the_stack_keeps_a_recording_still_open_and_deletes_it_once_closed(
    stack, tmp_path
):
    """Retention on, as the compose file says to turn it on (INPUT_MODE=rw, ./input
    writable by uid 10001): the shipped image, given CAP_LEASE by the shipped compose file,
    sees a recording another user's process still holds open for writing, though older
    than retention.min_age, and keeps it; once it is closed, it is deleted. The daemon
    never says it is blind."""
    input_dir = stack.directory / "input"
    os.chown(input_dir, 10001, 10001)
    stack.env.update(INPUT_MODE="rw", STREAMER_RETENTION_DELETE_AFTER_UPLOAD="true")
    stack.run("up", "-d")  # streamer's container made again, with retention on
    recording = finished_recording(tmp_path / "held.mp4")
    held = input_dir / "held.mp4"
    with open(held, "wb") as recorder:  # it pauses, its file still open
        recorder.write(recording.read_bytes())
        recorder.flush()
        os.chown(held, 20000, 20000)  # the recorder's user: neither streamer's nor root
        an_hour_ago = time.time() - 3600
        os.utime(held, (an_hour_ago, an_hour_ago))
        kept = stack.wait_for("source_kept", path="/input/held.mp4")[0]
        assert kept["kept_because"] == "a process has the file open for writing"
    assert held.exists()
    # Closed. Retention asks about a kept file again a minute later, or at once after a
    # restart: the restart saves the minute.
    stack.run("restart", "streamer")
    stack.wait_for("source_deleted", path="/input/held.mp4")
    assert not held.exists()
    events = {e.get("event") for e in stack.events()}
    assert "retention_blind" not in events and "source_deleted_blind" not in events


LEASE_PROBE = (
    "from streamer.fileio import CAP_LEASE, lease_blindness, raise_capability; "
    "raise_capability(CAP_LEASE); print(lease_blindness('/tmp'))"
)


def test_retention_in_the_stack_can_tell_a_recording_is_still_open(stack):
    """The image permits CAP_LEASE to its interpreter and the compose file gives it to the
    container, so retention can take a lease on a recording another user writes; the same
    image run without it says why it cannot."""
    given = stack.run("run", "--rm", "--no-deps", "--entrypoint", "python", "streamer", "-c",
                      LEASE_PROBE)  # fmt: skip
    assert given.stdout.strip().splitlines()[-1] == "None", given.stdout + given.stderr
    image = subprocess.run(
        ["docker", "inspect", "-f", "{{.Image}}", stack.container("streamer")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    bare = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python", image, "-c", LEASE_PROBE],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bare.stdout.startswith("no CAP_LEASE"), bare.stdout + bare.stderr


@pytest.mark.parametrize("version", sorted(IMPLEMENTATIONS))
def test_the_monitoring_profile_adds_prometheus_and_grafana(version):
    stack = Stack(version, ROOT)
    services = stack.run("--profile", "monitoring", "config", "--services").stdout.split()
    assert {"minio", "streamer", "prometheus", "grafana"} <= set(services)


def test_the_stack_names_its_instance_keeps_its_ports_local_and_checks_its_own_health(stack):
    client = Minio(
        f"127.0.0.1:{stack.minio_port}", "streamer-admin", SECRET, secure=False, region="us-east-1"
    )
    keys = [o.object_name for o in client.list_objects("recordings", "streams/", recursive=True)]
    assert keys and all(k.startswith("streams/streamer/") for k in keys), keys[:3]
    for service, port in (("streamer", 9108), ("minio", 9000), ("minio", 9001)):
        published = stack.run("port", service, str(port)).stdout.strip()
        assert published.startswith("127.0.0.1:"), (service, published)

    container = stack.container("streamer")

    def health() -> str:
        return subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}", container],
            capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip

    deadline = time.monotonic() + 90
    while health() != "healthy" and time.monotonic() < deadline:
        time.sleep(2)
    assert health() == "healthy"
    said = stack.run("exec", "-T", "streamer", "streamer", "health")
    assert said.stdout.strip() == "ok"
    labels = json.loads(
        subprocess.run(
            ["docker", "inspect", "-f", "{{json .Config.Labels}}", container],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert labels["org.opencontainers.image.version"] == streamer.__version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


DISTRIBUTED_SERVICES = {"minio1", "minio2", "minio3", "minio4", "balancer"}


@pytest.mark.parametrize("version", sorted(IMPLEMENTATIONS))
def test_the_distributed_profile_adds_four_nodes_and_a_balancer_and_only_that_profile(version):
    stack = Stack(version, ROOT)
    profiled = stack.run("--profile", "distributed", "config", "--services").stdout.split()
    assert DISTRIBUTED_SERVICES | {"minio", "streamer"} <= set(profiled)
    if version == "v2":  # 1.29 lists every service, in any profile or none
        assert not DISTRIBUTED_SERVICES & set(stack.run("config", "--services").stdout.split())
    assert "STREAMER_S3_ENDPOINT: minio:9000" in stack.run("config").stdout
    stack.env["STREAMER_S3_ENDPOINT"] = "balancer:9000"
    assert "STREAMER_S3_ENDPOINT: balancer:9000" in stack.run("config").stdout


@pytest.fixture
def distributed(tmp_path_factory):
    """The stack with its distributed profile, as the compose file's header says to run it."""
    stack = stack_in_a_copy("v2", tmp_path_factory, f"{PROJECT}distributed")
    stack.command += ["--profile", "distributed"]
    stack.env["STREAMER_S3_ENDPOINT"] = "balancer:9000"
    stack.run("up", "-d", "--build", timeout=1200)
    yield stack
    stack.run("down", "-v", "--remove-orphans", check=False)


def test_the_distributed_profile_records_through_the_loss_of_a_node(distributed):
    """Three recordings growing; one of the four MinIO nodes is killed mid-recording. The
    balancer passes the dead node over, the erasure set keeps writing on the three left,
    and every recording lands complete and exact in the distributed store (read through
    the balancer, the node still dead)."""
    stack = distributed
    stack.wait_for("started")
    input_dir = stack.directory / "input"
    kinds = ("fragmented", "plain", "faststart")
    paths = {kind: input_dir / f"{kind}.mp4" for kind in kinds}
    recorders = [record("ffmpeg", paths[kind], 16, kind) for kind in kinds]
    discovered = stack.wait_for("stream_discovered", count=len(kinds))
    ids = {Path(e["path"]).stem: e["stream_id"] for e in discovered}
    for stream_id in ids.values():
        stack.wait_for("chunk_uploaded", stream_id=stream_id)
    stack.run("kill", "minio3")
    assert all(recorder.wait(120) == 0 for recorder in recorders)

    stack.wait_for("stream_finished", count=len(kinds), timeout=240)
    for kind, path in paths.items():
        manifest = exact(stack, ids[kind], path, port=stack.balancer_port)
        assert manifest["status"] == "complete"
    assert stack.run("ps", "-q", "--status", "running", "minio3").stdout.strip() == ""
