"""A TCP proxy between streamer and MinIO that misbehaves on command.

Modes: pass (forward), refuse (nothing listens: connection refused, open connections
reset), reset (every connection reset), blackhole (connections, open or new, go silent:
bytes are read and dropped, nothing is answered), throttle (forward at a byte rate),
refuse_puts (a connection that starts a PUT request is reset; other requests pass),
refuse_tags (a PUT with tags is answered 501 NotImplemented, as R2 or B2 answer it),
refuse_checksums (a PUT with one of the checksums named, crc64nvme and crc32c by default,
in a header or a trailer, or a multipart upload begun asking for it, is answered 400
InvalidRequest, as a server that does not know the algorithm answers it),
refuse_trailers (a PUT with a checksum in a trailer, x-amz-trailer, is answered 501
NotImplemented, as a server without aws-chunked uploads answers it),
refuse_conditions (a PUT with If-None-Match
or If-Match is answered 501 NotImplemented, as a server without conditional writes does),
slow_down (every PUT is held a moment, then answered 503 SlowDownWrite on a connection
kept open, as MinIO answers a write it cannot take: an erasure set without write quorum,
or a request that waited out its deadline in a full queue).
With `tls` (a server-side SSL context) the proxy speaks https to its clients and plain
http to the server: headers are seen, and refused, over https too.
Whatever the mode, `damage_puts(n)` flips one byte in the body of each of the next n PUT
requests with a body: a request damaged on the way, its headers intact.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
import time


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], port: int, tls: ssl.SSLContext | None = None):
        self.upstream = upstream
        self.tls = tls
        self.mode = "pass"
        self.rate = 0  # bytes per second, in throttle mode
        self.checksums: list[bytes] = []  # the headers refused, in refuse_checksums mode
        # Connections open to the server at once, at most: an HTTP pool opens one only when
        # all its open ones are busy, so this is the peak of requests in flight.
        self.peak_connections = 0
        self.uploaded = 0  # bytes passed from clients to the server
        self.downloaded = 0  # and from the server to clients (plain http)
        self.damaged = 0  # PUT bodies damaged so far
        self.slowed_down = 0  # PUTs answered 503 SlowDownWrite so far
        self.holding = 0  # PUTs held, in slow_down mode, before their answer
        self.cut = 0  # connections reset so far, in reset or refuse mode
        self._waiting: set[socket.socket] = set()  # connections whose request is unanswered
        self._to_damage = 0
        self._open = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = port
        self.endpoint = f"127.0.0.1:{self.port}"
        self._stopped = False
        self._listen()

    def set(
        self, mode: str, rate: int = 0, checksums: tuple[str, ...] = ("crc64nvme", "crc32c")
    ) -> None:
        refusals = ("refuse_tags", "refuse_checksums", "refuse_trailers", "refuse_conditions")
        assert self.tls is None or mode in ("pass", *refusals), mode
        assert mode in (
            "pass", "refuse", "reset", "blackhole", "throttle", "refuse_puts", "slow_down",
            *refusals,
        )  # fmt: skip
        with self._lock:
            self.mode, self.rate = mode, rate
            self.checksums = [f"x-amz-checksum-{name}".encode() for name in checksums]
            if mode in ("refuse", "reset"):
                self._cut_all()
        if mode == "refuse":
            self._close_listener()
        elif self._listener is None:
            self._listen()

    @property
    def in_flight(self) -> int:
        """Requests passed to the server whose answer has not begun."""
        with self._lock:
            return len(self._waiting)

    def damage_puts(self, count: int) -> None:
        assert self.tls is None, "a body damaged inside TLS is a broken connection"
        with self._lock:
            self._to_damage += count

    def close(self) -> None:
        self._stopped = True
        self._close_listener()
        with self._lock:
            self._cut_all()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            mode = self.mode
            self._conns.append(client)
            if mode in ("reset", "refuse"):
                self.cut += 1
        if mode in ("reset", "refuse"):
            # Refusing, a connection accepted just before the listener closed is cut too,
            # not forwarded for as long as the client keeps it alive.
            _reset(client)
            return
        if mode == "blackhole":
            with contextlib.suppress(OSError):
                while client.recv(65536):
                    pass
            return
        try:
            if self.tls is not None:
                client.settimeout(5)
                client = self.tls.wrap_socket(client, server_side=True)
                client.settimeout(None)
            upstream = socket.create_connection(self.upstream, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._conns += [client, upstream]
            self._open += 1
            self.peak_connections = max(self.peak_connections, self._open)
        if self.tls is not None:
            self._relay(client, upstream)
        else:
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            self._pump(upstream, client)
        with self._lock:
            self._open -= 1

    def _relay(self, client: ssl.SSLSocket, upstream: socket.socket) -> None:
        """Both ways in one thread: an SSL socket must not be read and written by two
        threads at once. Only the refusals apply here (not throttle, blackhole, damage)."""
        try:
            while not self._stopped:
                ready = (
                    [client]
                    if client.pending()
                    else select.select([client, upstream], [], [], 1)[0]
                )
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is upstream:
                        client.sendall(data)
                    elif self._refused(data, client):
                        return
                    else:
                        upstream.sendall(data)
        except (OSError, ValueError):  # ValueError: a socket closed by close() meanwhile
            pass
        finally:
            _reset(upstream)
            _reset(client)

    def _refused(self, data: bytes, client: socket.socket) -> bool:
        """Is this piece of a request refused in the current mode? Then it is answered
        as the mode says, and the connection closed."""
        if self.mode == "refuse_tags" and _puts_header(data, b"x-amz-tagging"):
            answer = NOT_IMPLEMENTED
        elif self.mode == "refuse_checksums" and any(
            _puts_header(data, name)
            or _puts_header(data, b"x-amz-trailer", name)
            or _begins_upload_with(
                data, b"x-amz-checksum-algorithm", name[len(b"x-amz-checksum-") :]
            )
            for name in self.checksums
        ):
            answer = INVALID_REQUEST
        elif (self.mode == "refuse_trailers" and _puts_header(data, b"x-amz-trailer")) or (
            self.mode == "refuse_conditions"
            and (_puts_header(data, b"if-none-match") or _puts_header(data, b"if-match"))
        ):
            answer = NOT_IMPLEMENTED
        else:
            return False
        # As a server does: the whole request read, then answered, then the connection
        # closed. Cut while the client still sends, it would see a broken connection
        # (over TLS, an SSL error), not the answer.
        with contextlib.suppress(OSError, ValueError):
            client.settimeout(5)
            _read_body(data, client)
            client.sendall(answer)
            client.shutdown(socket.SHUT_WR)
            while client.recv(65536):  # until the client, told to, closes its end
                pass
        with contextlib.suppress(OSError):
            client.close()
        return True

    def _slow_down(self, data: bytes, client: socket.socket) -> None:
        """The whole request read, held, then answered 503 SlowDownWrite; the connection
        stays open for the next request. A mode set meanwhile may cut it while held."""
        _read_body(data, client)
        with self._lock:
            self.holding += 1
        try:
            time.sleep(SLOW_DOWN_HOLD)
        finally:
            with self._lock:
                self.holding -= 1
        client.sendall(slow_down_write(data))
        with self._lock:
            self.slowed_down += 1

    def _pump(self, source: socket.socket, sink: socket.socket, upload: bool = False) -> None:
        flip_at = None  # where in the stream of request bytes the next body starts
        # One request at a time on a connection: its answer begins before the next one.
        client = source if upload else sink
        try:
            while True:
                data = source.recv(65536 if self.mode != "throttle" else 4096)
                if not data:
                    break
                if self.mode == "blackhole":
                    continue  # the line went silent: no reset, no answer
                if upload and self.mode == "slow_down" and data.startswith(b"PUT "):
                    self._slow_down(data, source)
                    continue
                if upload and data.split(b" ", 1)[0] in METHODS:
                    with self._lock:
                        self._waiting.add(client)
                elif not upload and data.startswith(b"HTTP/1."):
                    with self._lock:
                        self._waiting.discard(client)
                if upload and self.mode == "refuse_puts" and data.startswith(b"PUT "):
                    _reset(source)  # every other request goes through
                    break
                if upload and self._refused(data, source):
                    break
                if upload and data.startswith(b"PUT ") and b"\r\n\r\n" in data:
                    with self._lock:
                        armed = self._to_damage > 0
                        self._to_damage -= armed
                    flip_at = data.index(b"\r\n\r\n") + 4 if armed else None
                if flip_at is not None and flip_at < len(data):
                    data = data[:flip_at] + bytes([data[flip_at] ^ 0xFF]) + data[flip_at + 1 :]
                    flip_at = None
                    with self._lock:
                        self.damaged += 1
                elif flip_at is not None:
                    flip_at -= len(data)
                sink.sendall(data)
                with self._lock:
                    if upload:
                        self.uploaded += len(data)
                    else:
                        self.downloaded += len(data)
                if self.mode == "throttle" and self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            with self._lock:
                self._waiting.discard(client)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def _cut_all(self) -> None:
        for conn in self._conns:
            _reset(conn)
        self.cut += len(self._conns)
        self._conns.clear()


def _answer(
    status: bytes, code: bytes, message: bytes, more: bytes = b"", close: bool = True
) -> bytes:
    error = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>' + code + b"</Code><Message>"
        + message + b"</Message>" + more + b"</Error>"
    )  # fmt: skip
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml\r\nContent-Length: "
        + str(len(error)).encode() + (b"\r\nConnection: close" if close else b"")
        + b"\r\n\r\n" + error
    )  # fmt: skip


METHODS = {b"GET", b"HEAD", b"PUT", b"POST", b"DELETE"}
# How long a PUT waits in slow_down mode before its answer: a request is on its way there
# most of the time, for a mode set meanwhile to cut.
SLOW_DOWN_HOLD = 0.5
NOT_IMPLEMENTED = _answer(
    b"501 Not Implemented",
    b"NotImplemented",
    b"A header you provided implies functionality that is not implemented",
)
INVALID_REQUEST = _answer(
    b"400 Bad Request", b"InvalidRequest", b"Value for x-amz-checksum-* header is invalid."
)


def slow_down_write(data: bytes) -> bytes:
    """MinIO's answer to a PUT its erasure set cannot write, naming the object as it does."""
    resource = data.split(b" ", 2)[1].split(b"?", 1)[0]
    bucket, _, key = resource.lstrip(b"/").partition(b"/")
    more = (
        b"<Key>" + key + b"</Key><BucketName>" + bucket + b"</BucketName><Resource>"
        + resource + b"</Resource><RequestId>1880F1C6A42B3E55</RequestId><HostId>"
        + b"dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8</HostId>"
    )  # fmt: skip
    return _answer(
        b"503 Service Unavailable",
        b"SlowDownWrite",
        b"Resource requested is unwritable, please reduce your request rate",
        more,
        close=False,
    )


def _read_body(data: bytes, client: socket.socket) -> None:
    """The rest of the request whose first piece is `data`, read and dropped."""
    left = _content_length(data) - len(data.partition(b"\r\n\r\n")[2])
    while left > 0 and (got := client.recv(min(65536, left))):
        left -= len(got)


def _content_length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            return int(value)
    return 0


def _puts_header(data: bytes, name: bytes, value: bytes = b"", method: bytes = b"PUT ") -> bool:
    """Is this a PUT (or `method`) with header `name` (with `value`, if given)?"""
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    line = b"\r\n" + name + b":" + (b" " + value if value else b"")
    return data.startswith(method) and line in head


def _begins_upload_with(data: bytes, name: bytes, value: bytes) -> bool:
    return b"?uploads" in data.split(b"\r\n", 1)[0] and _puts_header(data, name, value, b"POST ")


def _reset(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
