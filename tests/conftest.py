"""Real parts for the tests: S3 server processes (MinIO and versitygw), the streamer daemon
as a subprocess, and recordings written live by ffmpeg or by a synthetic writer."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import re
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
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


# The fixtures that start an S3 server: a test that asks for one is an integration test, and
# must say so (`make unit` runs where no server binary is built).
SERVER_FIXTURES = {"minio", "versitygw", "tls_minio", "tls_versitygw", "server"}


def pytest_collection_modifyitems(config, items):
    unmarked = [
        item.nodeid
        for item in items
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
        and item.get_closest_marker("compose") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start an S3 server but are not marked integration:\n  "
            + "\n  ".join(unmarked)
        )


# Ports for the servers the tests start, each handed out once per run, from below the
# kernel's ephemeral range: no outgoing connection can take one between the check that it
# is free and the server binding it. The start is drawn at random so that two runs on one
# machine rarely meet.
_PORTS = iter(range(random.randrange(10_000, 30_000, 100), 32_000))


def free_port() -> int:
    for port in _PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left below 32000")


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def alive(pid: int) -> bool:
    """The process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


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
        self.env = clean_env(env)
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
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.process.returncode}) at start")
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

    def __init__(self, binary: str, data_dir: Path, certs_dir: Path | None = None):
        self.certs_dir = certs_dir
        super().__init__(
            binary,
            data_dir,
            {"ROOT_ACCESS_KEY": ACCESS_KEY, "ROOT_SECRET_KEY": SECRET_KEY},
            ca_file=certs_dir / "CAs" / "ca.crt" if certs_dir else None,
        )

    def command(self) -> list[str]:
        tls = []
        if self.certs_dir:
            tls = ["--cert", str(self.certs_dir / "public.crt")]
            tls += ["--key", str(self.certs_dir / "private.key")]
        return [self.binary, "--port", self.endpoint, *tls, "posix", str(self.data_dir)]


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


@pytest.fixture(scope="session")
def tls_versitygw(tmp_path_factory):
    """versitygw over https, with a certificate from a private CA."""
    base = tmp_path_factory.mktemp("tls-versitygw")
    server = VersityServer(
        binary("VERSITYGW_BIN", "versitygw"), base / "data", make_certificates(base / "certs")
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


# Events that mean something went wrong: any event logged at level error, and these
# whatever their level: a line that is not a log event (a traceback), a stream or a
# process that failed. A test that provokes one on purpose declares it, and how many times,
# with `daemon.expect(...)`; any other one fails the test when its daemon is checked.
TROUBLE = ("unparsed", "stream_failed", "supervisor_crashed", "uploader_died", "halting")


def is_trouble(event: dict) -> bool:
    return event.get("level") == "error" or event.get("event") in TROUBLE


def at_least(n: int) -> range:
    """A count for `Daemon.expect` where the test cannot know how many there will be (a
    refused request is logged again at every retry): n or more."""
    return range(n, sys.maxsize)


AT_LEAST_ONE = at_least(1)


def counted(times: int | range) -> range:
    return range(times, times + 1) if isinstance(times, int) else times


def said(times: range) -> str:
    if times.stop >= sys.maxsize:
        return f"at least {times.start}"
    if len(times) == 1:
        return f"exactly {times.start}" if times.start else "none"
    return f"{times.start} to {times.stop - 1}"


def miscounted(events: list[dict], declared: dict[str, range]) -> list[str]:
    """What is wrong in one run's events: trouble not declared, or declared trouble seen
    more or fewer times than declared (one that does not happen was not provoked)."""
    seen: dict[str, list[dict]] = {}
    for event in events:
        if is_trouble(event):
            seen.setdefault(event["event"], []).append(event)
    problems = []
    for name in [*seen, *(name for name in declared if name not in seen)]:
        found, times = seen.get(name, []), declared.get(name, range(1))
        if len(found) not in times:
            shown = 30 if name == "unparsed" else 3  # a traceback's lines, else examples
            problems.append(
                f"{name}: {len(found)} logged, {said(times)} declared"
                + "".join(f"\n    {json.dumps(e)[:1500]}" for e in found[:shown])
            )
    return problems


def clean_env(extra: dict | None = None) -> dict:
    """What a process the tests start gets: none of the developer's STREAMER_*, AWS_* or
    MINIO_* settings, only what the test sets."""
    keep = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, **(extra or {})}


