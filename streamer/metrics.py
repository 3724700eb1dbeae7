"""Prometheus metrics, shared across processes (prometheus_client multiprocess mode), and
the endpoint that serves them with /healthz and /readyz.

PROMETHEUS_MULTIPROC_DIR must be set before this module is first imported: the CLI does it.

A container runtime restarts a daemon whose /healthz goes unanswered, so no client may
keep the endpoint from answering, neither by holding connections open nor by sending its
request a byte at a time. A thread or a slot per connection gives such clients something
to exhaust; here one thread runs a selector loop, and a connection waiting costs only a
descriptor. At most `connection_cap()` connections are open at once (a quarter of the
descriptors the process may open, so that clients never take the daemon's own); a new
one at the cap, or when descriptors run out, makes room by closing the oldest connection
that has not sent its whole request (if all have, the oldest), those accepted in this
turn of the loop last. What a connection has sent is read before it is closed, so a
request that has come is answered instead: a prober, which sends its request as it
connects, is answered even when it comes among a flood of connections. Each connection is cut
CONNECTION_DEADLINE after it opened, and a request is at most MAX_REQUEST bytes.
/metrics reads every process's file, which blocks: that is done on a thread of its own,
one collection at a time answering every scrape that came in while the one before ran,
so a scrape never holds up /healthz.
"""

from __future__ import annotations

