"""The metrics endpoint answers however many clients hold connections open, send their
requests a byte at a time or reconnect as soon as they are cut: a liveness probe must
never restart a daemon whose loop turns."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_until
from harness import cli, port_of
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from streamer.metrics import MAX_REQUEST

pytestmark = pytest.mark.integration

PROBE_TIMEOUT = 1.0  # what a Kubernetes liveness probe waits by default
SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: streamer\r\n\r\n"
LISTEN = "0A"  # a socket's state in /proc/net/tcp


def ask(port: int, path: str) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def exchange(port: int, request: bytes) -> int:
    """The status the endpoint answers `request` with, sent as it is."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        reply = b""
        while data := s.recv(65536):
            reply += data
    return int(reply.split(b" ", 2)[1])


def _crowd(port: int, silent: int, trickling: int, hoarding: int, connected) -> None:
    """Clients that each connect again as soon as they are done: `silent` ones send nothing
    until they are cut; `trickling` ones send a request a byte at a time and read the
    answer; `hoarding` ones ask for /metrics and leave after a second without reading it."""

    def client(talk) -> None:
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                with connected.get_lock():
                    connected.value += 1
                talk(s)

    def hold(s: socket.socket) -> None:
        while s.recv(4096):
            pass

    def trickle(s: socket.socket) -> None:
        for byte in SCRAPE:
            s.send(bytes([byte]))
            time.sleep(0.2)
        hold(s)

    def hoard(s: socket.socket) -> None:
        s.sendall(SCRAPE)
        time.sleep(1)

    for talk in [hold] * silent + [trickle] * trickling + [hoard] * hoarding:
        threading.Thread(target=client, args=(talk,), daemon=True).start()
    threading.Event().wait()


@contextlib.contextmanager
def crowd(port: int, silent: int = 0, trickling: int = 0, hoarding: int = 0):
    """The clients run in a process of their own, so they cannot slow the test's probes.
    Yields how many connections they have opened so far."""
    fork = multiprocessing.get_context("fork")
    connected = fork.Value("i", 0)
    process = fork.Process(
        target=_crowd, args=(port, silent, trickling, hoarding, connected), daemon=True
    )
    process.start()
    clients = silent + trickling + hoarding
    try:
        wait_until(lambda: connected.value >= clients, 10, what="the clients to connect")
        yield connected
    finally:
        process.kill()
        process.join()


def probe_until_cut(probe, connected, clients: int) -> None:
    """`probe()` holds at every try, a second apart, at least three times and until every
    client has come back at least once."""
    probes = 0

    def every_client_came_back() -> bool:
        nonlocal probes
        assert probe() is not False
        probes += 1
        return probes >= 3 and connected.value >= 2 * clients

    wait_until(every_client_came_back, 40, interval=1, what="the clients to come back")


def assert_answers(daemon, port: int) -> None:
    status, body = ask(port, "/healthz")
    assert (status, body) == (200, b'{"status": "ok"}')
    assert ask(port, "/readyz")[0] == 200
    status, body = ask(port, "/metrics")
    assert status == 200 and b"streamer_chunks_uploaded_total" in body
    health = cli(daemon, "health", env={"STREAMER_METRICS_PORT": str(port)})
    assert (health.returncode, health.stdout) == (0, "ok\n"), health.stderr


@pytest.mark.parametrize("descriptors", [None, 128], ids=["usual-limit", "at-the-cap"])
def test_health_answers_however_many_clients_hold_connections(make_daemon, descriptors):
    """40 clients that connect, send nothing and reconnect as soon as they are cut, and 10
    that send their requests a byte at a time, for more than a connection's 10 s: every
    probe is answered within its 1 s. With 128 descriptors the cap is 32 connections, so
    every new one closes an older one."""
    wrapper = ("prlimit", f"--nofile={descriptors}") if descriptors else ()
    daemon = make_daemon(wrapper=wrapper).start()
    port = port_of(daemon)
    wait_until(lambda: ask(port, "/readyz")[0] == 200, 10, what="ready")
    with crowd(port, silent=40, trickling=10) as connected:
        probe_until_cut(lambda: assert_answers(daemon, port), connected, 50)