# What `run --once` prints at the end.
SUMMARY = re.compile(r"^\d+ of \d+ streams finished")
# log.format=text, logfmt: "ts=<ts> level=<level> event=<event> key=value ...".
TEXT_LINE = re.compile(rb"^ts=\S+ level=(debug|info|warning|error) event=([a-z0-9_]+)(?: |$)")


def parse_log_line(line: bytes) -> dict:
    """One line of the daemon's log as an event; any other line (a traceback, say) is an
    `unparsed` event, which fails the test unless it declared it."""
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("event"), str):
        return event
    if text := TEXT_LINE.match(line):
        return {"event": text[2].decode(), "level": text[1].decode(), "text": line.decode()}
    return {"event": "unparsed", "line": line.decode(errors="replace")}


@dataclass(eq=False)
class Declared:
    """The trouble a test provokes in one run on purpose (event -> how many times), and
    the exit codes, besides 0, it may end with."""

    events: dict[str, range] = field(default_factory=dict)
    exit_codes: set[int] = field(default_factory=set)

    def add(self, event: str, times: int | range) -> None:
        times, before = counted(times), self.events.get(event, range(0, 1))
        self.events[event] = range(before.start + times.start, before.stop + times.stop - 1)

    def __bool__(self) -> bool:
        return bool(self.events or self.exit_codes)

    def __str__(self) -> str:
        said_of = [f"{event} {said(times)}" for event, times in self.events.items()]
        return ", ".join(said_of + [f"exit code {code}" for code in sorted(self.exit_codes)])


@dataclass(eq=False)
class Run:
    """One start of the daemon: its process, where its log lines begin, what the test
    declared for it, and whether the test killed it on purpose."""

    process: subprocess.Popen
    first_event: int
    first_output: int = 0  # where what it prints on stdout begins in output_path
    declared: Declared = field(default_factory=Declared)
    killed: bool = False

    @property
    def once(self) -> bool:
        return "--once" in self.process.args


class Log:
    """A log file, parsed as it grows, and the runs that wrote it, in the order they were
    started: daemons on the same home (a restart) share one, and a run's events end where
    the next run's begin, whichever daemon started it."""

    def __init__(self, path: Path):
        self.path = path
        self.events: list[dict] = []
        self.runs: list[Run] = []
        self._offset = 0

    def read(self) -> list[dict]:
        if not self.path.exists():  # never started
            return self.events
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        self.events += [parse_log_line(line) for line in complete.splitlines()]
        return self.events

    def after(self, run: Run) -> Run | None:
        later = self.runs[self.runs.index(run) + 1 :]
        return later[0] if later else None

    def events_of(self, run: Run) -> list[dict]:
        following = self.after(run)
        return self.read()[run.first_event : following.first_event if following else None]


_LOGS: weakref.WeakValueDictionary[Path, Log] = weakref.WeakValueDictionary()