import contextlib
import errno
import http
import json
import os
import re
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from functools import partial

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
    "streamer_streams", "Active streams, by phase", ["state"], multiprocess_mode="livesum"
)
BYTES_ON_DISK = Gauge(
    "streamer_delivery_bytes_on_disk",
    "Bytes in the files of active streams",
    multiprocess_mode="livesum",
)
BYTES_CONFIRMED = Gauge(
    "streamer_delivery_bytes_uploaded",
    "Bytes of active streams that S3 has confirmed",
    multiprocess_mode="livesum",
)
BYTES_COMMITTED = Gauge(
    "streamer_delivery_bytes_committed",
    "Bytes of active streams recorded in the checkpoint store",
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
# Which instance the scraped address is: a dashboard picks hosts by it (Prometheus's own
# `instance` label is the address it scrapes). Set by the supervisor once the name is settled.
INSTANCE_INFO = Gauge(
    "streamer_info",
    "1, labelled with this host's instance name, the one in every key",
    ["instance_name"],
    multiprocess_mode="livesum",
)
# Set by the supervisor alone, from what /readyz says, at start and at each turn of its loop.
S3_REACHABLE = Gauge(
    "streamer_s3_reachable",
    "1 if the uploaders' latest S3 requests were answered, 0 if not (or none yet)",
    multiprocess_mode="livesum",
)
CHECKPOINT_WRITABLE = Gauge(
    "streamer_checkpoint_writable",
    "1 if the checkpoint store is open and its latest write succeeded, 0 if not (no space, "
    "an I/O error, a read-only filesystem)",
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


class FeatureGauge:
    """A gauge of a feature that may be off, made where it is first set: a host without
    the feature exports none, not a 0 an alert would take for a fact. (A gauge made at
    import is exported, at 0, by every process from then on.)"""

    def __init__(self, name: str, documentation: str):
        self.name, self.documentation = name, documentation
        self._gauge: Gauge | None = None

    def set(self, value: float) -> None:
        if self._gauge is None:
            self._gauge = Gauge(self.name, self.documentation, multiprocess_mode="livesum")
        self._gauge.set(value)


RETENTION_BLIND = FeatureGauge(
    "streamer_retention_blind",
    "1 if retention is on and the kernel cannot tell streamer whether a file is still open "
    "for writing (no lease); absent with retention off",
)
DISK_FREE_BYTES = FeatureGauge(
    "streamer_disk_free_bytes",
    "Free bytes on the watched filesystem; absent without a free-space threshold",
)
DISK_PRESSURE = FeatureGauge(
    "streamer_disk_pressure",
    "1 if the watched filesystem is below its free-space threshold and no file is left "
    "that may be deleted; absent without a threshold",
)

UPLOADER_RESTARTS = Counter("streamer_uploader_restarts_total", "Uploaders replaced after dying")
UPLOADER_STALLS = Counter(
    "streamer_uploader_stalls_total",
    "Uploaders killed and replaced because their heartbeat went stale (workers.stall_timeout)",
)


def mark_process_dead(pid: int) -> None:
    multiprocess.mark_process_dead(pid)


CONNECTION_DEADLINE = 10.0  # seconds a connection may take, request and reply
MAX_CONNECTIONS = 1024  # however many descriptors the process may open
MAX_REQUEST = 8 * 1024  # bytes of request line and headers
BACKLOG = 128  # connections the kernel holds until they are accepted
ACCEPTS_PER_TURN = 64  # then the connections already open get their turn
END_OF_HEAD = re.compile(rb"\r?\n\r?\n")


def connection_cap() -> int:
    """Connections open at once: a quarter of the descriptors this process may open,
    so that clients can never take the ones the daemon itself needs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(MAX_CONNECTIONS, soft // 4)


class _Connection:
    """One client: its request as read so far, then the response left to send."""

    __slots__ = ("complete", "opened", "request", "response", "sock")

    def __init__(self, sock: socket.socket, opened: float):
        self.sock = sock
        self.opened = opened
        self.request = bytearray()
        self.complete = False  # the whole request is read
        self.response = memoryview(b"")


def _response(status: int, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Server:
    """The endpoint's one thread, running a selector loop (see the module's docstring).
    Only `serve` and what it calls run on that thread, except `_collect`, which runs on a
    thread of its own, one at a time, and hands its response back through the wake socket."""

    def __init__(self, address, readiness, since_loop):
        self.readiness = readiness
        self.since_loop = since_loop
        self.cap = connection_cap()
        self.listener = socket.create_server(address, backlog=BACKLOG)
        self.listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._woken)
        self._open: dict[socket.socket, _Connection] = {}  # oldest first
        self._scrapes: set[_Connection] = set()  # waiting for the next collection
        self._collecting: set[_Connection] | None = None  # the running collection's
        self._collected: bytes | None = None  # its response
        self._closing = False

    def serve(self) -> None:
        while not self._closing:
            now = time.monotonic()
            self._cut_late(now)
            oldest = next(iter(self._open.values()), None)
            timeout = None if oldest is None else oldest.opened + CONNECTION_DEADLINE - now
            for key, _ in self._selector.select(timeout):
                key.data()

    def stop(self) -> None:
        """From another thread: `serve` returns soon after."""
        self._closing = True
        self._wake()

    def close(self) -> None:
        for connection in list(self._open.values()):
            self._close(connection)
        self._selector.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def close_in_child(self) -> None:
        """In a process forked meanwhile: its copies of the connections would hold them
        open after this process answered them. The listener is the child's to close (it
        closes the supervisor's descriptors by number)."""
        for connection in list(self._open.values()):
            connection.sock.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # Connections

    def _accept(self) -> None:
        fresh: set[socket.socket] = set()  # accepted in this turn
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # Out of descriptors: one of ours makes room, as at the cap.
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._make_room(fresh):
                    continue
                return
            if len(self._open) >= self.cap:
                self._make_room(fresh)
            sock.setblocking(False)
            connection = _Connection(sock, time.monotonic())
            self._open[sock] = connection
            fresh.add(sock)
            self._selector.register(sock, selectors.EVENT_READ, partial(self._receive, connection))
            # A prober sends its request as it connects: read now, it is then answered
            # before more connections are taken up.
            self._receive(connection)

    def _make_room(self, fresh: set[socket.socket]) -> bool:
        """Room for one more: the oldest connection still sending its request, once what
        it sent is read (one whose request has come is answered instead), those accepted
        in this turn (`fresh`) last; if every one has sent its request, the oldest."""
        held = len(self._open)
        waiting = [c for c in self._open.values() if not c.complete]
        waiting.sort(key=lambda c: c.sock in fresh)  # stable: oldest first within each
        for connection in waiting:
            self._receive(connection)
            if connection.sock in self._open and not connection.complete:
                self._close(connection)
            if len(self._open) < held:
                return True
        oldest = next(iter(self._open.values()), None)
        if oldest is None:
            return False
        self._close(oldest)
        return True

    def _cut_late(self, now: float) -> None:
        while self._open:
            oldest = next(iter(self._open.values()))
            if oldest.opened + CONNECTION_DEADLINE > now:
                return
            self._close(oldest)

    def _receive(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
            return
        request = connection.request
        searched = max(0, len(request) - 3)
        request += data
        end = END_OF_HEAD.search(request, searched)
        if end is None and len(request) <= MAX_REQUEST:
            return
        connection.complete = True
        self._selector.unregister(connection.sock)
        if end is None or end.start() > MAX_REQUEST:
            self._reply(connection, 431, "text/plain", b"request too large\n")
        else:
            self._answer(connection, bytes(request[: end.start()]))

    def _answer(self, connection: _Connection, head: bytes) -> None:
        words = head.split(b"\n", 1)[0].decode("latin-1").split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self._reply(connection, 400, "text/plain", b"bad request\n")
        elif words[0] != "GET":
            self._reply(connection, 501, "text/plain", b"only GET\n")
        elif words[1] == "/metrics":
            self._scrapes.add(connection)
            if self._collecting is None:
                self._collect_next()
        elif words[1] == "/healthz":
            # The loop's heartbeat, not this thread's: 200 means the loop turns.
            since = self.since_loop()
            if since < HEALTHY_WITHIN:
                self._json(connection, 200, {"status": "ok"})
            else:
                body = {"status": "stalled", "seconds_since_loop": round(since, 1)}
                self._json(connection, 503, body)
        elif words[1] == "/readyz":
            ready, checks = self.readiness()
            self._json(connection, 200 if ready else 503, {"ready": ready, "checks": checks})
        else:
            self._reply(connection, 404, "text/plain", b"not found\n")

    def _json(self, connection: _Connection, status: int, body: dict) -> None:
        self._reply(connection, status, "application/json", json.dumps(body).encode())

    def _reply(self, connection: _Connection, status: int, content_type: str, body: bytes) -> None:
        self._respond(connection, _response(status, content_type, body))

    def _respond(self, connection: _Connection, response: bytes) -> None:
        connection.response = memoryview(response)
        self._send(connection)

    def _send(self, connection: _Connection) -> None:
        """As much as the client takes now; the rest when it takes more."""
        try:
            sent = connection.sock.send(connection.response)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = len(connection.response)  # the client is gone: nothing left to send
        connection.response = connection.response[sent:]
        if not connection.response:
            self._close(connection)
        elif connection.sock not in self._selector.get_map():
            self._selector.register(
                connection.sock, selectors.EVENT_WRITE, partial(self._send, connection)
            )

    def _close(self, connection: _Connection) -> None:
        if self._open.pop(connection.sock, None) is None:
            return  # closed earlier in the same turn of the loop
        with contextlib.suppress(KeyError):
            self._selector.unregister(connection.sock)
        connection.sock.close()
        self._scrapes.discard(connection)
        if self._collecting:
            self._collecting.discard(connection)

    # /metrics, collected off the loop

    def _collect_next(self) -> None:
        """Every scrape waiting is answered by one collection begun after it came."""
        self._collecting, self._scrapes = self._scrapes, set()
        threading.Thread(target=self._collect, name="metrics-collect", daemon=True).start()

    def _collect(self) -> None:
        try:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            self._collected = _response(200, CONTENT_TYPE_LATEST, generate_latest(registry))
        except Exception as exc:
            # A file in the metrics directory that cannot be read fails this scrape only.
            body = f"cannot collect the metrics: {exc}\n".encode()
            self._collected = _response(500, "text/plain", body)
        self._wake()

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        if self._collected is None:
            return
        response, self._collected = self._collected, None
        for connection in list(self._collecting):
            self._respond(connection, response)
        self._collecting = None
        if self._scrapes:
            self._collect_next()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already woken, or closed
            self._wake_w.send(b"\0")


class MetricsServer:
    """Serves /metrics, /healthz and /readyz from a thread of its own, off the supervisor's
    loop. Both callables are called from that thread: `readiness()` returns (ready,
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
        self.port = self._server.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve, name="metrics", daemon=True)
        os.register_at_fork(after_in_child=self._server.close_in_child)

    def fileno(self) -> int:
        return self._server.listener.fileno()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.stop()
            self._thread.join()
        self._server.close()
