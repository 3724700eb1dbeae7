"""`make bench`: streamer against the S3 tools users would script instead (mc, s5cmd, the
AWS CLI, rclone), every figure measured in one run against one MinIO, over http and over
https (a certificate from a private CA the bench makes, given to every tool). Prints the
tables and writes them to ops/bench/RESULTS.md.

Figures from one run are compared with each other only: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

MiB, GiB = 1 << 20, 1 << 30
LONG_RATE = 64 * MiB  # a long recording, written fast enough to be one in seconds
HERE = Path(__file__).resolve().parent
# The test suite's real parts: a MinIO server process, and its small helpers.
sys.path.insert(0, str(HERE.parents[1] / "tests"))
from conftest import free_port, wait_until  # noqa: E402
from harness import Daemon, scrape  # noqa: E402
from integration.distributed import DistributedMinio  # noqa: E402
from integration.servers import ACCESS_KEY as ACCESS  # noqa: E402
from integration.servers import SECRET_KEY as SECRET  # noqa: E402
from integration.servers import MinioServer, make_certificates  # noqa: E402
from integration.test_restore import written_stream  # noqa: E402
from minio.deleteobjects import DeleteObject  # noqa: E402

from streamer.layout import Layout  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


# Processes: CPU and memory of a whole process tree


def children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_of(pid: int) -> list[int]:
    tree, found, todo = children_of(), [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += tree.get(p, [])
    return found


def rss_and_cpu(pids: list[int]) -> tuple[int, float]:
    """Memory of `pids` together (proportional set size: a page shared by forked processes
    counts once in all), and the CPU seconds they used (plus their reaped children's)."""
    rss, ticks = 0, 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                rss += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except OSError:
            continue
    return rss, ticks / TICK


class Sampler:
    """Peak memory (PSS) of a process tree, sampled every 50 ms: of the whole tree, and of
    the root and of its busiest child on their own."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.cpu = pid, 0, 0.0
        self.peak_root, self.peak_child = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = tree_of(self.pid)
            rss, cpu = rss_and_cpu(pids)
            self.peak, self.cpu = max(self.peak, rss), max(self.cpu, cpu)
            self.peak_root = max(self.peak_root, rss_and_cpu([self.pid])[0])
            children = [rss_and_cpu([p])[0] for p in pids if p != self.pid]
            self.peak_child = max([self.peak_child, *children])
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Run:
    seconds: float
    cpu: float  # CPU seconds of the whole process tree
    peak_rss: int  # bytes: the tree's proportional set size, at its peak
    # bytes: the root process's own PSS at its peak, and the largest of its children's
    peak_root: int = 0
    peak_child: int = 0
    extra: dict = field(default_factory=dict)


def measured(command: list[str], env: dict) -> Run:
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = Sampler(process.pid)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    sampler.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"bench: {command[0]} failed: {process.stderr.read().decode()[-2000:]}")
    return Run(seconds, usage.ru_utime + usage.ru_stime, sampler.peak)


# The S3 server


def clear(minio: MinioServer) -> None:
    """Empty the bucket between runs, so every tool writes into the same state."""
    listed = minio.client.list_objects("bench", recursive=True)
    names = [DeleteObject(o.object_name) for o in listed]
    for error in minio.client.remove_objects("bench", names):
        raise SystemExit(f"bench: cannot clear the bucket: {error}")


# The peers


def scheme(minio: MinioServer) -> str:
    return "https" if minio.ca_file else "http"


def peer_env(minio: MinioServer, work: Path) -> dict:
    tls = {}
    if minio.ca_file:
        # mc reads its CAs from its config directory; the Go tools (s5cmd, rclone) from
        # SSL_CERT_FILE; the AWS CLI from AWS_CA_BUNDLE.
        cas = work / "mc" / "certs" / "CAs"
        cas.mkdir(parents=True, exist_ok=True)
        shutil.copy(minio.ca_file, cas / "ca.crt")
        tls = {"SSL_CERT_FILE": str(minio.ca_file), "AWS_CA_BUNDLE": str(minio.ca_file)}
    return {
        **os.environ,
        **tls,
        "AWS_ACCESS_KEY_ID": ACCESS,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(work / "aws-config"),
        "MC_HOST_bench": f"{scheme(minio)}://{ACCESS}:{SECRET}@{minio.endpoint}",
        "MC_CONFIG_DIR": str(work / "mc"),
        "RCLONE_CONFIG": str(work / "rclone.conf"),
        "HOME": str(work),
    }


def peer_commands(tools: dict, minio: MinioServer, source: Path, name: str) -> dict[str, list[str]]:
    """How each peer copies `source` (a directory, or one file called `name`) to bench/<tool>/."""
    many, url = source.is_dir(), f"{scheme(minio)}://{minio.endpoint}"
    recursive = ["--recursive"] if many else []
    rclone_s3 = [
        "--s3-provider=Minio",
        f"--s3-endpoint={url}",
        f"--s3-access-key-id={ACCESS}",
        f"--s3-secret-access-key={SECRET}",
        "--s3-region=us-east-1",
    ]
    return {
        "mc": [tools["mc"], "cp", "--quiet", *recursive,
               f"{source}/" if many else str(source), f"bench/bench/mc/{name}"],
        "s5cmd": [tools["s5cmd"], "--endpoint-url", url, "cp",
                  f"{source}/*" if many else str(source), f"s3://bench/s5cmd/{name}"],
        "aws s3 cp": [tools["aws"], "s3", "cp", "--only-show-errors", "--endpoint-url",
                      url, *recursive, str(source), f"s3://bench/aws/{name}"],
        "rclone": [tools["rclone"], "copy" if many else "copyto", *rclone_s3, str(source),
                   f":s3:bench/rclone/{name}"],
    }  # fmt: skip


# streamer


class Streamer(Daemon):
    """`streamer run` as the test suite runs it, configured by environment variables, with
    its process tree's CPU and memory measured."""

    def __init__(self, work: Path, minio: MinioServer, watch: Path, **settings):
        self.metrics_port = free_port()
        env = {
            "STREAMER_WATCH_DIRECTORY": str(watch),
            "STREAMER_CHECKPOINT_PATH": str(work / "checkpoint"),
            "STREAMER_S3_ENDPOINT": minio.endpoint,
            "STREAMER_S3_BUCKET": "bench",
            "STREAMER_S3_ACCESS_KEY": ACCESS,
            "STREAMER_S3_SECRET_KEY": SECRET,
            "STREAMER_METRICS_HOST": "127.0.0.1",
            "STREAMER_METRICS_PORT": str(self.metrics_port),
            "STREAMER_INSTANCE": "bench",
            **(
                {"STREAMER_S3_SECURE": "true", "STREAMER_S3_CA_FILE": str(minio.ca_file)}
                if minio.ca_file
                else {}
            ),
            **{f"STREAMER_{k.upper()}": str(v) for k, v in settings.items()},
        }
        config = work / "config.json"
        config.write_text("{}")
        super().__init__(config, work / "streamer.log", env=env)

    def start(self) -> Streamer:
        self.started, self.wall_started = time.perf_counter(), time.time()
        super().start(wait=False)
        self.sampler = Sampler(self.process.pid)
        return self

    def seconds_until(self, event: str, count: int, timeout: float) -> float:
        """Seconds from exec to the `count`th `event`, by the log's own timestamp."""
        found = self.wait_for(event, timeout=timeout, count=count)
        return ts(found[count - 1]) - self.wall_started

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/readyz"
            return urllib.request.urlopen(url, timeout=1).status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def stop(self) -> Run:
        self.process.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(self.process.pid, 0)
        self.sampler.stop()
        seconds = time.perf_counter() - self.started
        sampler = self.sampler
        cpu = usage.ru_utime + usage.ru_stime
        return Run(seconds, cpu, sampler.peak, sampler.peak_root, sampler.peak_child)


def ts(event: dict) -> float:
    return datetime.datetime.fromisoformat(event["ts"]).timestamp()


# Test data


def make_recording(ffmpeg: str, path: Path) -> bytes:
    """A real recording: ffmpeg's bytes, to be copied to any size."""
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "20",
         "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "8M", "-c:a", "aac", str(path)],
        check=True,
    )  # fmt: skip
    return path.read_bytes()


