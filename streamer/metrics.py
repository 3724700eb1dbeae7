"""Prometheus metrics, shared across processes (prometheus_client multiprocess mode).

PROMETHEUS_MULTIPROC_DIR must be set before this module is first imported: the CLI does it.
"""

from __future__ import annotations

import http.server
import json

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

CHUNKS_UPLOADED = Counter("streamer_chunks_uploaded_total", "Chunks confirmed by S3")
BYTES_UPLOADED = Counter("streamer_bytes_uploaded_total", "Bytes of chunks confirmed by S3")
CHUNK_UPLOAD_SECONDS = Histogram(
    "streamer_chunk_upload_seconds",
    "Time to upload one chunk",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPLOAD_ERRORS = Counter("streamer_upload_errors_total", "Failed S3 operations", ["kind"])
CHECKPOINT_COMMIT_SECONDS = Histogram(
    "streamer_checkpoint_commit_seconds",
    "Time to commit one checkpoint transaction",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
STREAMS = Gauge(
    "streamer_streams", "Streams being uploaded, by phase", ["phase"], multiprocess_mode="livesum"
)
STREAMS_FINISHED = Counter("streamer_streams_finished_total", "Finished streams", ["status"])
UPLOADER_RESTARTS = Counter("streamer_uploader_restarts_total", "Uploaders replaced after dying")


def mark_process_dead(pid: int) -> None:
    multiprocess.mark_process_dead(pid)


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 5  # a client that stalls cannot hold the supervisor's loop for long

    def do_GET(self) -> None:
        if self.path == "/metrics":
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            self._reply(200, CONTENT_TYPE_LATEST, generate_latest(registry))
        elif self.path == "/healthz":
            self._reply(200, "application/json", json.dumps({"status": "ok"}).encode())
        else:
            self._reply(404, "text/plain", b"not found\n")

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class MetricsServer:
    """Serves /metrics and /healthz one request at a time from the supervisor's own loop."""

    def __init__(self, host: str, port: int):
        self._server = http.server.HTTPServer((host, port), _Handler)
        self.port = self._server.server_address[1]

    def fileno(self) -> int:
        return self._server.fileno()

    def handle(self) -> None:
        self._server.handle_request()

    def close(self) -> None:
        self._server.server_close()
