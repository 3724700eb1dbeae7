"""A distributed store under streamer: a MinIO of four nodes of two drives behind a load
balancer (tests/integration/distributed.py), while three recordings grow: a node killed and
brought back, a node refusing writes then resetting, and write quorum lost and regained.
Every recording lands exact, no chunk is committed twice, nothing is lost."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest
from conftest import wait_until
from harness import get_json
from recordings import GrowingFile, record

from integration.daemons import FAST_RETRIES, assert_exact
from integration.distributed import DistributedMinio
from integration.servers import binary

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB
# Small chunks: a live recording (ffmpeg at 2 Mbit/s) lands one every half second, so
# many are on their way while a node is down.
CHUNK = 128 * KiB


@pytest.fixture
def server(tmp_path):
    """The distributed store, for this test alone: the tests kill its nodes."""
    store = DistributedMinio(binary("MINIO_BIN", "minio"), tmp_path / "store")
    yield store
    store.stop()


class Recordings:
    """Three recordings growing at once: ffmpeg writing a fragmented MP4 and a plain one
    (which rewrites its first chunk when it stops), and a synthetic writer."""

    def __init__(self, ffmpeg: str, watch: Path, seconds: float):
        self.seconds = seconds
        self.paths = [watch / f"{kind}.mp4" for kind in ("fragmented", "plain", "growing")]
        self.recorders = [
            record(ffmpeg, self.paths[0], seconds, "fragmented"),
            record(ffmpeg, self.paths[1], seconds, "plain"),
        ]
        rate = 256 * KiB
        self.writer = GrowingFile(self.paths[2], total=int(seconds * rate), rate=rate).start()

    def going(self) -> bool:
        return all(r.poll() is None for r in self.recorders) and not self.writer.done.is_set()

    def wait(self) -> None:
        for recorder in self.recorders:
            assert recorder.wait(self.seconds + 60) == 0
        self.writer.wait(self.seconds + 60)

    def kill(self) -> None:
        for recorder in self.recorders:
            if recorder.poll() is None:
                recorder.kill()
                recorder.wait()


@pytest.fixture
def recordings(ffmpeg):
    started = []

    def start(watch: Path, seconds: float) -> Recordings:
        started.append(Recordings(ffmpeg, watch, seconds))
        return started[-1]

    yield start
    for r in started:
        r.kill()


def distributed_daemon(make_daemon, **s3):
    return make_daemon(
        s3={**FAST_RETRIES, **s3}, stream={"chunk_size": CHUNK, "idle_timeout": 3}
    ).start()


def committed(daemon) -> int:
    return len(daemon.find("chunk_uploaded")) + len(daemon.find("chunk_found_in_s3"))


def all_exact(server, daemon, recordings: Recordings) -> None:
    """Every recording finished, exact from S3, each chunk revision committed once."""
    recordings.wait()
    daemon.wait_for("stream_finished", count=3, timeout=180)
    discovered = {e["path"]: e["stream_id"] for e in daemon.find("stream_discovered")}
    assert sorted(discovered) == sorted(str(p) for p in recordings.paths), "one stream a file"
    finished = {e["stream_id"]: e for e in daemon.find("stream_finished")}
    assert sorted(finished) == sorted(discovered.values())
    # Each chunk revision is committed once: live (uploaded, or found already in S3
    # after a reset) at revision 0, at completion (reuploaded) at a later revision.
    times = collections.Counter(
        (e["stream_id"], e["index"], 0)
        for name in ("chunk_uploaded", "chunk_found_in_s3")
        for e in daemon.find(name)
    )
    times.update(
        (e["stream_id"], e["index"], e["revision"]) for e in daemon.find("chunk_reuploaded")
    )
    twice = [chunk for chunk, n in times.items() if n > 1]
    assert not twice, f"committed more than once: {twice}"
    for path in recordings.paths:
        stream_id = discovered[str(path)]
        manifest = assert_exact(server, daemon, stream_id, path)
        listed = {(stream_id, c["index"], c["revision"]) for c in manifest["chunks"]}
        assert listed <= set(times), "every chunk listed was committed"
        expected = "invalid" if path.stem == "growing" else "complete"
        assert (finished[stream_id]["status"], manifest["status"]) == (expected, expected)


def busiest(server) -> int:
    """The node the daemon writes through most now: the balancer spreads new connections,
    and a client keeps its connections open, so a node picked at random may carry none."""
    before = [proxy.uploaded for proxy in server.node_proxies]
    time.sleep(1)
    moved = [proxy.uploaded - b for proxy, b in zip(server.node_proxies, before, strict=True)]
    return moved.index(max(moved))


def test_a_node_killed_mid_recording_and_brought_back_loses_nothing(
    make_daemon, server, recordings
):
    daemon = distributed_daemon(make_daemon)
    growing = recordings(daemon.watch, 20)
    daemon.wait_for("chunk_uploaded", count=6)
    # Killed while a request is on its way through it: that one is cut. (Seen here: the
    # stream whose write was cut may then wait up to two minutes, its writes of that
    # chunk timing out, the node back or not, until MinIO takes that object again.)
    n = busiest(server)
    node = server.node_proxies[n]
    wait_until(lambda: node.in_flight, 20, interval=0.001, what="a request through the node")
    server.kill_node(n)
    down = committed(daemon)
    # Writes keep quorum: chunks go on landing with the node down.
    wait_until(lambda: committed(daemon) >= down + 20, 30, what="chunks with a node down")
    assert daemon.find("upload_retry"), "the request cut with the node was tried again"
    server.start_node(n)
    assert growing.going(), "the node came back while the recordings went on"
    back = committed(daemon)
    wait_until(lambda: committed(daemon) >= back + 6, 30, what="chunks with the node back")
    all_exact(server, daemon, growing)


def test_a_node_refusing_writes_then_resetting_loses_nothing(make_daemon, server, recordings):
    daemon = distributed_daemon(make_daemon)
    growing = recordings(daemon.watch, 20)
    daemon.wait_for("chunk_uploaded", count=6)
    node = server.node_proxies[busiest(server)]
    node.set("slow_down")
    wait_until(lambda: node.slowed_down >= 3, 30, what="writes refused")
    refused = daemon.find("upload_retry")
    assert refused and all("code: SlowDownWrite" in e["error"] for e in refused)
    assert all(e["level"] == "warning" for e in refused), "a node's 503 is not a rejection"
    # Cut with a write on its way: that one, and any connection made to it meanwhile. (The
    # daemon may log no line for it: a stream parked by the 503s counts the failures of
    # its chunks on the wire once.)
    wait_until(lambda: node.holding, 30, interval=0.01, what="a write held")
    node.set("reset")
    wait_until(lambda: node.cut, 30, what="a connection cut")
    time.sleep(3)
    node.set("pass")
    all_exact(server, daemon, growing)


def daemon_pss(pid: int) -> int:
    """Bytes of memory the process and its children (the uploaders) hold, each shared
    page counted once across them."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += daemon_pss(int(child))
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            total += int(line.split()[1]) * KiB
    return total


