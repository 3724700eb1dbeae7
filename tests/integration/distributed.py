"""A distributed MinIO on one machine, as MinIO documents it for a local trial: four node
processes, each on its own port with two drives, one erasure set of eight drives (parity
4: writes need five drives, so one node of four may go; two gone is quorum lost). In front
of it a round-robin load balancer, and between the balancer and each node a FaultProxy
(tests/integration/faultproxy.py), so one node can be made to misbehave while the others
serve.

The balancer does what nginx does in MinIO's own compose example: each new connection goes
to the next node; a node that refuses the connection is skipped for the next one; a
connection open to a node that dies is reset. A killed node's FaultProxy still takes
connections, and resets them: a balancer that has not yet noticed the node is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import signal
import socket
import struct
import subprocess
import threading
from pathlib import Path

import urllib3
from conftest import clean_env, free_port, wait_until
from minio import Minio

from integration.faultproxy import FaultProxy
from integration.servers import ACCESS_KEY, SECRET_KEY

SIOCGIFADDR = 0x8915


def host_address() -> str:
    """The machine's own IPv4 address. MinIO refuses loopback node addresses when it
    believes it runs in a container ("127.0.0.1 resolves to localhost")."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            if name == "lo":
                continue
            try:
                packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()))
            except OSError:
                continue  # an interface without an IPv4 address
            return socket.inet_ntoa(packed[20:24])
    raise RuntimeError("no network interface with an IPv4 address")


def _cut(conn: socket.socket) -> None:
    """Reset the connection, at once: a close alone waits for a read another thread has
    under way on it, and the client would hear nothing."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        conn.close()


class Balancer:
    """Round robin over upstreams, one TCP connection at a time."""

    def __init__(self, upstreams: list[tuple[str, int]], port: int):
        self.upstreams = upstreams
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"
        self._next = itertools.cycle(range(len(upstreams)))
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stopped = False
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                _cut(conn)
            self._conns.clear()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        for _ in self.upstreams:
            with self._lock:
                index = next(self._next)
            try:
                upstream = socket.create_connection(self.upstreams[index], timeout=2)
            except OSError:
                continue  # that node is down: the next one
            upstream.settimeout(None)
            return upstream
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream = self._connect()
        if upstream is None:
            _cut(client)
            return
        with self._lock:
            self._conns |= {client, upstream}
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        self._pump(upstream, client)
        with self._lock:
            self._conns -= {client, upstream}

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            _cut(sink)  # a connection cut on one side is cut on the other
            return
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


class DistributedMinio:
    """Four MinIO node processes, two drives each, as one store behind a Balancer.
    Has what tests use of an S3Server: `endpoint`, `port`, `client`, `name`, `ca_file`."""

    name = "minio"
    ca_file = None

    def __init__(self, binary: str, base: Path, nodes: int = 4, drives: int = 2):
        self.binary, self.base = binary, base
        address = host_address()
        self.node_ports = [free_port() for _ in range(nodes)]
        self.drives = [
            f"http://{address}:{port}{base}/node{n}/disk{d}"
            for n, port in enumerate(self.node_ports)
            for d in range(1, drives + 1)
        ]
        for n in range(nodes):
            for d in range(1, drives + 1):
                (base / f"node{n}" / f"disk{d}").mkdir(parents=True, exist_ok=True)
        self.env = clean_env(
            {
                "MINIO_ROOT_USER": ACCESS_KEY,
                "MINIO_ROOT_PASSWORD": SECRET_KEY,
                "MINIO_BROWSER": "off",
                "MINIO_CI_CD": "1",  # drives on the root disk are fine here
            }
        )
        self.processes: list[subprocess.Popen | None] = [None] * nodes
        # A FaultProxy before each node, so one node can misbehave (faultproxy.py).
        self.node_proxies = [FaultProxy((address, port), free_port()) for port in self.node_ports]
        for n in range(nodes):
            self.start_node(n, wait=False)
        self.balancer = Balancer([("127.0.0.1", p.port) for p in self.node_proxies], free_port())
        self.port = self.balancer.port
        self.endpoint = self.balancer.endpoint
        self.client = Minio(
            self.endpoint,
            ACCESS_KEY,
            SECRET_KEY,
            secure=False,
            region="us-east-1",
            # A test's own requests go on through the faults it makes: a connection cut
            # at a node is tried again through the next.
            http_client=urllib3.PoolManager(
                retries=urllib3.Retry(total=5, backoff_factor=0.2),
                timeout=urllib3.Timeout(connect=2, read=20),
            ),
        )
        wait_until(self.writable, 90, interval=0.5, what="the distributed MinIO to take writes")

    def start_node(self, n: int, wait: bool = True) -> None:
        with open(self.base / f"node{n}.log", "ab") as log:
            self.processes[n] = subprocess.Popen(
                [self.binary, "server", "--address", f":{self.node_ports[n]}", "--quiet",
                 *self.drives],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if wait:
            wait_until(lambda: self.node_ready(n), 90, interval=0.5, what=f"node {n} to serve")

    def kill_node(self, n: int) -> None:
        """SIGKILL: the node's drives go with it, mid-request."""
        process = self.processes[n]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        self.processes[n] = None

    def node_ready(self, n: int) -> bool:
        """The node says it is in the cluster and the cluster has write quorum."""
        url = f"http://127.0.0.1:{self.node_ports[n]}/minio/health/cluster"
        try:
            return urllib3.request("GET", url, timeout=2, retries=False).status == 200
        except urllib3.exceptions.HTTPError:
            return False

    def writable(self) -> bool:
        return any(self.node_ready(n) for n, p in enumerate(self.processes) if p is not None)

    def stop(self) -> None:
        self.balancer.close()
        for proxy in self.node_proxies:
            proxy.close()
        for process in self.processes:
            if process is not None:
                process.terminate()
        for process in self.processes:
            if process is not None:
                process.wait(20)
