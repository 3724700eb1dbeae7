"""The supervisor's pieces on a real checkpoint store and real files, without processes:
the `supervisor` fixture and `recording` helper the tests of its modules share
(test_table.py, test_discovery.py, ...), and its uploaders' heartbeats."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from streamer import config
from streamer.records import StreamRecord
from streamer.supervisor.daemon import Supervisor
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
