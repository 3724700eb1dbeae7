"""What each process's roles work with: its context.

The uploader's (streamer/uploader/context.py) is the one way an uploader retries a failed
step (`UploaderContext.retry_later`, `fail`, `step_succeeded`): the failure is classified,
the stream parked and the supervisor told why, for how long and since when (`StreamParked`:
whether it heals by itself, whether it is a bug), told once when it goes through again
(`StreamResumed`); its backoff grows to the cap; S3 and the checkpoint store are told
unreachable or unwritable once, when that changes; a bug's traceback is logged once. In
this process (tests/uploaders.py), on a job adopted by hand, the failures made up.

The supervisor's (streamer/supervisor/context.py) says once when the checkpoint store
stops taking writes and once when it takes them again, and opens and closes the store
around every fork (tests/supervisors.py)."""

from __future__ import annotations

import logging
import random

import urllib3
from dirstore import s3_error
from sample_records import stream
from uploaders import InProcess

from streamer.checkpoint import CheckpointUnwritable
from streamer.messages import CheckpointState, S3State, StreamParked, StreamResumed

SIZE = 64 * 1024


def adopted(uploader: InProcess):
    record = uploader.track("cam.mp4", b"\0" * SIZE)
    uploader.uploader.handle(uploader.commands.get(1))  # the Assign
    return uploader.uploader.ctx.jobs[record.stream_id]


def test_a_step_that_failed_in_passing_parks_the_stream_and_the_supervisor_is_told(uploader):
    ctx, job = uploader.uploader.ctx, adopted(uploader)
    ctx.retry_later(job, ConnectionResetError("cut"), 1000.0)
    ctx.retry_later(job, ConnectionResetError("cut"), 1004.0)
    first, second = uploader.of(StreamParked)
    assert (first.stream_id, first.reason) == (job.stream_id, "ConnectionResetError: cut")
    assert first.heals and not first.bug
    assert (first.failing_for, second.failing_for) == (0.0, 4.0), "since the first failure"
    assert job.backoff.due == 1004.0 + second.delay and job.backoff.attempt == 2
    assert job.told_parked
    assert not uploader.of(S3State), "no sign that S3 itself is away"


def test_a_stream_that_goes_through_again_is_told_resumed_once_and_its_backoff_reset(uploader):
    ctx, job = uploader.uploader.ctx, adopted(uploader)
    resumed = StreamResumed(stream_id=job.stream_id)
    ctx.step_succeeded(job)  # adopted: perhaps parked by its owner before
    ctx.step_succeeded(job)
    assert uploader.of(StreamResumed) == [resumed], "told once, then nothing to tell"
    ctx.retry_later(job, ConnectionResetError("cut"), 1000.0)
    ctx.step_succeeded(job)
    ctx.step_succeeded(job)
    assert uploader.of(StreamResumed) == [resumed, resumed]
    assert (job.told_parked, job.backoff.attempt, job.backoff.error) == (False, 0, "")
    ctx.retry_later(job, ConnectionResetError("cut"), 2000.0)
    assert uploader.of(StreamParked)[-1].failing_for == 0.0, "failing anew"


def test_the_backoff_grows_with_each_failure_in_a_row_up_to_the_cap(uploader):
    ctx, job = uploader.uploader.ctx, adopted(uploader)
    base, cap = ctx.config.s3.retry_base, ctx.config.s3.retry_cap
    state = random.getstate()
    random.seed(7)  # the jitter, made the same at each run
    try:
        for _ in range(12):
            ctx.retry_later(job, ConnectionResetError("cut"), 1000.0)
    finally:
        random.setstate(state)
    delays = [parked.delay for parked in uploader.of(StreamParked)]
    for attempt, delay in enumerate(delays):
        assert 0 <= delay < min(cap, base * 2**attempt), f"attempt {attempt}"
    assert max(delays[-4:]) > 4 * base, "grown well past the first tries'"


def test_a_refusal_waits_the_whole_cap_says_what_to_do_and_s3_is_still_reached(uploader):
    ctx, job = uploader.uploader.ctx, adopted(uploader)
    ctx.retry_later(job, s3_error("AccessDenied", 403, "rec/cam"), 1000.0)
    [parked] = uploader.of(StreamParked)
    assert parked.delay == ctx.config.s3.retry_cap and not parked.heals and not parked.bug
    assert "AccessDenied" in parked.reason and "(will not heal by itself: " in parked.reason
    assert not uploader.of(S3State), "S3 answered"


def test_s3_or_the_checkpoint_store_away_is_told_once_when_it_changes(uploader):
    ctx, job = uploader.uploader.ctx, adopted(uploader)
    for now in (1000.0, 1001.0):
        ctx.retry_later(job, s3_error("SlowDown", 503, "rec/cam"), now)
        ctx.retry_later(job, urllib3.exceptions.ProtocolError("reset"), now)
    [away] = uploader.of(S3State)
    assert not away.reachable and "SlowDown" in away.error
    ctx.retry_later(job, CheckpointUnwritable("no space left"), 1002.0)
    ctx.retry_later(job, CheckpointUnwritable("no space left"), 1003.0)
    [unwritable] = uploader.of(CheckpointState)
    assert not unwritable.writable and "no space left" in unwritable.error
    assert all(parked.heals for parked in uploader.of(StreamParked))


def test_a_bug_parks_the_stream_as_one_and_its_traceback_is_logged_once(uploader, caplog):
    ctx, job = uploader.uploader.ctx, adopted(uploader)
    caplog.set_level(logging.DEBUG, logger="streamer")
    for now in (1000.0, 1010.0):
        ctx.retry_later(job, ValueError("no such box"), now)
    first, second = uploader.of(StreamParked)
    assert first.bug and not first.heals and second.bug
    assert first.reason.startswith("ValueError: no such box (a bug: ")
    lines = [(r.getMessage(), r.fields) for r in caplog.records if r.name.startswith("streamer")]
    assert [event for event, _ in lines] == ["stream_failed", "step_failed_again"]
    assert "ValueError: no such box" in lines[0][1]["traceback"]
    assert "traceback" not in lines[1][1] and lines[1][1]["attempt"] == 2


def events(caplog) -> list[tuple[str, dict]]:
    return [(r.getMessage(), r.fields) for r in caplog.records if r.name.startswith("streamer")]


def test_the_supervisor_says_once_when_the_store_stops_taking_writes_and_once_when_it_takes_them(
    supervisor, caplog
):
    ctx = supervisor.ctx
    caplog.set_level(logging.DEBUG, logger="streamer")
    path = ctx.config.checkpoint.path
    assert not ctx.checkpoint_state(True), "it was writable already"
    assert ctx.checkpoint_state(False, "No space left on device")
    assert not ctx.checkpoint_state(False, "No space left on device")
    assert (ctx.checkpoint_writable, ctx.checkpoint_error) == (False, "No space left on device")
    assert ctx.checkpoint_state(True)
    assert ctx.checkpoint_writable
    assert events(caplog) == [
        ("checkpoint_unwritable", {"path": path, "error": "No space left on device"}),
        ("checkpoint_writable", {"path": path}),
    ]


def test_the_supervisor_closes_the_store_for_a_fork_and_opens_the_same_one_again(supervisor):
    ctx = supervisor.ctx
    ctx.store.create_stream(stream("cam-1"))
    ctx.close_store()
    assert ctx.store is None
    ctx.close_store()  # closed already: nothing to do
    ctx.open_store()
    assert [r.stream_id for r in ctx.store.streams()] == ["cam-1"]
