"""Prometheus metrics, shared across processes (prometheus_client multiprocess mode).

PROMETHEUS_MULTIPROC_DIR must be set before this module is first imported: the CLI does it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import threading
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from streamer.health import HEALTHY_WITHIN

CHUNKS_UPLOADED = Counter("streamer_chunks_uploaded_total", "Chunks confirmed by S3")
BYTES_UPLOADED = Counter("streamer_bytes_uploaded_total", "Bytes of chunks confirmed by S3")
CHUNK_UPLOAD_SECONDS = Histogram(
    "streamer_chunk_upload_seconds",
    "Time to upload one chunk",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPLOAD_ERRORS = Counter(
    "streamer_upload_errors_total",
    "Failed upload steps, by kind: transient, rejected (by S3) or failed",
    ["kind"],
)
UPLOAD_RETRIES = Counter("streamer_upload_retries_total", "Upload steps scheduled again")
CHECKPOINT_COMMIT_SECONDS = Histogram(
    "streamer_checkpoint_commit_seconds",
    "Time to commit one checkpoint transaction",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
STREAMS = Gauge(
    "streamer_streams", "Unfinished streams, by state", ["state"], multiprocess_mode="livesum"
)
BYTES_ON_DISK = Gauge(
    "streamer_delivery_bytes_on_disk",
    "Bytes in the files of unfinished streams",
    multiprocess_mode="livesum",
)
BYTES_CONFIRMED = Gauge(
    "streamer_delivery_bytes_uploaded",
    "Bytes of unfinished streams that S3 has confirmed",
    multiprocess_mode="livesum",
)
BYTES_COMMITTED = Gauge(
    "streamer_delivery_bytes_committed",
    "Bytes of unfinished streams recorded in the checkpoint store",
    multiprocess_mode="livesum",
)
OLDEST_UNCOMMITTED_AGE = Gauge(
    "streamer_delivery_oldest_uncommitted_age_seconds",
    "How long the oldest byte on disk not yet in the checkpoint store has waited",
    multiprocess_mode="livesum",
)
SINCE_LAST_UPLOAD = Gauge(
    "streamer_seconds_since_last_upload",
    "Seconds since S3 last confirmed a chunk (since start, if none yet)",
    multiprocess_mode="livesum",
)
S3_REACHABLE = Gauge(
    "streamer_s3_reachable",
    "1 if the latest S3 request of any uploader succeeded, 0 if it failed",
    multiprocess_mode="livemostrecent",
)
CHECKPOINT_WRITABLE = Gauge(
    "streamer_checkpoint_writable",
    "1 if the latest write to the checkpoint store succeeded, 0 if it failed (no space, an "
    "I/O error, a read-only filesystem)",
    multiprocess_mode="livesum",
)
PARTS_COPIED = Counter(
    "streamer_assembly_parts_copied_total",
    "Chunks copied server-side into their assembled object: while the stream was live, or at"
    " completion",
    ["when"],
)
STREAMS_FINISHED = Counter("streamer_streams_finished_total", "Finished streams", ["status"])
BANDWIDTH_WAIT_SECONDS = Counter(
    "streamer_bandwidth_wait_seconds_total",
    "Time uploads waited for the bandwidth cap (s3.max_bytes_per_second)",
)
SOURCES_DELETED = Counter(
    "streamer_sources_deleted_total",
    "Local files deleted once proven in S3, by reason: uploaded or disk_pressure",
    ["reason"],
)
SOURCES_KEPT = Counter(
    "streamer_sources_kept_total",
    "Local files retention was asked to delete and kept, because they were not proven in S3",
)
RETENTION_BLIND = Gauge(
    "streamer_retention_blind",
    "1 if retention is on and the kernel cannot tell streamer whether a file is still open "
    "for writing (no lease): retention.min_age is then the only guard",
    multiprocess_mode="livesum",
)
DISK_FREE_BYTES = Gauge(
    "streamer_disk_free_bytes",
    "Free bytes on the watched filesystem (when a free-space threshold is set)",
    multiprocess_mode="livesum",
)
DISK_PRESSURE = Gauge(
    "streamer_disk_pressure",
    "1 if the watched filesystem is below its free-space threshold and no file is left "
    "that may be deleted",
    multiprocess_mode="livesum",
)
UPLOADER_RESTARTS = Counter("streamer_uploader_restarts_total", "Uploaders replaced after dying")


def mark_process_dead(pid: int) -> None:
    multiprocess.mark_process_dead(pid)


CONNECTION_DEADLINE = 10.0  # seconds a connection may take, request and reply
MAX_CONNECTIONS = 32


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 5  # per read; the whole connection has CONNECTION_DEADLINE

    def do_GET(self) -> None:
        if self.path == "/metrics":
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            self._reply(200, CONTENT_TYPE_LATEST, generate_latest(registry))
        elif self.path == "/healthz":
            # The loop's heartbeat, not this thread's: 200 means the loop turns.
            since = self.server.since_loop()
            if since < HEALTHY_WITHIN:
                self._json(200, {"status": "ok"})
            else:
                self._json(503, {"status": "stalled", "seconds_since_loop": round(since, 1)})
        elif self.path == "/readyz":
            ready, checks = self.server.readiness()
            self._json(200 if ready else 503, {"ready": ready, "checks": checks})
        else:
            self._reply(404, "text/plain", b"not found\n")

    def _json(self, status: int, body: dict) -> None:
        self._reply(status, "application/json", json.dumps(body).encode())

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once (more are closed at once),
    each cut at CONNECTION_DEADLINE: a client that dribbles its request, or sends none,
    holds one slot for a while and nothing else."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address, readiness, since_loop):
        super().__init__(address, _Handler)
        self.readiness = readiness
        self.since_loop = since_loop
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: set[socket.socket] = set()  # connections being served

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        self._open.add(request)
        super().process_request(request, client_address)

    def close_in_child(self) -> None:
        """In a process forked meanwhile: its copies of the connections would hold them
        open after this process answered them."""
        for connection in list(self._open):
            connection.close()

    def process_request_thread(self, request, client_address) -> None:
        deadline = threading.Timer(CONNECTION_DEADLINE, _cut, (request,))
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._open.discard(request)
            self._slots.release()


def _cut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class MetricsServer:
    """Serves /metrics, /healthz and /readyz from threads of its own, off the supervisor's
    loop. Both callables are called from those threads: `readiness()` returns (ready,
    checks) as the loop last published them, `since_loop()` the seconds since the loop
    last turned."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Callable[[], tuple[bool, dict]],
        since_loop: Callable[[], float],
    ):
        self._server = _Server((host, port), readiness, since_loop)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        os.register_at_fork(after_in_child=self._server.close_in_child)

    def fileno(self) -> int:
        return self._server.fileno()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
