"""The metrics endpoint (streamer/metrics.py), scraped while streams upload: the values move
as they should."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

import pytest
from conftest import free_port, wait_until
from harness import get_json, port_of, scrape
from recordings import GrowingFile

pytestmark = pytest.mark.integration

KiB = 1024


def test_delivery_state_moves_during_an_upload(make_daemon, minio):
    daemon = make_daemon(stream={"idle_timeout": 3}).start()
    assert get_json(daemon, "/healthz") == (200, {"status": "ok"})
    wait_until(lambda: get_json(daemon, "/readyz")[0] == 200, 10, what="ready")
    writer = GrowingFile(daemon.watch / "watched.mp4", total=1536 * KiB, rate=256 * KiB).start()
    daemon.wait_for("chunk_uploaded", count=2)

    samples = []
    while not writer.done.is_set():
        samples.append(scrape(daemon))
        time.sleep(0.5)
    during = samples[len(samples) // 2]
    assert during["streamer_streams{state=streaming}"] == 1
    assert during["streamer_s3_reachable"] == 1
    assert (
        0
        < during["streamer_delivery_bytes_committed"]
        <= during["streamer_delivery_bytes_uploaded"]
    )
    assert during["streamer_delivery_bytes_uploaded"] <= during["streamer_delivery_bytes_on_disk"]
    on_disk = [s["streamer_delivery_bytes_on_disk"] for s in samples]
    committed = [s["streamer_delivery_bytes_committed"] for s in samples]
    chunks = [s["streamer_chunks_uploaded_total"] for s in samples]
    assert on_disk == sorted(on_disk) and on_disk[-1] > on_disk[0]
    assert committed == sorted(committed) and committed[-1] > committed[0]
    assert chunks[-1] > chunks[0]
    assert all(s["streamer_delivery_oldest_uncommitted_age_seconds"] < 30 for s in samples)

    daemon.wait_for("stream_finished", timeout=30)
    after = scrape(daemon)
    assert after["streamer_streams{state=streaming}"] == 0
    assert after["streamer_streams_finished_total{status=invalid}"] == 1
    assert after["streamer_bytes_uploaded_total"] == 1536 * KiB
    assert after["streamer_chunks_uploaded_total"] == 24
    assert after["streamer_chunk_upload_seconds_count"] == 24
    assert after["streamer_checkpoint_commit_seconds_count"] >= 24
    assert after["streamer_delivery_bytes_on_disk"] == 0


def test_the_tail_waiting_for_the_idle_timeout_shows_as_lag(make_daemon, minio):
    # Long enough that the tail is still waiting when the last scrape below is made.
    daemon = make_daemon(stream={"idle_timeout": 12}).start()
    (daemon.watch / "tail.mp4").write_bytes(b"t" * (64 * KiB + 1000))
    daemon.wait_for("chunk_uploaded")
    # The gauges are as of the loop's last turn: wait for the age to pass 2 s.
    values = wait_until(
        lambda: (
            (v := scrape(daemon))["streamer_delivery_oldest_uncommitted_age_seconds"] >= 2 and v
        ),
        5,
        what="the tail's age to pass 2 s",
    )
    assert (
        values["streamer_delivery_bytes_on_disk"] - values["streamer_delivery_bytes_committed"]
        == 1000
    )
    # No chunk is sent while the tail waits: the time since the last upload grows.
    waited = []
    for _ in range(3):
        waited.append(scrape(daemon)["streamer_seconds_since_last_upload"])
        time.sleep(1)
    assert waited[0] < waited[2]


def test_readyz_says_why_when_s3_cannot_be_reached(make_daemon):
    daemon = make_daemon(
        s3={"endpoint": f"127.0.0.1:{free_port()}", "connect_timeout": 1, "retry_cap": 2}
    ).start()

    def s3_error_reported():
        reply = get_json(daemon, "/readyz")
        return reply if "no answer" not in reply[1]["checks"]["s3"]["error"] else None

    status, body = wait_until(s3_error_reported, 20, what="an S3 error on /readyz")
    assert status == 503 and body["ready"] is False
    assert "refused" in body["checks"]["s3"]["error"].lower()
    assert body["checks"]["uploaders"] == {"ok": True, "alive": 2, "expected": 2}
    assert scrape(daemon)["streamer_s3_reachable"] == 0


def test_no_client_can_slow_the_daemon(make_daemon, minio):
    """Clients that dribble a request a byte at a time and clients that connect and send
    nothing, for the whole test: a recording is still found and finished, /healthz
    answers, the silent ones are cut, and SIGTERM stops the daemon with status 0."""
    daemon = make_daemon(stream={"idle_timeout": 2}, grace_period=5).start()
    port = port_of(daemon)
    stop = threading.Event()
    cut = []

    def dribble() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
                    if stop.wait(1.5):
                        return
                    s.send(bytes([byte]))

    def silent() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                s.settimeout(0.5)
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        if s.recv(1) == b"":
                            cut.append(time.monotonic())
                            break

    clients = [threading.Thread(target=f, daemon=True) for f in (dribble, silent) * 3]
    for client in clients:
        client.start()
    try:
        time.sleep(1)
        (daemon.watch / "meanwhile.mp4").write_bytes(b"m" * 100 * KiB)
        daemon.wait_for("stream_finished", timeout=15)
        assert get_json(daemon, "/healthz") == (200, {"status": "ok"})
        wait_until(lambda: len(cut) >= 3, 30, what="the silent clients to be cut")
        assert get_json(daemon, "/healthz") == (200, {"status": "ok"})
        daemon.signal(signal.SIGTERM)
        assert daemon.process.wait(15) == 0
    finally:
        stop.set()