def write_sized(path: Path, size: int, pattern: bytes) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            part = pattern[: min(left, len(pattern))]
            f.write(part)
            left -= len(part)
    old = time.time() - 3600  # finished an hour ago
    os.utime(path, (old, old))


def make_set(directory: Path, files: int, total: int, pattern: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        write_sized(directory / f"rec-{i:04d}.mp4", total // files, pattern)
    return directory


# The measurements


IDLE_TIMEOUT = 1.0  # for files that are already finished; the live case uses its own


def streamer_upload(work: Path, minio: MinioServer, source: Path, **settings) -> Run:
    """Upload every file in `source` (already finished); the time is until the last
    metadata.json, minus the idle timeout streamer must wait to know a file is done."""
    clear(minio)
    files = len(list(source.iterdir()))
    home = Path(tempfile.mkdtemp(dir=work))
    daemon = Streamer(home, minio, source, stream_idle_timeout=IDLE_TIMEOUT, **settings)
    daemon.start()
    seconds = daemon.seconds_until("stream_finished", files, timeout=1800) - IDLE_TIMEOUT
    run = daemon.stop()
    run.seconds = seconds
    shutil.rmtree(home)
    return run


def throughput(work, minio, tools, sets) -> list[tuple]:
    rows = []
    env = peer_env(minio, work)
    for label, source in sets:
        size = sum(p.stat().st_size for p in source.iterdir())
        runs = {
            "streamer": streamer_upload(work, minio, source),
            "streamer, no assembly": streamer_upload(work, minio, source, stream_assemble="false"),
        }
        for tool, command in peer_commands(tools, minio, *peer_source(source)).items():
            clear(minio)
            runs[tool] = measured(command, env)
        rows.append((label, size, runs))
    return rows


IDLE_LEAVES = ("select", "poll", "_worker", "wait", "serve_forever", "sleep", "get", "acquire")


def profile(work: Path, minio: MinioServer, source: Path, py_spy: str, top=10, **settings) -> list:
    """Where streamer's CPU goes, uploading `source` like for like (no assembly): py-spy's
    samples of every process, by the line on top of the stack (C code, hashing or TLS,
    counts on the Python line that called it), as a share of the busy samples."""
    clear(minio)
    home = Path(tempfile.mkdtemp(dir=work))
    out = home / "profile.txt"
    daemon = Streamer(
        home,
        minio,
        source,
        stream_idle_timeout=IDLE_TIMEOUT,
        stream_assemble="false",
        **settings,
    ).start()
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(daemon.process.pid), "--subprocesses", "--nonblocking",
         "--rate", "250", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    daemon.wait_for("stream_finished", timeout=1800, count=len(list(source.iterdir())))
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)
    daemon.stop()
    leaves: dict[str, int] = {}
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1].strip()
        if leaf.split(" ")[0].rsplit(".", 1)[-1] not in IDLE_LEAVES:
            leaves[leaf] = leaves.get(leaf, 0) + int(count)
    shutil.rmtree(home)
    busy = sum(leaves.values()) or 1
    ranked = sorted(leaves.items(), key=lambda item: -item[1])
    return [(leaf, n / busy) for leaf, n in ranked[:top]]


def peer_source(source: Path) -> tuple[Path, str]:
    files = list(source.iterdir())
    return (files[0], files[0].name) if len(files) == 1 else (source, "")