def test_at_the_cap_with_every_request_read_the_oldest_goes(make_daemon):
    """40 clients ask for /metrics, which takes seconds to collect: at the cap (32, with
    128 descriptors) every connection has sent its whole request, and a new one closes
    the oldest. The connections stay within the cap, and every probe is answered."""
    daemon = make_daemon(wrapper=("prlimit", "--nofile=128")).start()
    port, pid = port_of(daemon), daemon.process.pid
    padding = MmapedDict(str(Path(daemon.env["PROMETHEUS_MULTIPROC_DIR"]) / "counter_999999.db"))
    for n in range(50_000):
        key = mmap_key("padding_total", "padding_total", ["n"], [str(n)], "samples to collect")
        padding.write_value(key, 1.0, 0.0)
    padding.close()

    def within_the_cap_and_answered() -> bool:
        held = connections_on(port) & sockets_held_by(pid)
        assert len(held) <= 32 + 1  # and the one just accepted, before it makes room
        return ask(port, "/healthz") == (200, b'{"status": "ok"}')

    with crowd(port, hoarding=40) as connected:
        probe_until_cut(within_the_cap_and_answered, connected, 40)
        health = cli(daemon, "health", env={"STREAMER_METRICS_PORT": str(port)})
        assert health.returncode == 0, health.stderr


def test_a_request_that_came_while_connections_poured_in_is_answered(make_daemon):
    """At the cap (32), a prober's request arrives just after 40 new connections: room is
    made by closing the connections that sent nothing, and the prober is answered, though
    it is among the oldest still open when the new ones are taken up."""
    daemon = make_daemon(wrapper=("prlimit", "--nofile=128")).start()
    port, pid = port_of(daemon), daemon.process.pid
    wait_until(lambda: ask(port, "/readyz")[0] == 200, 10, what="ready")

    def taken_up() -> int:
        return len(connections_on(port) & sockets_held_by(pid))

    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(31)]
    wait_until(lambda: taken_up() == 31, 10, what="31 connections taken up")
    prober = socket.create_connection(("127.0.0.1", port), timeout=5)
    wait_until(lambda: taken_up() == 32, 10, what="the prober taken up")
    os.kill(pid, signal.SIGSTOP)
    try:
        silent += [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        prober.sendall(b"GET /healthz HTTP/1.1\r\nHost: streamer\r\n\r\n")
    finally:
        os.kill(pid, signal.SIGCONT)
    reply = prober.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply
    for client in [prober, *silent]:
        client.close()


def test_health_answers_when_clients_hold_the_last_descriptors(make_daemon):
    """The process may open 32 descriptors more than it holds: 40 clients take them, and
    each new connection closes an older one to get its own."""
    # No directory scan needs a descriptor meanwhile.
    daemon = make_daemon(watch={"rescan_interval": 3600}).start()
    port, pid = port_of(daemon), daemon.process.pid
    wait_until(lambda: ask(port, "/readyz")[0] == 200, 10, what="ready")
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(
        pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 32, limits[1])
    )
    try:
        with crowd(port, silent=40) as connected:
            probe_until_cut(
                lambda: ask(port, "/healthz") == (200, b'{"status": "ok"}'), connected, 40
            )
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)


def test_bad_requests_are_answered_and_a_damaged_metrics_file_fails_only_its_scrape(make_daemon):
    daemon = make_daemon().start()
    port = port_of(daemon)
    assert exchange(port, b"garbage\r\n\r\n") == 400
    assert exchange(port, b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n") == 501
    head = b"GET /healthz HTTP/1.1\r\nX-Padding: "
    assert exchange(port, head + b"x" * (MAX_REQUEST + 1 - len(head))) == 431
    assert exchange(port, b"GET /elsewhere HTTP/1.1\r\n\r\n") == 404

    damaged = Path(daemon.env["PROMETHEUS_MULTIPROC_DIR"]) / "counter_damaged.db"
    damaged.mkdir()  # a file the collector cannot read
    status, body = ask(port, "/metrics")
    assert status == 500 and b"cannot collect the metrics" in body and b"directory" in body
    assert ask(port, "/healthz")[0] == 200
    shutil.rmtree(damaged)
    assert ask(port, "/metrics")[0] == 200


def connections_on(port: int) -> set[int]:
    """Socket inodes of the TCP connections whose local port is `port` (not the listener)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != LISTEN:
                inodes.add(int(fields[9]))
    return inodes


def sockets_held_by(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def test_an_uploader_forked_while_clients_are_connected_holds_none_of_them(make_daemon):
    daemon = make_daemon(workers=1).expect("uploader_died").start()
    port = port_of(daemon)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        # Answered after the connections before it were taken up.
        assert ask(port, "/healthz")[0] == 200
        [victim] = daemon.uploader_pids()
        os.kill(victim, signal.SIGKILL)
        spawned = daemon.wait_for("uploader_spawned", count=2)[1]["pid"]
        daemon.wait_for("uploader_started", pid=spawned)
        open_ones = connections_on(port)
        assert len(open_ones) >= 5
        assert not open_ones & sockets_held_by(spawned)
    finally:
        for client in clients:
            client.close()