class Daemon:
    """`streamer run` as a real process, with its JSON log lines parsed as they come.
    Every start is awaited (this run's own `started` line, after its first scan), and at
    the end `check()` fails the test on trouble it did not declare or a wrong exit code.

    Trouble is any event logged at level error, and the `TROUBLE` events whatever their
    level (a line that is not a log event, such as a traceback, among them). A test that
    provokes it on purpose declares it, for one run, with how many times:

        daemon.expect("uploader_died")          # exactly once
        daemon.expect("uploader_died", "halting", exit_codes=(1,))
        daemon.expect(uploader_died=2)          # exactly twice
        daemon.expect(s3_rejected=AT_LEAST_ONE) # once or more: a refused request is
                                                # logged again at every retry
        daemon.expect(s3_rejected=at_least(2), chunks_kept=range(1, 3))

    A count is an int (exactly) or a range (`at_least(n)`, or any range of counts): a range
    only where the count depends on timing, `at_least(0)` for a consequence of what the
    test does that its timing may or may not bring about. Declarations add up. They apply
    to the run going when they are made, else to the next one started; `run=n` names a run
    already started (`run=-1`: the last). Each run's events are checked against that run's
    declarations: undeclared trouble fails, and so does declared trouble seen more or fewer
    times than declared. A run ends with 0, or an exit code declared for it, unless the
    test killed it."""

    def __init__(self, config_path: Path, log_path: Path, env: dict | None = None, wrapper=()):
        self.config_path = config_path
        self.wrapper = list(wrapper)
        self.log_path = log_path
        self.output_path = log_path.with_suffix(".out")
        self.env = clean_env(env)
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(config_path.parent / "metrics")
        self.runs: list[Run] = []
        self._log = _LOGS.setdefault(log_path, Log(log_path))
        self._next = Declared()  # for the next run started

    @property
    def process(self) -> subprocess.Popen | None:
        return self.runs[-1].process if self.runs else None

    def expect(
        self,
        *events: str,
        exit_codes: tuple[int, ...] = (),
        run: int | None = None,
        **times: int | range,
    ) -> Daemon:
        """Declare trouble this test provokes on purpose: see the class's docstring."""
        if run is not None:
            declared = self.runs[run].declared
        elif self.process is not None and self.process.poll() is None:
            declared = self.runs[-1].declared
        else:
            declared = self._next
        for event in events:
            declared.add(event, 1)
        for event, count in times.items():
            declared.add(event, count)
        declared.exit_codes.update(exit_codes)
        return self

    def start(self, wait: bool = True, timeout: float = 30, args=()) -> Daemon:
        """`args` go to `streamer run` (`--once`); what it prints on stdout, beside the
        log on stderr, is in `output_path`."""
        assert self.process is None or self.process.poll() is not None, "already running"
        first_event = len(self.read_events())
        first_output = self.output_path.stat().st_size if self.output_path.exists() else 0
        with open(self.log_path, "ab") as log, open(self.output_path, "ab") as output:
            process = subprocess.Popen(
                [
                    *self.wrapper,
                    sys.executable,
                    "-m",
                    "streamer",
                    "run",
                    "--config",
                    str(self.config_path),
                    *args,
                ],
                env=self.env,
                stdout=output,
                stderr=log,
            )
        run, self._next = Run(process, first_event, first_output, self._next), Declared()
        self.runs.append(run)
        self._log.runs.append(run)
        if wait:
            self.wait_for("started", timeout, pid=process.pid, this_run=True)
        return self

    def read_events(self) -> list[dict]:
        return self._log.read()

    def find(self, event: str, this_run: bool = False, **fields) -> list[dict]:
        events = self.read_events()
        if this_run:
            events = events[self.runs[-1].first_event :]
        return [
            e
            for e in events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_for(
        self, event: str, timeout: float = 30, count: int = 1, this_run: bool = False, **fields
    ) -> list[dict]:
        def seen():
            found = self.find(event, this_run, **fields)
            if len(found) >= count:
                return found
            if self.process.poll() is not None:
                raise AssertionError(
                    f"streamer exited ({self.process.returncode}) before "
                    f"{event}; log:\n{self.log_path.read_text()[-4000:]}"
                )
            return None

        try:
            return wait_until(seen, timeout, what=f"{count} x {event} {fields}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the log's last lines:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 40) -> str:
        """What the daemon said last, each line cut short: why a wait timed out."""
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(line[:300] for line in text)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, on purpose: this run's exit code is not checked."""
        self.runs[-1].killed = True
        self.process.kill()
        self.process.wait()

    def uploader_pids(self) -> list[int]:
        return [e["pid"] for e in self.find("uploader_spawned")]

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self, run: int = -1) -> str:
        """What a run printed on stdout (only `run --once` prints: its summary)."""
        if not self.output_path.exists():
            return ""
        printed = self.output_path.read_bytes()
        following = self._log.after(self.runs[run])
        end = following.first_output if following else None
        return printed[self.runs[run].first_output : end].decode(errors="replace")

    def unexpected_output(self) -> list[str]:
        problems = []
        for n, run in enumerate(self.runs):
            lines = self.output(n).splitlines()
            if run.once and (run.killed or SUMMARY.match(lines[0] if lines else "")):
                lines = lines[1:]
            problems += [f"run {n} printed on stdout: {line[:300]}" for line in lines[:5]]
        return problems

    def check(self) -> None:
        """Stop it, then fail on trouble in a run's log other than what the test declared
        for that run, or an exit code it did not declare."""
        self.stop()
        problems = []
        for n, run in enumerate(self.runs):
            where = f"run {n} (pid {run.process.pid})"
            code = run.process.returncode
            if not run.killed and code != 0 and code not in run.declared.exit_codes:
                problems.append(f"{where} exited with {code}")
            events = self._log.events_of(run)
            problems += [f"{where}: {p}" for p in miscounted(events, run.declared.events)]
        if self._next:
            problems.append(f"declared for a run never started: {self._next}")
        problems += self.unexpected_output()
        if problems:
            pytest.fail(f"{self.log_path}:\n" + "\n".join(problems), pytrace=False)


def port_of(daemon) -> int:
    """The metrics port this run of the daemon bound (the tests configure port 0)."""
    return daemon.find("metrics_listening", this_run=True)[-1]["port"]


def get_json(daemon, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port_of(daemon)}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


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


class Mc:
    """MinIO's own client, `mc`, on a server: its admin API and its trace."""

    def __init__(self, server: S3Server, directory: Path):
        self.command = [binary("MC_BIN", "mc"), "--config-dir", str(directory / "mc")]
        self.env = clean_env()
        self("alias", "set", "t", f"http://{server.endpoint}", ACCESS_KEY, SECRET_KEY)

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [*self.command, *args], capture_output=True, text=True, env=self.env, timeout=60
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def popen(self, *args: str, stdout) -> subprocess.Popen:
        return subprocess.Popen(
            [*self.command, *args], stdout=stdout, stderr=subprocess.STDOUT, env=self.env
        )


class MinioUser:
    """A MinIO user that is not root (root passes every policy), whose rights on one
    bucket a test narrows and widens while streamer uses it."""

    def __init__(self, server: S3Server, bucket: str, directory: Path):
        self.mc = Mc(server, directory)
        self.bucket = bucket
        self.access_key = f"user-{uuid.uuid4().hex[:8]}"
        self.secret_key = uuid.uuid4().hex
        self.policy_file = directory / "policy.json"
        self.mc("admin", "user", "add", "t", self.access_key, self.secret_key)
        self.refuse_puts()
        self.mc("admin", "policy", "attach", "t", self.access_key, "--user", self.access_key)

    def refuse_puts(self, *patterns: str, action: str = "s3:PutObject") -> None:
        """Everything on the bucket, but `action` on keys matching `patterns` (none: no
        refusal)."""
        bucket = f"arn:aws:s3:::{self.bucket}"
        statements = [{"Effect": "Allow", "Action": ["s3:*"], "Resource": [bucket, f"{bucket}/*"]}]
        if patterns:
            denied = [f"{bucket}/{pattern}" for pattern in patterns]
            statements.append({"Effect": "Deny", "Action": [action], "Resource": denied})
        self.policy_file.write_text(json.dumps({"Version": "2012-10-17", "Statement": statements}))
        self.mc("admin", "policy", "create", "t", self.access_key, str(self.policy_file))


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts small real filesystems that a test can fill: tmpfs(name, size) -> its path."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root")
    mounted = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        options = ["-t", "tmpfs", "-o", f"size={size}"]
        subprocess.run(["mount", *options, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(path: Path) -> None:
    """Fill the filesystem `path` is on to the last byte, with the file `path`."""
    with open(path, "wb", buffering=0) as f:
        for block in (65536, 512):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)


@pytest.fixture
def proxy(minio):
    """A misbehaving network between streamer and the MinIO (tests/faultproxy.py)."""
    proxy = FaultProxy(("127.0.0.1", minio.port), free_port())
    yield proxy
    proxy.close()


def record_of(path, **changes):
    """A finished stream's record of the file at `path`, as it is now (4-byte chunks)."""
    import msgspec

    from streamer.records import StreamRecord, StreamState

    st = os.stat(path)
    record = StreamRecord(
        stream_id="s",
        path=str(path),
        inode=st.st_ino,
        device=st.st_dev,
        chunk_size=4,
        first_seen_at=datetime.now(UTC),
        state=StreamState.COMPLETE,
        total_size=st.st_size,
        mtime_ns=st.st_mtime_ns,
    )
    return msgspec.structs.replace(record, **changes)


def over_tls(server, **s3) -> dict:
    """The `s3` settings to reach `server` (or a TLS proxy) over https with its CA."""
    return {"secure": True, "ca_file": str(server.ca_file), **s3}


def chunk_store(server, bucket: str, **s3):
    """The test's own S3 side of streamer, on `server`, with the tests' key layout."""
    from streamer.chunkstore import ChunkStore
    from streamer.config import S3Config

    config = S3Config(
        endpoint=server.endpoint,
        bucket=bucket,
        prefix="rec",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        **s3,
    )
    return ChunkStore(config, "test-host")


@pytest.fixture
def tls_proxy(minio, tmp_path):
    """The fault proxy speaking https to streamer (its own private CA, `ca_file`) and
    plain http to the MinIO: requests are seen, and refused, over https too."""
    certs = make_certificates(tmp_path / "proxy-certs")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "public.crt", certs / "private.key")
    proxy = FaultProxy(("127.0.0.1", minio.port), free_port(), tls=context)
    proxy.ca_file = certs / "CAs" / "ca.crt"
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
            "metrics": {"host": "127.0.0.1", "port": 0},
            "workers": {"count": 2},
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
        daemon.stop()
    for daemon in daemons:
        daemon.check()


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


