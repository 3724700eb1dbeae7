"""The supervisor's stream table and discovery on a real checkpoint store and real files,
without processes: the moments where no uploader can take a stream, or its record went."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import msgspec
import pytest

from streamer import config
from streamer.records import StreamRecord, StreamState
from streamer.supervisor.daemon import Supervisor
from streamer.supervisor.table import StreamPhase
from streamer.watcher import Watcher


@pytest.fixture
def supervisor(tmp_path):
    (tmp_path / "input").mkdir()
    settings = config.load(
        None,
        environ={
            "STREAMER_WATCH_DIRECTORY": str(tmp_path / "input"),
            "STREAMER_CHECKPOINT_PATH": str(tmp_path / "checkpoint"),
        },
    )
    supervisor = Supervisor(settings)
    supervisor.ctx.open_store()
    yield supervisor
    supervisor.ctx.close_store()


def recording(supervisor, name: str) -> tuple[StreamRecord, object]:
    path = os.path.join(supervisor.config.watch.directory, name)
    with open(path, "wb") as f:
        f.write(b"r" * 1000)
    file = Watcher.stat(path)
    record = StreamRecord(
        stream_id=name, path=path, inode=file.inode, device=file.device, chunk_size=4096,
        first_seen_at=datetime.now(UTC),
    )  # fmt: skip
    supervisor.ctx.store.create_stream(record)
    return record, file


def test_a_stream_found_while_every_uploader_stops_waits_for_the_next_start(supervisor):
    """No running uploader (all told to stop): the stream is tracked, owned by none, and
    nothing is sent; losing it then tells no one either."""
    record, file = recording(supervisor, "late.mp4")
    tracked = supervisor.table.track(record, file, 0.0, "stream_discovered")
    assert tracked.owner == -1 and tracked.stream_id in supervisor.table
    supervisor.table.abandon(tracked, "deleted before it finished")
    assert tracked.phase is StreamPhase.ABANDONING


def test_a_stream_forgotten_while_tracked_is_not_a_crash(supervisor):
    record, file = recording(supervisor, "gone.mp4")
    tracked = supervisor.table.track(record, file, 0.0, "stream_discovered")
    supervisor.ctx.store.update_stream(
        record.stream_id,
        lambda r: msgspec.structs.replace(r, state=StreamState.CANCELLED),
    )
    supervisor.ctx.store.forget_stream(record.stream_id)
    supervisor.discovery.check_cancellations()
    assert tracked.phase is StreamPhase.STREAMING


def test_a_stale_heartbeat_is_judged_from_when_the_supervisor_itself_came_back():
    import multiprocessing
    from types import SimpleNamespace

    from streamer.childproc import Heartbeat
    from streamer.supervisor.workers import Worker, Workers, WorkerState

    settings = config.Config(workers=config.WorkersConfig(stall_timeout=10))
    workers = Workers(SimpleNamespace(config=settings), list)
    heartbeat = Heartbeat(multiprocessing.get_context("fork"), 100.0)
    worker = Worker(0, None, None, None, heartbeat)
    workers.workers[0] = worker
    assert workers.stalled(105.0, since=0.0) == []
    assert workers.stalled(111.0, since=0.0) == [worker]
    # The supervisor itself was stopped until 108: the uploader gets its full timeout.
    assert workers.stalled(111.0, since=108.0) == []
    heartbeat.beat(110.5, "waiting, 0 streams held")
    assert workers.stalled(115.0, since=0.0) == [] and heartbeat.doing.startswith("waiting")
    worker.state = WorkerState.STALLED  # killed already: not killed again
    assert workers.stalled(200.0, since=0.0) == []
