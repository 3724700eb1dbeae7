"""A TCP proxy between streamer and MinIO that misbehaves on command.

Modes: pass (forward), refuse (nothing listens: connection refused, open connections
reset), reset (every connection reset), blackhole (connections, open or new, go silent:
bytes are read and dropped, nothing is answered), throttle (forward at a byte rate),
refuse_puts (a connection that starts a PUT request is reset; other requests pass),
refuse_tags (a PUT with tags is answered 501 NotImplemented, as R2 or B2 answer it).
Whatever the mode, `damage_puts(n)` flips one byte in the body of each of the next n PUT
requests with a body: a request damaged on the way, its headers intact.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], port: int):
        self.upstream = upstream
        self.mode = "pass"
        self.rate = 0  # bytes per second, in throttle mode
        # Connections open to the server at once, at most: an HTTP pool opens one only when
        # all its open ones are busy, so this is the peak of requests in flight.
        self.peak_connections = 0
        self.uploaded = 0  # bytes passed from clients to the server
        self.damaged = 0  # PUT bodies damaged so far
        self._to_damage = 0
        self._open = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = port
        self.endpoint = f"127.0.0.1:{self.port}"
        self._stopped = False
        self._listen()

    def set(self, mode: str, rate: int = 0) -> None:
        assert mode in (
            "pass", "refuse", "reset", "blackhole", "throttle", "refuse_puts", "refuse_tags"
        )  # fmt: skip
        with self._lock:
            self.mode, self.rate = mode, rate
            if mode in ("refuse", "reset"):
                self._cut_all()
        if mode == "refuse":
            self._close_listener()
        elif self._listener is None:
            self._listen()

    def damage_puts(self, count: int) -> None:
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
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._conns.append(upstream)
            self._open += 1
            self.peak_connections = max(self.peak_connections, self._open)
        threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
        self._pump(upstream, client)
        with self._lock:
            self._open -= 1

    def _pump(self, source: socket.socket, sink: socket.socket, upload: bool = False) -> None:
        flip_at = None  # where in the stream of request bytes the next body starts
        try:
            while True:
                data = source.recv(65536 if self.mode != "throttle" else 4096)
                if not data:
                    break
                if self.mode == "blackhole":
                    continue  # the line went silent: no reset, no answer
                if upload and self.mode == "refuse_puts" and data.startswith(b"PUT "):
                    _reset(source)  # every other request goes through
                    break
                if upload and self.mode == "refuse_tags" and _puts_tags(data):
                    with contextlib.suppress(OSError):
                        source.sendall(NOT_IMPLEMENTED)
                    _reset(source)
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
                if upload:
                    with self._lock:
                        self.uploaded += len(data)
                if self.mode == "throttle" and self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def _cut_all(self) -> None:
        for conn in self._conns:
            _reset(conn)
        self._conns.clear()


_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code><Message>A '
    b"header you provided implies functionality that is not implemented</Message></Error>"
)
NOT_IMPLEMENTED = (
    b"HTTP/1.1 501 Not Implemented\r\nContent-Type: application/xml\r\n"
    b"Content-Length: " + str(len(_ERROR)).encode() + b"\r\nConnection: close\r\n\r\n" + _ERROR
)


def _puts_tags(data: bytes) -> bool:
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    return data.startswith(b"PUT ") and b"\r\nx-amz-tagging:" in head


def _reset(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