def objects(server: S3Server, bucket: str, stream_id: str, prefix: str = "rec/test-host") -> dict:
    """The stream's objects as S3 last wrote them: key -> (ETag, last modified). Compared
    before and after, it shows from S3's side whether anything was written again."""
    return {
        o.object_name: (o.etag, o.last_modified)
        for o in server.client.list_objects(bucket, prefix=f"{prefix}/{stream_id}/", recursive=True)
    }


def manifest_of(client: Minio, bucket: str, stream_id: str, prefix: str = "rec/test-host") -> dict:
    return json.loads(object_bytes(client, bucket, f"{prefix}/{stream_id}/metadata.json"))


def reassemble(client: Minio, bucket: str, manifest: dict) -> bytes:
    return b"".join(object_bytes(client, bucket, c["key"]) for c in manifest["chunks"])


def assert_exact(
    server: S3Server, daemon: Daemon, stream_id: str, path: Path, sha256: bool = True
) -> dict:
    """The stream's chunks in S3, joined, are the file, byte for byte, and its manifest
    lists them in order, without gap or overlap; it gives the file's crc64nvme, combined
    from its chunks', and its sha256 (`sha256`: integrity.file_sha256 is on) or none."""
    from awscrt.checksums import crc64nvme

    manifest = manifest_of(server.client, daemon.bucket, stream_id)
    data = reassemble(server.client, daemon.bucket, manifest)
    assert hashlib.sha256(data).hexdigest() == sha256_file(path)
    assert manifest["sha256"] == (sha256_file(path) if sha256 else None)
    assert manifest["crc64nvme"] == f"{crc64nvme(path.read_bytes()):016x}"
    assert manifest["crc64nvme_checked_by"] == "streamer"
    assert manifest["total_size"] == len(data) == path.stat().st_size
    assert [c["index"] for c in manifest["chunks"]] == list(range(manifest["chunk_count"]))
    ends = [c["offset"] + c["size"] for c in manifest["chunks"]]
    assert [c["offset"] for c in manifest["chunks"]] == [0, *ends[:-1]]
    return manifest


def others_flow(server: S3Server, daemon: Daemon, parked: str, path: Path, data: bytes) -> None:
    """Another recording finishes exact while the stream `parked` waits."""
    path.write_bytes(data)
    flowed = wait_until(
        lambda: [e for e in daemon.find("stream_finished") if e["stream_id"] != parked],
        30,
        what="the other stream to finish",
    )[0]
    assert_exact(server, daemon, flowed["stream_id"], path)
    assert not daemon.find("stream_finished", stream_id=parked)