# What the daemon's memory may grow by while it waits for the store: the recordings grow
# by some 25 MiB meanwhile, and all of it waits on disk, not in memory.
WAITING_GROWTH = 16 * MiB
OUTAGE = 30  # seconds without write quorum


def test_write_quorum_lost_parks_the_streams_in_flat_memory_and_nothing_is_lost(
    make_daemon, server, recordings
):
    daemon = distributed_daemon(make_daemon)
    growing = recordings(daemon.watch, OUTAGE + 20)
    daemon.wait_for("chunk_uploaded", count=6)
    # One node goes, writes go on with six drives of eight; then a second: quorum lost.
    server.kill_node(1)
    down = committed(daemon)
    wait_until(lambda: committed(daemon) >= down + 6, 30, what="chunks with a node down")
    server.kill_node(2)
    lost = time.monotonic()
    before = daemon_pss(daemon.process.pid)
    parked: dict[str, dict] = {}
    while time.monotonic() - lost < OUTAGE:
        ready = get_json(daemon, "/readyz")[1]
        parked |= {s["path"]: s for s in ready["checks"]["streams"]["parked"]}
        time.sleep(0.5)
    after = daemon_pss(daemon.process.pid)
    assert after - before < WAITING_GROWTH, f"{before / MiB:.1f} MiB, then {after / MiB:.1f}"
    unreachable = daemon.find("s3_state")[-1]
    assert unreachable["reachable"] is False and unreachable["error"], "it says why"
    # Every stream waited, said why, and that it heals by itself.
    assert sorted(parked) == sorted(str(p) for p in growing.paths)
    assert all(s["heals"] and s["reason"] for s in parked.values()), parked
    # Each tried again and again, never waiting longer than the cap between tries.
    retries = daemon.find("upload_retry")
    assert {e["stream_id"] for e in retries if e["attempt"] >= 3} == {
        s["stream_id"] for s in parked.values()
    }
    assert all(e["error"] and e["delay"] <= FAST_RETRIES["retry_cap"] for e in retries)
    assert growing.going(), "the recordings grew all the while"

    # Quorum back with the node that went first, which lacks what was written without
    # it; the other comes back later.
    server.start_node(1)
    back = committed(daemon)
    wait_until(lambda: committed(daemon) >= back + 6, 30, what="chunks with quorum back")
    server.start_node(2)
    all_exact(server, daemon, growing)
