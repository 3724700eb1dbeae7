"""An uploader in this process, on the directory-backed store: its roles built as a forked
uploader builds them (`Uploader.build`), a real checkpoint store in a temporary folder,
its commands and events through real pipes, and its loop stepped by hand (`loop(now)`)
with a clock the test holds. Chunks, surveys and copies run in its real threads; what
they hand back is handled by the next `loop`."""

from __future__ import annotations

import multiprocessing
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clock import Clock
from dirstore import DirectoryStore

from streamer.checkpoint import CheckpointStore
from streamer.childproc import Heartbeat
from streamer.config import CheckpointConfig, Config, S3Config, StreamConfig, WatchConfig
from streamer.messages import Assign, Finish, Grow, Mailbox, Message
from streamer.records import StreamRecord
from streamer.uploader.process import Uploader

INSTANCE = "test-host"
TICK = 0.02  # seconds of real time the loop may wait at a time


class InProcess:
    def __init__(self, tmp_path: Path, s3: DirectoryStore | None = None, **stream):
        self.watch = tmp_path / "input"
        self.watch.mkdir(exist_ok=True)
        checkpoint = tmp_path / "checkpoint"
        self.config = Config(
            watch=WatchConfig(directory=str(self.watch)),
            stream=StreamConfig(**{"chunk_size": 64 * 1024, "upload_window": 2, **stream}),
            s3=S3Config(prefix="rec"),
            checkpoint=CheckpointConfig(path=str(checkpoint)),
            instance=INSTANCE,
        )
        self.store = CheckpointStore(str(checkpoint), self.config.checkpoint.map_size)
        # As the supervisor does at its start, before any uploader opens the store.
        self.store.claim_instance(INSTANCE, INSTANCE)
        self.store.begin_start()
        self.s3 = s3 or DirectoryStore(tmp_path / "s3", prefix="rec", instance=INSTANCE)
        self.s3.ensure_bucket(create=True)
        fork = multiprocessing.get_context("fork")
        self.commands = Mailbox.for_commands(fork)
        self.events = Mailbox.for_events(fork)
        self.clock = Clock()
        self.uploader = Uploader(
            0,
            self.config,
            self.commands,
            self.events,
            os.getpid(),
            [],
            Heartbeat(fork, self.clock()),
            clock=self.clock,
        )
        self.uploader.build(self.store, self.s3)
        # The loop waits for work in real time, as long as the test's clock says: a tick
        # at most here, so a backoff that clock runs out takes as many ticks, not seconds.
        waits = self.uploader.wait_time
        self.uploader.wait_time = lambda now: min(waits(now), TICK)
        self.seen: list[Message] = []

    def track(self, name: str, data: bytes = b"") -> StreamRecord:
        """A recording in the watch directory, its stream created as the supervisor creates
        it, and assigned to this uploader."""
        path = self.watch / name
        path.write_bytes(data)
        st = path.stat()
        record = StreamRecord(
            stream_id=f"{path.stem}-1",
            path=str(path),
            relative_path=name,
            inode=st.st_ino,
            device=st.st_dev,
            chunk_size=self.config.stream.chunk_size,
            first_seen_at=datetime.now(UTC),
        )
        self.store.create_stream(record)
        self.commands.put(Assign(stream_id=record.stream_id))
        return record

    def append(self, record: StreamRecord, data: bytes) -> None:
        """The recorder writes more, and the supervisor tells the owner the file grew."""
        with open(record.path, "ab") as f:
            f.write(data)
        size = os.stat(record.path).st_size
        self.commands.put(Grow(stream_id=record.stream_id, size=size))

    def finish(self, record: StreamRecord) -> None:
        """Tell the uploader the file has been idle at its size and mtime now."""
        st = os.stat(record.path)
        self.commands.put(
            Finish(stream_id=record.stream_id, size=st.st_size, mtime_ns=st.st_mtime_ns)
        )

    def run_until(self, done, timeout: float = 20.0, step: float = 0.05) -> None:
        """Step the loop, the clock `step` seconds on each time, until `done()`; its
        threads run in real time meanwhile."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"not done after {timeout} s: {self.seen}"
            self.uploader.loop(self.clock())
            self.read_events()
            self.clock.advance(step)

    def read_events(self) -> list[Message]:
        while (message := self.events.get()) is not None:
            self.seen.append(message)
        return self.seen

    def of(self, kind: type) -> list:
        return [m for m in self.read_events() if isinstance(m, kind)]

    def close(self) -> None:
        tasks = self.uploader.ctx.tasks
        tasks.settle()
        tasks.shutdown()
        self.store.close()
        self.commands.close()
        self.events.close()


@pytest.fixture
def uploader(request, tmp_path):
    """An InProcess uploader; its stream settings, if any, are the test's indirect
    parameter (`@pytest.mark.parametrize("uploader", [{"chunk_size": ...}], indirect=True)`)."""
    made = InProcess(tmp_path, **getattr(request, "param", {}))
    yield made
    made.close()