def live_lag(
    work: Path, minio: MinioServer, pattern: bytes, streams=8, rate=MiB, seconds=60
) -> dict:
    """`streams` recordings growing at `rate` bytes/s: how long each full chunk waits from
    its last byte written to its commit, and how long completion takes after the last write."""
    clear(minio)
    home = Path(tempfile.mkdtemp(dir=work))
    watch = home / "input"
    watch.mkdir()
    idle = 5.0
    chunk = 10 * MiB
    daemon = Streamer(home, minio, watch, stream_idle_timeout=idle)
    daemon.start()
    wait_until(daemon.ready, 30, what="streamer ready")
    written: dict[str, list[float]] = {}  # name -> when each chunk's last byte was written
    last_write: dict[str, float] = {}

    def write(name: str) -> None:
        marks, block, done = [], 64 * 1024, 0
        began = time.time()
        with open(watch / name, "wb") as f:
            while done < rate * seconds:
                f.write(pattern[done % len(pattern) :][:block].ljust(block, b"\0"))
                f.flush()
                wrote = time.time()
                done += block
                if done % chunk == 0:
                    marks.append(wrote)
                time.sleep(max(0.0, began + done / rate - time.time()))
        written[name], last_write[name] = marks, wrote

    writers = [threading.Thread(target=write, args=(f"live-{i}.mp4",)) for i in range(streams)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    daemon.wait_for("stream_finished", timeout=120, count=streams)
    events = daemon.events
    run = daemon.stop()
    paths = {
        e["stream_id"]: Path(e["path"]).name for e in events if e["event"] == "stream_discovered"
    }
    lags, upload_seconds = [], []
    for e in events:
        if e["event"] == "chunk_uploaded" and e["size"] == chunk:
            marks = written[paths[e["stream_id"]]]
            if e["index"] < len(marks):
                lags.append(ts(e) - marks[e["index"]])
                upload_seconds.append(e["seconds"])
    finish = [
        ts(e) - last_write[paths[e["stream_id"]]] - idle
        for e in events
        if e["event"] == "stream_finished"
    ]
    shutil.rmtree(home)
    return {
        "lag_p50": percentile(lags, 50),
        "lag_p99": percentile(lags, 99),
        "chunk_upload_p50": percentile(upload_seconds, 50),
        "samples": len(lags),
        "finish_max": max(finish),
        "finish_p50": percentile(finish, 50),
        "size": rate * seconds,
        "run": run,
    }


RECORDING_BITRATE = "4M"  # about 515 KB/s, with its audio and container
CAP = 700_000  # bytes/s: just above the recording's rate


def assembly_cost(work: Path, minio: MinioServer, ffmpeg: str, seconds: int = 30) -> dict:
    """A live plain-MP4 recording (ffmpeg at real time; it rewrites its first bytes when it
    ends), 5 MiB chunks so its whole object is joined by server-side copy: what S3 copies,
    and how long after the last write `metadata.json` comes, with and without a bandwidth
    cap just above the recording's rate."""
    results = {}
    for label, cap in (("uncapped", None), (f"capped at {CAP // 1000} KB/s", CAP)):
        clear(minio)
        home = Path(tempfile.mkdtemp(dir=work))
        watch = home / "input"
        watch.mkdir()
        idle = 3.0
        settings = {"stream_idle_timeout": idle, "stream_chunk_size": 5 * MiB}
        if cap:
            settings["s3_max_bytes_per_second"] = cap
        daemon = Streamer(home, minio, watch, **settings).start()
        wait_until(daemon.ready, 30, what="streamer ready")
        path = watch / "live.mp4"
        subprocess.run(
            [ffmpeg, "-loglevel", "error", "-re", "-f", "lavfi", "-i",
             "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i",
             "sine=frequency=440:sample_rate=48000", "-t", str(seconds), "-c:v", "libx264",
             "-preset", "ultrafast", "-b:v", RECORDING_BITRATE, "-maxrate", RECORDING_BITRATE,
             "-bufsize", "8M", "-c:a", "aac", str(path)],
            check=True,
        )  # fmt: skip
        last_write = path.stat().st_mtime
        size = path.stat().st_size
        finished = daemon.wait_for("stream_finished", timeout=600)[0]
        assembled = daemon.wait_for("stream_assembled", timeout=10)[0]
        values = scrape(daemon)
        daemon.stop()
        live = values.get("streamer_assembly_parts_copied_total{when=live}", 0)
        at_end = values.get("streamer_assembly_parts_copied_total{when=completion}", 0)
        chunks = finished["chunks"]
        results[label] = {
            "size": size,
            "rate": size / seconds,
            "method": assembled["method"],
            "parts": chunks,
            "live": int(live),
            "at_end": int(at_end),
            # Every byte once, and each part copied again (a rewritten chunk) once more.
            "copied": size + max(0, int(live + at_end) - chunks) * 5 * MiB,
            "finish": ts(finished) - last_write,
            "idle": idle,
        }
        shutil.rmtree(home)
    return results


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def scale(
    work: Path, minio: MinioServer, pattern: bytes, counts=(1, 8, 50, 200), total=GiB
) -> dict:
    """CPU-s per GiB and peak RSS with `count` streams at once, the same bytes in total."""
    results = {}
    for count in counts:
        source = make_set(work / f"scale-{count}", count, total, pattern)
        results[count] = streamer_upload(work, minio, source)
        shutil.rmtree(source)
    return results


def idle_cpu(work: Path, minio: MinioServer, files=1000, window=20.0) -> tuple[float, int]:
    """CPU % of all streamer processes over `window` seconds, 1,000 finished files present."""
    clear(minio)
    home = Path(tempfile.mkdtemp(dir=work))
    watch = home / "input"
    watch.mkdir()
    for i in range(files):
        (watch / f"done-{i:04d}.mp4").write_bytes(b"\0" * 4096)
    daemon = Streamer(home, minio, watch, stream_idle_timeout=IDLE_TIMEOUT)
    daemon.start()
    daemon.wait_for("stream_finished", timeout=600, count=files)
    time.sleep(2)
    _, before = rss_and_cpu(tree_of(daemon.process.pid))
    time.sleep(window)
    _, after = rss_and_cpu(tree_of(daemon.process.pid))
    daemon.stop()
    shutil.rmtree(home)
    return 100 * (after - before) / window, files


READY_COUNTS = (1_000, 10_000, 100_000)


def ready_time(work: Path, minio: MinioServer, counts=READY_COUNTS) -> dict:
    """Seconds from exec to /readyz answering 200, with `count` finished streams in the
    checkpoint store (written straight into it: uploading 100,000 files would take hours)."""
    from streamer.checkpoint import CheckpointStore
    from streamer.records import StreamRecord, StreamState

    results = {}
    for count in counts:
        home = Path(tempfile.mkdtemp(dir=work))
        (home / "input").mkdir()
        # Filled on tmpfs, where the per-commit fsync costs nothing, then copied.
        shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
        store = CheckpointStore(str(shm), 4 * GiB)
        store.claim_instance("bench", "bench")
        now = datetime.datetime.now(datetime.UTC)
        for i in range(count):
            store.create_stream(
                StreamRecord(
                    stream_id=f"old-{i:06d}",
                    path=str(home / "input" / f"old-{i:06d}.mp4"),
                    inode=10_000_000 + i,
                    device=1,
                    chunk_size=10 * MiB,
                    first_seen_at=now,
                    state=StreamState.COMPLETE,
                    committed_bytes=20 * MiB,
                    chunk_count=2,
                    total_size=20 * MiB,
                    completed_at=now,
                )
            )
        store.backup(str(home / "checkpoint"))
        store.close()
        shutil.rmtree(shm)
        clear(minio)  # a new checkpoint store: the last one's claim on the instance goes
        daemon = Streamer(home, minio, home / "input")
        daemon.start()
        wait_until(daemon.ready, 120, interval=0.01, what="streamer ready")
        results[count] = time.perf_counter() - daemon.started
        daemon.stop()
        shutil.rmtree(home)
    return results


# A fleet: many streams in one bucket, several hosts uploading at once


FLEET_INSTANCES = 8
FLEET_COUNTS = (1_000, 10_000)
FLEET_CHUNK = 4096  # bytes: each stream's one chunk object
FLEET_TIMES = 3  # each command run this many times; the median run is reported
FIRST_SEEN = datetime.datetime(2026, 12, 6, 8, tzinfo=datetime.UTC)


def fleet_stream(i: int) -> tuple[str, str]:
    """The instance and stream id of the fleet's stream `i`: 8 hosts, 25 cameras each, a
    recording a second."""
    at = (FIRST_SEEN + datetime.timedelta(seconds=i)).strftime("%Y%m%dT%H%M%SZ")
    return f"gw-{i % FLEET_INSTANCES:02d}", f"cam{i // FLEET_INSTANCES % 25:02d}/rec-{i:05d}-{at}"


def fill_fleet(minio: MinioServer, prefix: str, start: int, stop: int) -> None:
    """Streams `start` to `stop` written straight into the bucket, as many at once as
    the S3 client's connections allow: a chunk and a real metadata.json each."""

    def write(i: int) -> None:
        instance, stream_id = fleet_stream(i)
        layout = Layout(prefix, instance)
        written_stream(minio.client, "bench", layout, stream_id, 1, FLEET_CHUNK, threads=1)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(write, range(start, stop)))


