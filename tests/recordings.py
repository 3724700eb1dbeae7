"""Recordings for the tests: real ones written by ffmpeg (in real time, or at once), a
synthetic writer that grows a file at a steady rate, their digests and durations, and a
finished stream's record of a file. tests/conftest.py registers the `ffmpeg` fixture for
every test."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ffprobe_duration(path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out)["format"]["duration"])


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if not path:
        pytest.fail("ffmpeg is not installed: `make test` installs it (apt-get install ffmpeg)")
    return path


def record_of(path, **changes):
    """A finished stream's record of the file at `path`, as it is now (4-byte chunks)."""
    import msgspec

    from streamer.records import StreamRecord, StreamState

    st = os.stat(path)
    record = StreamRecord(
        stream_id="s",
        path=str(path),
        inode=st.st_ino,
        device=st.st_dev,
        chunk_size=4,
        first_seen_at=datetime.now(UTC),
        state=StreamState.COMPLETE,
        total_size=st.st_size,
        mtime_ns=st.st_mtime_ns,
    )
    return msgspec.structs.replace(record, **changes)


class GrowingFile:
    """A synthetic recorder: appends `total` deterministic bytes at `rate` bytes/s."""

    def __init__(self, path: Path, total: int, rate: int, block: int = 16 * 1024):
        self.path, self.total, self.rate, self.block = path, total, rate, block
        self.written = 0
        self.done = threading.Event()
        self.data = hashlib.shake_256(path.name.encode()).digest(total)
        self._thread = threading.Thread(target=self._write, daemon=True)

    def start(self) -> GrowingFile:
        self._thread.start()
        return self

    def _write(self) -> None:
        with open(self.path, "wb") as f:
            while self.written < self.total:
                part = self.data[self.written : self.written + self.block]
                f.write(part)
                f.flush()
                self.written += len(part)
                time.sleep(len(part) / self.rate)
        self.done.set()

    def wait(self, timeout: float = 60) -> None:
        assert self.done.wait(timeout), "writer did not finish"


def record(
    ffmpeg: str, path: Path, seconds: float, kind: str, live: bool = True
) -> subprocess.Popen:
    """ffmpeg writing a real recording (in real time if `live`): kind is plain, faststart
    or fragmented."""
    movflags = {
        "plain": [],
        "faststart": ["-movflags", "+faststart"],
        "fragmented": ["-movflags", "frag_keyframe+empty_moov+default_base_moof", "-g", "25"],
    }[kind]
    return subprocess.Popen(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-nostdin",
            *(["-re"] if live else []),
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            str(seconds),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "2M",
            "-c:a",
            "aac",
            *movflags,
            str(path),
        ],
    )
