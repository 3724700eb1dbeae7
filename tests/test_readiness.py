"""What /readyz answers and the gauges of the streams held, on a real checkpoint store,
with two uploaders without processes and the clock set by the test."""

from __future__ import annotations

import pytest
from clock import Clock
from prometheus_client import REGISTRY
from supervisors import recording

from streamer.messages import StreamParked
from streamer.supervisor.readiness import Readiness
from streamer.supervisor.table import StreamPhase
from streamer.supervisor.workers import WorkerState


@pytest.fixture
def clock(supervisor):
    supervisor.ctx.clock = Clock()  # at 1000.0
    return supervisor.ctx.clock


@pytest.fixture
def readiness(supervisor, workers, clock):
    return Readiness(supervisor.ctx, workers, supervisor.table)


def park(supervisor, tracked, now: float, failing_for: float, delay: float, bug=False):
    message = StreamParked(
        stream_id=tracked.stream_id,
        reason="S3 away",
        delay=delay,
        failing_for=failing_for,
        heals=not bug,
        bug=bug,
    )
    supervisor.table.parked(tracked, message, now)


def gauge(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_ready_once_s3_answers_and_while_the_store_takes_writes_and_every_uploader_runs(
    supervisor, workers, readiness
):
    ok, checks = readiness.checks(running=True)
    assert not ok and checks["s3"] == {"ok": False, "error": "no answer from S3 yet"}
    readiness.s3_state(True, "", "")
    ok, checks = readiness.checks(running=True)
    assert ok and all(check["ok"] for check in checks.values())
    assert checks["uploaders"] == {"ok": True, "alive": 2, "expected": 2}
    assert not readiness.checks(running=False)[0], "stopping"

    supervisor.ctx.checkpoint_state(False, "No space left on device")
    ok, checks = readiness.checks(running=True)
    assert not ok and checks["checkpoint"] == {"ok": False, "error": "No space left on device"}
    supervisor.ctx.checkpoint_state(True)
    assert readiness.checks(running=True)[0]

    workers[1].state = WorkerState.STOPPING
    ok, checks = readiness.checks(running=True)
    assert not ok and checks["uploaders"] == {"ok": False, "alive": 1, "expected": 2}
    workers[1].state = WorkerState.RUNNING

    supervisor.ctx.close_store()  # around a fork
    assert not readiness.checks(running=True)[1]["checkpoint"]["ok"]
    supervisor.ctx.open_store()
    assert readiness.checks(running=True)[0]


def test_whether_the_bucket_is_there_is_known_only_from_an_answer_of_s3(readiness):
    readiness.s3_state(True, "", "bucket cams does not exist")
    ok, checks = readiness.checks(running=True)
    assert not ok and checks["bucket"] == {"ok": False, "error": "bucket cams does not exist"}
    readiness.s3_state(False, "connection refused", "")  # no answer: says nothing of it
    ok, checks = readiness.checks(running=True)
    assert checks["bucket"]["ok"] is False
    assert checks["s3"] == {"ok": False, "error": "connection refused"}
    readiness.s3_state(True, "", "")
    assert readiness.checks(running=True)[0]


def test_a_stuck_stream_makes_the_daemon_unready_and_a_parked_one_does_not(
    supervisor, readiness, clock
):
    readiness.s3_state(True, "", "")
    stuck_after = supervisor.config.stream.stuck_after
    tracked = supervisor.table.track(*recording(supervisor, "a.mp4"), 0.0, "stream_discovered")
    park(supervisor, tracked, clock.now, failing_for=10.0, delay=30.0)
    ok, checks = readiness.checks(running=True)
    assert ok and checks["streams"]["stuck"] == []
    assert checks["streams"]["parked"] == [
        {
            "stream_id": "a.mp4",
            "path": tracked.file.path,
            "reason": "S3 away",
            "heals": True,
            "failing_for": 10.0,
            "due_in": 30.0,
        }
    ]

    clock.now += stuck_after - 10.0
    ok, checks = readiness.checks(running=True)
    assert not ok and checks["streams"]["ok"] is False and checks["streams"]["parked"] == []
    (stuck,) = checks["streams"]["stuck"]
    assert (stuck["stream_id"], stuck["failing_for"], stuck["due_in"]) == ("a.mp4", stuck_after, 0)

    supervisor.table.resumed(tracked)
    assert readiness.checks(running=True)[0]
    park(supervisor, tracked, clock.now, failing_for=0.0, delay=30.0, bug=True)
    assert readiness.waiting(clock.now)["stuck"][0]["heals"] is False, "no fault explains it"
    assert not readiness.checks(running=True)[0]


def test_the_gauges_count_streams_by_phase_and_the_bytes_of_those_not_abandoned(
    supervisor, readiness, clock
):
    table = supervisor.table
    streaming, finishing, abandoned, parked = (
        table.track(*recording(supervisor, name), at, "stream_discovered")
        for name, at in (("s.mp4", 990.0), ("f.mp4", 995.0), ("a.mp4", 900.0), ("p.mp4", 998.0))
    )  # 1000 bytes each
    streaming.committed_to(400)
    streaming.uploaded(600)
    finishing.move_to(StreamPhase.FINISHING)
    finishing.committed_to(1000)
    table.abandon(abandoned, "deleted before it finished")
    park(supervisor, parked, 1000.0, failing_for=1.0, delay=30.0)
    readiness.update_gauges(1012.0)

    states = ("streaming", "finishing", "abandoning", "parked", "stuck")
    assert [gauge("streamer_streams", state=s) for s in states] == [1, 1, 1, 1, 0]
    assert gauge("streamer_delivery_bytes_on_disk") == 3000
    assert gauge("streamer_delivery_bytes_uploaded") == 600 + 1000 + 0
    assert gauge("streamer_delivery_bytes_committed") == 400 + 1000 + 0
    assert gauge("streamer_delivery_oldest_uncommitted_age_seconds") == 1012.0 - 990.0
    assert gauge("streamer_seconds_since_last_upload") == 12.0, "none yet: since the start"
    assert gauge("streamer_s3_reachable") == 0
    assert gauge("streamer_checkpoint_writable") == 1

    readiness.last_upload = 1010.0
    readiness.s3_state(True, "", "")
    supervisor.ctx.checkpoint_state(False, "No space left on device")
    readiness.update_gauges(1012.0)
    assert gauge("streamer_seconds_since_last_upload") == 2.0
    assert gauge("streamer_s3_reachable") == 1
    assert gauge("streamer_checkpoint_writable") == 0