def median_run(command: list[str], env: dict, before=lambda: None) -> Run:
    """The median of FLEET_TIMES runs of `command`, `before` called ahead of each."""
    runs = []
    for _ in range(FLEET_TIMES):
        before()
        runs.append(measured(command, env))
    return sorted(runs, key=lambda r: r.seconds)[FLEET_TIMES // 2]


def fleet_reading(work: Path, minio: MinioServer, mc: str, counts=FLEET_COUNTS) -> dict:
    """`remote list` and `restore NAME` with `count` streams in the bucket, beside mc
    listing the same prefix and copying one object; wall time and peak memory."""
    clear(minio)
    prefix = "fleet"
    home = Path(tempfile.mkdtemp(dir=work))
    (home / "input").mkdir()
    config = home / "config.json"
    config.write_text("{}")
    env = {
        **peer_env(minio, work),
        "STREAMER_WATCH_DIRECTORY": str(home / "input"),
        "STREAMER_CHECKPOINT_PATH": str(home / "checkpoint"),
        "STREAMER_S3_ENDPOINT": minio.endpoint,
        "STREAMER_S3_BUCKET": "bench",
        "STREAMER_S3_PREFIX": prefix,
        "STREAMER_S3_ACCESS_KEY": ACCESS,
        "STREAMER_S3_SECRET_KEY": SECRET,
        "STREAMER_INSTANCE": fleet_stream(0)[0],
    }
    streamer = [sys.executable, "-m", "streamer"]
    results, filled = {}, 0
    for count in counts:
        fill_fleet(minio, prefix, filled, count)
        filled = count
        instance, stream_id = fleet_stream(count // 2)
        name = stream_id.rsplit("-", 1)[0]  # the recording's name: its id without the time
        out = home / "restored.mp4"
        chunk = Layout(prefix, instance).chunk_key(stream_id, 0)

        def unlink(out=out) -> None:
            out.unlink(missing_ok=True)

        config_args = ["--config", str(config)]
        results[count] = {
            "streamer remote list --all-instances": median_run(
                [*streamer, "remote", "list", "--all-instances", *config_args], env
            ),
            "streamer remote list --all-instances --json": median_run(
                [*streamer, "remote", "list", "--all-instances", "--json", *config_args], env
            ),
            "streamer restore NAME -o FILE": median_run(
                [*streamer, "restore", name, "-o", str(out), *config_args], env, unlink
            ),
            "mc ls --recursive": median_run(
                [mc, "ls", "--recursive", f"bench/bench/{prefix}/"], env
            ),
            "mc cp (one object)": median_run(
                [mc, "cp", "--quiet", f"bench/bench/{chunk}", str(out)], env, unlink
            ),
        }  # fmt: skip
    clear(minio)
    shutil.rmtree(home)
    return results


HOSTS = 4  # daemons at once, each a host of its own


def host_sets(work: Path, total: int, pattern: bytes) -> list[Path]:
    """A set of finished files for each host: two files each, `total` bytes in all."""
    return [make_set(work / f"host-{n}", 2, total // HOSTS, pattern) for n in range(HOSTS)]


def aggregate_throughput(
    work: Path, store, endpoints: list[str], sets: list[Path], mc: str
) -> dict[str, Run]:
    """HOSTS daemons at once into one store, each with its own watch directory,
    checkpoint store and instance, its own set of finished files, through its own
    endpoint (`endpoints`, one a host); beside HOSTS `mc cp --recursive` at once, each
    its own set through the same endpoint. Time until the last file is in S3, CPU of
    every process, the largest peak memory of one host."""
    clear(store)
    daemons = []
    for n, (endpoint, source) in enumerate(zip(endpoints, sets, strict=True)):
        home = Path(tempfile.mkdtemp(dir=work))
        daemons.append(
            Streamer(
                home, store, source, stream_idle_timeout=IDLE_TIMEOUT,
                stream_assemble="false", instance=f"host-{n}", s3_endpoint=endpoint,
            )
        )  # fmt: skip
    for daemon in daemons:
        daemon.start()
    began = min(d.wall_started for d in daemons)
    done = max(ts(d.wait_for("stream_finished", timeout=1800, count=2)[1]) for d in daemons)
    runs = [d.stop() for d in daemons]
    for daemon in daemons:
        shutil.rmtree(daemon.config_path.parent)
    ours = Run(done - began - IDLE_TIMEOUT, sum(r.cpu for r in runs), max(r.peak_rss for r in runs))

    clear(store)
    started = time.perf_counter()
    copies = []
    for n, (endpoint, source) in enumerate(zip(endpoints, sets, strict=True)):
        env = {
            **peer_env(store, work),
            "MC_HOST_bench": f"http://{ACCESS}:{SECRET}@{endpoint}",
        }
        command = [mc, "cp", "--quiet", "--recursive", f"{source}/", f"bench/bench/mc/{n}/"]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        copies.append((process, Sampler(process.pid)))
    cpu, peak = 0.0, 0
    for process, sampler in copies:
        _, status, usage = os.wait4(process.pid, 0)
        sampler.stop()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"bench: mc failed: {process.stderr.read().decode()[-2000:]}")
        cpu += usage.ru_utime + usage.ru_stime
        peak = max(peak, sampler.peak)
    theirs = Run(time.perf_counter() - started, cpu, peak)
    clear(store)
    return {"streamer, no assembly": ours, "mc": theirs}


def fleet_throughput(work: Path, minio: MinioServer, args, total: int, pattern: bytes) -> dict:
    """aggregate_throughput against the single MinIO (every host through its one
    endpoint) and a distributed one (4 nodes, 2 drives each; host n through node n)."""
    sets = host_sets(work, total, pattern)
    results = {
        "one MinIO": aggregate_throughput(work, minio, [minio.endpoint] * HOSTS, sets, args.mc)
    }
    spread = DistributedMinio(args.minio, work / "distributed")
    try:
        spread.client.make_bucket("bench")
        endpoints = [f"127.0.0.1:{port}" for port in spread.node_ports]
        results["distributed MinIO, 4 nodes x 2 drives"] = aggregate_throughput(
            work, spread, endpoints, sets, args.mc
        )
    finally:
        spread.stop()
    for source in sets:
        shutil.rmtree(source)
    return results


# The report


# Integrity and CPU: streamer's two integrity modes against mc and s5cmd, like for like,
# with the floor each is measured against


INTEGRITY_BEGIN, INTEGRITY_END = "<!-- integrity: begin -->", "<!-- integrity: end -->"
MODES = {"file_sha256 on": {}, "file_sha256 off": {"integrity_file_sha256": "false"}}
# CPU over mc's a mode may spend, by link: one sha256 more than mc where the file's is taken.
CPU_TARGETS = {
    ("http", "file_sha256 on"): 1.3,
    ("https", "file_sha256 on"): 1.5,
    ("http", "file_sha256 off"): 1.0,
    ("https", "file_sha256 off"): 1.0,
}
# What a chunk's bytes cost at least, by link and mode: one read, the hashes its checks
# need, and the transport. Over http a chunk's sha256 is signed, and the file's is another.
FLOOR_PARTS = {
    ("https", "file_sha256 off"): ("read", "crc64nvme", "tls"),
    ("https", "file_sha256 on"): ("read", "crc64nvme", "sha256", "tls"),
    ("http", "file_sha256 off"): ("read", "crc64nvme", "sha256", "tcp"),
    ("http", "file_sha256 on"): ("read", "crc64nvme", "sha256", "sha256", "tcp"),
}
SINK = """
import socket, ssl, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
if len(sys.argv) > 1:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    conn = context.wrap_socket(conn, server_side=True)
while conn.recv(1 << 20):
    pass
"""


def floors(source: Path, certs: Path) -> dict[str, float]:
    """CPU-seconds per GiB, in this process, of what a chunk's bytes cost at least: one
    read of `source` from the page cache in 1 MiB pieces, a crc64nvme and a sha256 of as
    many bytes, and sending them over TLS 1.3 (Python's ssl, as streamer sends) and over
    plain TCP, each to a sink in another process."""
    import hashlib
    import socket
    import ssl

    from awscrt.checksums import crc64nvme

    buffer = memoryview(bytearray(MiB))
    size = source.stat().st_size
    pieces = size // MiB

    def cpu(step) -> float:
        started = time.process_time()
        step()
        return (time.process_time() - started) / (size / GiB)

    def read() -> None:
        fd = os.open(source, os.O_RDONLY)
        try:
            offset = 0
            while got := os.preadv(fd, [buffer], offset):
                offset += got
        finally:
            os.close(fd)

    def crc() -> None:
        value = 0
        for _ in range(pieces):
            value = crc64nvme(buffer, value)

    def sha() -> None:
        digest = hashlib.sha256()
        for _ in range(pieces):
            digest.update(buffer)

    def send(tls: bool) -> float:
        args = [str(certs / "public.crt"), str(certs / "private.key")] if tls else []
        sink = subprocess.Popen(
            [sys.executable, "-c", SINK, *args], stdout=subprocess.PIPE, text=True
        )
        port = int(sink.stdout.readline())
        conn = socket.create_connection(("127.0.0.1", port))
        if tls:
            context = ssl.create_default_context(cafile=str(certs / "CAs" / "ca.crt"))
            conn = context.wrap_socket(conn, server_hostname="127.0.0.1")
        try:
            return cpu(lambda: [conn.sendall(buffer) for _ in range(pieces)])
        finally:
            conn.close()
            sink.wait(timeout=60)

    return {
        "read": cpu(read),
        "crc64nvme": cpu(crc),
        "sha256": cpu(sha),
        "tls": send(tls=True),
        "tcp": send(tls=False),
    }


def start_and_stop(work: Path, minio: MinioServer) -> float:
    """CPU-seconds of the daemon's start to ready and its stop, with nothing to upload: what
    it pays once per run, where a peer's process starts for each copy (median of three)."""
    costs = []
    for _ in range(3):
        clear(minio)  # a store of its own each time: the instance's claim goes with it
        home = Path(tempfile.mkdtemp(dir=work))
        (home / "input").mkdir()
        daemon = Streamer(home, minio, home / "input").start()
        wait_until(daemon.ready, 30, what="streamer ready")
        costs.append(daemon.stop().cpu)
        shutil.rmtree(home)
    return sorted(costs)[1]


def integrity_runs(work: Path, minio: MinioServer, tools: dict, sets) -> list[tuple]:
    """Each set uploaded by streamer in each integrity mode (no assembly), by mc, by s5cmd."""
    rows = []
    env = peer_env(minio, work)
    for label, source in sets:
        size = sum(p.stat().st_size for p in source.iterdir())
        runs = {
            f"streamer, {mode}": streamer_upload(
                work, minio, source, stream_assemble="false", **settings
            )
            for mode, settings in MODES.items()
        }
        commands = peer_commands({**tools, "aws": "", "rclone": ""}, minio, *peer_source(source))
        for tool in ("mc", "s5cmd"):
            clear(minio)
            runs[tool] = measured(commands[tool], env)
        rows.append((label, size, runs))
    return rows


def integrity_section(
    work: Path, minio: MinioServer, tls: MinioServer, args, sets, certs: Path, pattern: bytes
) -> str:
    """The integrity section of RESULTS.md: targets, floors, what each tool checks, the
    profiles, and the memory at 50 streams."""
    tools = {"mc": args.mc, "s5cmd": args.s5cmd}
    measured_floors = floors(next(sets[1][1].iterdir()), certs)
    fixed = start_and_stop(work, tls)
    runs = {
        "http": integrity_runs(work, minio, tools, sets),
        "https": integrity_runs(work, tls, tools, sets),
    }
    profiles = {
        mode: profile(work, tls, sets[1][1], args.py_spy, **settings)
        for mode, settings in MODES.items()
    }
    fifty = make_set(work / "fifty", 50, GiB, pattern)
    many = streamer_upload(work, minio, fifty)
    shutil.rmtree(fifty)
    return integrity_report(runs, measured_floors, fixed, profiles, sets[1][0], many, args.s5cmd)


# The profile before this work on the hot path: the run of 2026-11-30 (commit 92e4a49,
# of 5c1430b), 1 GiB in 1 file over https, no assembly; chunks crc32c'd, then sent.
PROFILE_BEFORE = [
    ("SSLSocket.send (ssl.py:1243)", 0.27),
    ("feed (streamer/bodies.py:75)", 0.22),
    ("Span.pieces (streamer/fileio.py:103)", 0.14),
    ("CRC32CHash.update (crc32c/_crc32hash.py:56)", 0.04),
    ("CheckpointStore._write (streamer/checkpoint.py:381)", 0.04),
    ("_create_fn (dataclasses.py:433)", 0.03),
    ("Uploader.handle_commands (streamer/uploader/process.py:240)", 0.03),
    ("SSLSocket.read (ssl.py:1167)", 0.03),
]
# What each tool's PUTs carry, seen in their request heads through a proxy (mc and s5cmd
# at the versions pinned in the Makefile, December 2026), and what streamer's carry.
CHECKS = [
    ("mc", "each part's sha256, signed piece by piece (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`)",
     "nothing: `UNSIGNED-PAYLOAD`, no checksum (TLS alone)"),
    ("s5cmd", "the body's sha256, signed, and its MD5 (`Content-MD5`)",
     "the same: sha256 signed, and MD5"),
    ("streamer, file_sha256 on", "each 1 MiB piece's sha256, signed piece by piece "
     "(`STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER`), and the chunk's crc64nvme in a signed "
     "trailer; the whole file's sha256", "each chunk's crc64nvme, in a trailer (TLS against "
     "tampering); the whole file's sha256"),
    ("streamer, file_sha256 off", "each 1 MiB piece's sha256, signed piece by piece, and the "
     "chunk's crc64nvme in a signed trailer",
     "each chunk's crc64nvme, in a trailer (TLS against tampering)"),
]  # fmt: skip


def integrity_report(
    runs: dict, floor: dict, fixed: float, profiles: dict, profiled: str, many: Run, s5cmd: str
) -> str:
    lines = [
        INTEGRITY_BEGIN,
        "## Like for like, against the targets: integrity and CPU",
        "",
        run_line("Run")
        + f" One MinIO on loopback; s5cmd {s5cmd_version(s5cmd)}. Already finished MP4 files "
        "(real ffmpeg output copied to size); streamer without assembly, as the peers make "
        "one object and no more.",
        "",
        "| link | set | streamer | MiB/s | vs the faster of mc and s5cmd | CPU-s/GiB | "
        "CPU over mc's | target | floor, CPU-s/GiB | CPU over its floor | "
        "less start and stop: CPU-s/GiB, over mc's | peak PSS MiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for link, rows in runs.items():
        for label, size, by_tool in rows:
            mc, fastest = by_tool["mc"], min(by_tool["mc"].seconds, by_tool["s5cmd"].seconds)
            for mode in MODES:
                run, target = by_tool[f"streamer, {mode}"], CPU_TARGETS[(link, mode)]
                cpu, low = run.cpu / (size / GiB), sum(floor[p] for p in FLOOR_PARTS[(link, mode)])
                pace = fastest / run.seconds
                met = "met" if run.cpu / mc.cpu <= target and pace >= 1.0 else "not met"
                lines.append(
                    f"| {link} | {label} | {mode} | {size / MiB / run.seconds:.0f} | "
                    f"{pace:.2f}x | {cpu:.2f} | {ratio(run.cpu, mc.cpu)} | "
                    f"<= {target:.1f}x CPU, >= 1.00x pace: {met} | {low:.2f} | "
                    f"{cpu / low:.2f}x | {(run.cpu - fixed) / (size / GiB):.2f}, "
                    f"{ratio(run.cpu - fixed, mc.cpu)} | {run.peak_rss / MiB:.0f} |"
                )
    lines += [
        "",
        "The peers, in the same run:",
        "",
        "| link | set | tool | MiB/s | CPU-s/GiB | peak PSS MiB |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for link, rows in runs.items():
        for label, size, by_tool in rows:
            for tool in ("mc", "s5cmd"):
                run = by_tool[tool]
                lines.append(
                    f"| {link} | {label} | {tool} | {size / MiB / run.seconds:.0f} | "
                    f"{run.cpu / (size / GiB):.2f} | {run.peak_rss / MiB:.0f} |"
                )
    lines += [
        "",
        "Pace above 1 means streamer is faster; CPU is of the whole process tree (streamer: "
        "the supervisor and its uploaders), memory the summed proportional set size at its "
        f"peak. With 50 streams at once (1 GiB in all, the defaults): peak PSS "
        f"{many.peak_rss / MiB:.0f} MiB (target < 100).",
        "",
        f"streamer is a daemon: its start to ready and its stop cost {fixed:.2f} CPU-s "
        "(median of three, nothing to upload), paid once however long it runs, where mc and "
        "s5cmd start a process for each copy. The CPU-s/GiB above include it; the column "
        "before the last leaves it out.",
        "",
        "Each floor is the least its bytes can cost, measured in the same run on one core: "
        "one read of the file, the hashes the mode's checks need, and sending the bytes. "
        + ", ".join(f"{part}: {value:.2f}" for part, value in floor.items())
        + " CPU-s/GiB (tls: Python's TLS 1.3 `sendall` of 1 MiB buffers to a local sink; tcp: "
        "plain `sendall`). Over https: one read, the crc64nvme, TLS, and with the file's "
        "sha256 that too; over http: one read, the crc64nvme, the sha256 signed piece by piece, "
        "plain TCP, and with the file's sha256 a second sha256.",
        "",
        "### What each tool checks",
        "",
        "| tool | over http | over https |",
        "| --- | --- | --- |",
        *[f"| {tool} | {http} | {https} |" for tool, http, https in CHECKS],
        "",
        "S3 checks every byte against what the PUT carries; nothing checks what it does not. "
        "mc over https sends the bytes with nothing to check them by but TLS: it spends the "
        "least CPU, and proves the least.",
        "",
        f"### Where streamer's CPU goes over https ({profiled}, no assembly)",
        "",
        "| before: share of busy samples | line on top of the stack |",
        "| ---: | --- |",
        *[f"| {share:.0%} | `{leaf}` |" for leaf, share in PROFILE_BEFORE],
        "",
        "Before: the run of 2026-11-30 (commit 92e4a49): each chunk read and crc32c'd, then "
        "read again and sent, and the whole file's sha256 fed on the first pass.",
        "",
    ]
    for mode, profiled in profiles.items():
        lines += [
            f"| now, {mode}: share of busy samples | line on top of the stack |",
            "| ---: | --- |",
            *[f"| {share:.0%} | `{leaf}` |" for leaf, share in profiled],
            "",
        ]
    lines += [
        "py-spy's samples of the supervisor and its uploaders, idle waits left out. Time in C "
        "(a hash, TLS, a read) counts on the Python line that called it.",
        INTEGRITY_END,
    ]
    return "\n".join(lines) + "\n"


def s5cmd_version(s5cmd: str) -> str:
    return subprocess.run([s5cmd, "version"], capture_output=True, text=True).stdout.strip()


def with_block(text: str, block: str, begin: str, end: str) -> str:
    """`text` (a RESULTS.md) with its block between `begin` and `end` replaced by `block`
    (which holds them), or `block` added at its end: the other sections stay as their own
    run left them."""
    if begin in text and end in text:
        before, _, rest = text.partition(begin)
        _, _, after = rest.partition(end)
        return before + block.rstrip("\n") + after
    return text.rstrip("\n") + "\n\n" + block


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def throughput_table(title: str, rows) -> list[str]:
    lines = [
        f"## {title}",
        "",
        "| set | tool | seconds | MiB/s | streamer vs tool | same, no assembly | "
        "CPU-s/GiB | peak memory MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, size, runs in rows:
        ours, lean = runs["streamer"], runs["streamer, no assembly"]
        for tool, run in runs.items():
            peer = not tool.startswith("streamer")
            lines.append(
                f"| {label} | {tool} | {run.seconds:.1f} | {size / MiB / run.seconds:.0f} | "
                f"{ratio(run.seconds, ours.seconds) if peer else ''} | "
                f"{ratio(run.seconds, lean.seconds) if peer else ''} | "
                f"{run.cpu / (size / GiB):.2f} | {run.peak_rss / MiB:.0f} |"
            )
    return [*lines, ""]


def assembly_table(results: dict) -> list[str]:
    first = next(iter(results.values()))
    lines = [
        "## Assembly's cost (a live plain-MP4 recording, 5 MiB chunks, idle timeout 3 s)",
        "",
        f"One ffmpeg recording at real time, {first['size'] / MiB:.1f} MiB at "
        f"{first['rate'] / 1000:.0f} KB/s; it rewrites its first bytes when it ends.",
        "",
        "| link | parts | copied live | copied at completion | bytes S3 copied server-side "
        "| last write to `metadata.json`, seconds (idle timeout included) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['parts']} | {r['live']} | {r['at_end']} | "
            f"{r['copied'] / MiB:.1f} MiB | {r['finish']:.1f} |"
        )
    lines += [
        "",
        "Server-side copies cost the host nothing but requests: S3 moves the bytes. What "
        "completion waits for on a capped link is the tail and the rewritten chunk 0 going "
        "through the cap.",
        "",
    ]
    return lines


def report(versions: dict, throughputs, lags, costs, total, idle, ready, assembly) -> str:
    live, long = lags
    lines = [
        "# streamer benchmark",
        "",
        run_line("Run of every section but the fleet's (which say their own)")
        + " One MinIO on loopback for every figure. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ".",
        "",
        "Figures from one run; compare them with each other, not with another run's.",
        "",
        *throughput_table(
            "Throughput over http (already finished MP4 files, real ffmpeg output copied to size)",
            throughputs["http"],
        ),
        *throughput_table(
            "Throughput over https (a certificate from a private CA, given to every tool)",
            throughputs["https"],
        ),
        f"streamer's time runs from its start to the last `metadata.json`, minus the idle "
        f"timeout ({IDLE_TIMEOUT:g} s) it waits to know a file is finished. "
        "`streamer vs tool` is the tool's time over streamer's: above 1 means streamer is faster. "
        "streamer also joins the chunks into one object in S3 (`stream.assemble`, a server-side "
        "copy of every byte) before it writes `metadata.json`; the peers make one object "
        "directly, so `no assembly` is the like-for-like comparison of moving the bytes. "
        "CPU and memory are of the whole process tree (streamer: the supervisor and its "
        "uploaders); memory is the summed proportional set size (PSS), in which a page shared "
        "by forked processes counts once, at its peak. streamer runs with its defaults here "
        "(the whole file's sha256 taken); what each tool checks, and both of streamer's "
        "integrity modes against the targets, are in the section on integrity and CPU.",
        "",
        *assembly_table(assembly),
        "## Live lag (10 MiB chunks, idle timeout 5 s)",
        "",
        f"| figure, seconds | 8 recordings growing at 1 MiB/s each | one growing at "
        f"{LONG_RATE // MiB} MiB/s to {long['size'] / GiB:g} GiB |",
        "| --- | ---: | ---: |",
        *[
            f"| {label} | {live[key]:.3f} | {long[key]:.3f} |"
            for label, key in (
                ("chunk's last byte written to chunk committed, p50", "lag_p50"),
                (f"same, p99 ({live['samples']} and {long['samples']} chunks)", "lag_p99"),
                ("one chunk's upload, p50", "chunk_upload_p50"),
                ("last write to `metadata.json` minus idle timeout, p50", "finish_p50"),
                ("same, worst stream", "finish_max"),
            )
        ],
        "",
        "The whole-recording object is assembled in S3 while the recording grows (each "
        "committed chunk copied into its multipart upload), and the file is compared with its "
        "chunks once it has been quiet for half the idle timeout: completion has only the tail, "
        "and the chunks the recorder rewrote, left to do, however long the recording.",
        "",
        f"## Cost and scale ({total / GiB:g} GiB in total, split over N streams at once)",
        "",
        "| streams | seconds | MiB/s | CPU-s/GiB | peak memory MiB (all processes) | "
        "supervisor | largest uploader |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for count, run in costs.items():
        lines.append(
            f"| {count} | {run.seconds:.1f} | {total / MiB / run.seconds:.0f} | "
            f"{run.cpu / (total / GiB):.2f} | {run.peak_rss / MiB:.0f} | "
            f"{run.peak_root / MiB:.0f} | {run.peak_child / MiB:.0f} |"
        )
    lines += [
        "",
        f"Idle, {idle[1]:,} finished files in the directory: {idle[0]:.2f} % CPU (all processes).",
        "",
        "## Start (seconds from exec to `/readyz` answering 200)",
        "",
        "| streams in the checkpoint store | seconds |",
        "| ---: | ---: |",
        *[f"| {count:,} | {seconds:.2f} |" for count, seconds in ready.items()],
        "",
    ]
    return "\n".join(lines)


FLEET_BEGIN, FLEET_END = "<!-- fleet: begin -->", "<!-- fleet: end -->"


def run_line(what: str) -> str:
    """When and from what this run was made."""
    head = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    commit = f"commit {head}{' with local changes' if changed else ''}" if head else "no commit"
    return (
        f"{what}: {datetime.date.today().isoformat()}, {commit}, {os.cpu_count()} cores, "
        f"{platform.platform()}."
    )


def fleet_report(reading: dict, aggregate: dict, total: int) -> str:
    small, large = sorted(reading)
    peers = {
        "streamer remote list --all-instances": "mc ls --recursive",
        "streamer remote list --all-instances --json": "mc ls --recursive",
        "streamer restore NAME -o FILE": "mc cp (one object)",
    }
    lines = [
        FLEET_BEGIN,
        f"## Fleet-scale reading ({small:,} and {large:,} streams in one bucket)",
        "",
        run_line("Run"),
        "",
        f"The streams of {FLEET_INSTANCES} instances under one prefix, each a {FLEET_CHUNK} "
        "byte chunk and a metadata.json as streamer writes it; each command run "
        f"{FLEET_TIMES} times, the median run shown. `restore NAME` names a recording (not "
        "a stream id) and writes it to a file; mc lists the same prefix, and copies one "
        "object to a file.",
        "",
        f"| command | seconds, {small:,} | seconds, {large:,} | time, {large:,} over {small:,} "
        f"| peak memory MiB, {small:,} | peak memory MiB, {large:,} | memory, {large:,} over "
        f"{small:,} | time over mc's, {large:,} | memory over mc's, {large:,} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for command in reading[small]:
        a, b = reading[small][command], reading[large][command]
        peer = reading[large].get(peers.get(command, ""))
        lines.append(
            f"| {command} | {a.seconds:.2f} | {b.seconds:.2f} | {ratio(b.seconds, a.seconds)} | "
            f"{a.peak_rss / MiB:.0f} | {b.peak_rss / MiB:.0f} | {ratio(b.peak_rss, a.peak_rss)} | "
            f"{ratio(b.seconds, peer.seconds) if peer else ''} | "
            f"{ratio(b.peak_rss, peer.peak_rss) if peer else ''} |"
        )
    lines += [
        "",
        "Memory is the process's proportional set size at its peak (sampled every 50 ms). "
        "`remote list` reads every stream's metadata.json (what it shows comes from there; "
        "mc shows only each object's size and time), keeping only what it shows of each; "
        "`restore NAME` lists the bucket and reads one metadata.json.",
        "",
        f"## Aggregate throughput ({HOSTS} hosts at once, one store, {total / GiB:g} GiB in all)",
        "",
        run_line("Run"),
        "",
        "| store | tool | seconds | MiB/s, all hosts | streamer over mc | CPU-s/GiB | "
        "CPU over mc's | peak memory MiB, largest host |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for store, runs in aggregate.items():
        ours, mc = runs["streamer, no assembly"], runs["mc"]
        for tool, run in runs.items():
            mine = tool.startswith("streamer")
            lines.append(
                f"| {store} | {tool} | {run.seconds:.1f} | {total / MiB / run.seconds:.0f} | "
                f"{ratio(mc.seconds, ours.seconds) if mine else ''} | "
                f"{run.cpu / (total / GiB):.2f} | {ratio(ours.cpu, mc.cpu) if mine else ''} | "
                f"{run.peak_rss / MiB:.0f} |"
            )
    lines += [
        "",
        f"{HOSTS} daemons, each with its own watch directory, checkpoint store and instance, "
        f"each uploading its own 2 finished files ({total / HOSTS / MiB:.0f} MiB), started "
        "together, without assembly (like for like: mc makes each object once); beside "
        f"them, {HOSTS} `mc cp --recursive` at once, each its own set. Each host reaches "
        "the distributed MinIO through a node of its own (MinIO serves every request from "
        "any node). The time runs from the first start to the last `metadata.json` (minus "
        f"the idle timeout, {IDLE_TIMEOUT:g} s), or to the last mc's exit; CPU is of every "
        "process (not MinIO's). `streamer over mc` is mc's time over streamer's: above 1 "
        "means streamer is faster.",
        "",
        "The machine is shared by other work: the figures are comparable only with each "
        "other, as ratios within one run.",
        FLEET_END,
        "",
    ]
    return "\n".join(lines)


def versions(tools: dict, pins: str) -> dict:
    from streamer import __version__

    s5cmd = subprocess.run([tools["s5cmd"], "version"], capture_output=True, text=True)
    return {"streamer": __version__, "s5cmd binary": s5cmd.stdout.strip(), "built from": pins}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minio", required=True)
    parser.add_argument("--mc", required=True)
    parser.add_argument("--s5cmd")
    parser.add_argument("--aws")
    parser.add_argument("--rclone")
    parser.add_argument("--py-spy", help="to profile streamer over https")
    parser.add_argument("--pins", default="", help="the peers' pinned versions, for the report")
    parser.add_argument("--work", default=None, help="scratch directory (needs about 4 GiB)")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument(
        "--size", type=float, default=1.0, help="scale the data (0.05 for a quick check)"
    )
    parser.add_argument(
        "--only",
        choices=["fleet", "integrity"],
        help="run only these sections and replace them in --out, the others left as they are",
    )
    args = parser.parse_args()
    tools = {k: getattr(args, k) for k in ("minio", "mc", "s5cmd", "aws", "rclone")}
    needed = {None: (*tools, "py_spy"), "integrity": ("s5cmd", "py_spy"), "fleet": ()}
    missing = [f"--{k.replace('_', '-')}" for k in needed[args.only] if not getattr(args, k)]
    if missing:
        parser.error(f"{args.only or 'the whole benchmark'} needs {', '.join(missing)}")
    work = Path(tempfile.mkdtemp(prefix="streamer-bench-", dir=args.work))
    minio = MinioServer(args.minio, work / "minio" / "data")
    minio.client.make_bucket("bench")
    try:
        ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
        pattern = make_recording(ffmpeg, work / "source.mp4")
        gib = int(GiB * args.size)
        text = Path(args.out).read_text() if args.only and Path(args.out).exists() else ""
        if args.only is None:
            text = whole_report(work, minio, args, tools, ffmpeg, pattern, gib)
        if args.only in (None, "integrity"):
            section = integrity(work, minio, args, pattern, gib)
            text = with_block(text, section, INTEGRITY_BEGIN, INTEGRITY_END)
        if args.only in (None, "fleet"):
            counts = [max(100, round(n * args.size)) for n in FLEET_COUNTS]
            fleet = fleet_report(
                fleet_reading(work, minio, args.mc, counts=counts),
                fleet_throughput(work, minio, args, 2 * gib, pattern),
                2 * gib,
            )
            text = with_block(text, fleet, FLEET_BEGIN, FLEET_END)
    finally:
        minio.stop()
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(text)
    print(text)


def both_sets(work: Path, gib: int, pattern: bytes) -> list[tuple[str, Path]]:
    return [
        (f"{2 * gib / GiB:g} GiB, 8 files", make_set(work / "set-2g", 8, 2 * gib, pattern)),
        (f"{gib / GiB:g} GiB, 1 file", make_set(work / "set-1g", 1, gib, pattern)),
    ]


@contextlib.contextmanager
def tls_minio(work: Path, binary: str):
    """A second MinIO, over https with a certificate from a private CA; and the CA's
    directory."""
    certs = make_certificates(work / "certs")
    tls = MinioServer(binary, work / "tls-minio" / "data", certs_dir=certs)
    try:
        tls.client.make_bucket("bench")
        yield tls, certs
    finally:
        tls.stop()
        shutil.rmtree(work / "tls-minio", ignore_errors=True)


def integrity(work: Path, minio: MinioServer, args, pattern: bytes, gib: int) -> str:
    sets = both_sets(work, gib, pattern)
    try:
        with tls_minio(work, args.minio) as (tls, certs):
            return integrity_section(work, minio, tls, args, sets, certs, pattern)
    finally:
        for _, source in sets:
            shutil.rmtree(source)


def whole_report(work, minio, args, tools, ffmpeg: str, pattern: bytes, gib: int) -> str:
    """Every section but the integrity and fleet ones."""
    sets = both_sets(work, gib, pattern)
    throughputs = {"http": throughput(work, minio, tools, sets)}
    with tls_minio(work, args.minio) as (tls, _):
        throughputs["https"] = throughput(work, tls, tools, sets)
    for _, source in sets:
        shutil.rmtree(source)
    live = live_lag(work, minio, pattern, seconds=max(20, round(60 * args.size)))
    long = live_lag(
        work, minio, pattern, streams=1, rate=LONG_RATE, seconds=max(2, round(16 * args.size))
    )
    costs = scale(work, minio, pattern, total=gib)
    assembly = assembly_cost(work, minio, ffmpeg, seconds=max(10, round(30 * args.size)))
    idle = idle_cpu(work, minio, files=max(50, round(1000 * args.size)))
    ready = ready_time(work, minio, counts=[round(n * args.size) for n in READY_COUNTS])
    return report(
        versions(tools, args.pins),
        throughputs,
        (live, long),
        costs,
        gib,
        idle,
        ready,
        assembly,
    )


if __name__ == "__main__":
    main()
