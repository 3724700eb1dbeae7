"""The admin commands run in this process (`streamer`, through click's CliRunner), on a
config file in the test's folder (`configured`) and a real checkpoint store there (`stored`,
holding streams made by `stream`); and a stand-in for the daemon's HTTP endpoint
(`answering` its canned answers, such as `READINESS`), or a port where nothing listens
(`nothing_listening`); the checks `streamer doctor` lists."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sample_records import chunk, finished

from streamer.checkpoint import CheckpointStore
from streamer.cli import main
from streamer.records import StreamRecord, StreamState

MAP_SIZE = 64 * 1024 * 1024


def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **sections) -> Path:
    """A config file in tmp_path, found through $STREAMER_CONFIG, whose checkpoint store is
    tmp_path/checkpoint, with metrics off (no daemon to ask) unless `sections` say
    otherwise; and none of the developer's STREAMER_* settings, nor their own config file."""
    for name in [n for n in os.environ if n.startswith("STREAMER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # `main` drops it
    settings = {
        "checkpoint": {"path": str(tmp_path / "checkpoint"), "map_size": MAP_SIZE},
        "metrics": {"enabled": False},
        **sections,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(settings))
    monkeypatch.setenv("STREAMER_CONFIG", str(path))
    return path


def stored(checkpoint: Path, *records: StreamRecord) -> None:
    """A checkpoint store at `checkpoint` holding `records`, each with its chunks (as
    sample_records makes them: 100 bytes each), closed again for the command to open."""
    store = CheckpointStore(str(checkpoint), MAP_SIZE)
    try:
        for record in records:
            store.create_stream(record)
            store.replace_stream(record, [chunk(i) for i in range(record.chunk_count)])
    finally:
        store.close()


def stream(stream_id: str, state: StreamState = StreamState.COMPLETE, **changes) -> StreamRecord:
    """A stream of its own file and inode, finished as `state` unless it is active."""
    number = int.from_bytes(stream_id.encode(), "big") % 10_000
    changes = {"stream_id": stream_id, "path": f"/in/{stream_id}.mp4", "inode": number, **changes}
    if state is StreamState.ACTIVE:
        changes = {"total_size": None, "sha256": None, "completed_at": None, **changes}
    return finished(state, **changes)


def streamer(*args: str, input: str | None = None) -> Result:
    """The `streamer` command, run in this process; an error that is not an exit fails the
    test rather than passing for exit status 1."""
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


class Canned(http.server.BaseHTTPRequestHandler):
    """Answers GET with the server's `answers[path]`: (status, body), or a list of them
    given one after another (the last one again once they run out); 404 otherwise."""

    def do_GET(self) -> None:
        answer = self.server.answers.get(self.path, (404, b"not here"))
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        status, body = answer
        body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def answering(answers: dict) -> Iterator[int]:
    """A server on loopback giving the canned `answers`; its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    server.answers = answers
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def nothing_listening() -> Iterator[int]:
    """A port of ours where nothing listens: a connection to it is refused at once, and no
    other program can take it meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


# What the daemon answers, as streamer/metrics.py and supervisor/readiness.py make it.
PARKED = {
    "stream_id": "cam-1",
    "path": "/in/cam-1.mp4",
    "reason": "S3 away",
    "heals": True,
    "failing_for": 12.0,
    "due_in": 30.0,
}
READINESS = {
    "s3": {"ok": False, "error": "timeout"},
    "bucket": {"ok": True, "error": ""},
    "checkpoint": {"ok": True, "error": ""},
    "uploaders": {"ok": True, "alive": 2, "expected": 2},
    "running": {"ok": True},
    "streams": {"ok": True, "parked": [PARKED], "stuck": []},
}


# The checks `streamer doctor` makes, in the order it lists them.
DOCTOR_CHECKS = [
    "watch directory",
    "retention sees writers",
    "checkpoint store",
    "S3 reachable",
    "S3 credentials",
    "bucket",
    "scratch object",
    "conditional writes",
    "multipart copy",
    "instance name",
]
