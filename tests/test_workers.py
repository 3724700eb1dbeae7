"""The uploader processes as the supervisor keeps them: a heartbeat judged stale against
the stall timeout, from when the supervisor itself last ran."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

from streamer import config
from streamer.childproc import Heartbeat
from streamer.supervisor.workers import Worker, Workers, WorkerState


def test_a_stale_heartbeat_is_judged_from_when_the_supervisor_itself_came_back():
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
