"""The supervisor's loop (streamer/supervisor/daemon.py): how long it sleeps, up to a tick
but no later than the moment the next stream falls idle; and when a one-shot run is over
(tests/supervisors.py)."""

import msgspec
import pytest
from clock import Clock
from supervisors import recording

from streamer.config import Config
from streamer.records import StreamState
from streamer.supervisor.daemon import TICK, Supervisor


def test_the_supervisor_wakes_when_a_stream_falls_idle_and_not_a_tick_later():
    clock = Clock()
    supervisor = Supervisor(Config(), clock=clock)
    supervisor.discovery.next_idle_at = clock.now + 0.2
    assert supervisor.sleep_time() == pytest.approx(0.2)
    supervisor.discovery.next_idle_at = clock.now + 60
    assert supervisor.sleep_time() == TICK
    supervisor.discovery.next_idle_at = clock.now - 0.1  # passed while it slept: finish it now
    assert supervisor.sleep_time() == 0
    supervisor.stop_deadline = clock.now + 10  # stopping: nothing is finished any more
    assert supervisor.sleep_time() == TICK


def test_a_one_shot_run_lets_go_of_a_file_passed_over_that_a_later_look_settles(supervisor):
    """A recording an earlier run finished, which the first scan could not look at (the
    store took no writes, say): looked at again, it is settled, and the run, with nothing
    else to do, stops instead of waiting for it."""
    record, file = recording(supervisor, "old.mp4")
    supervisor.ctx.store.update_stream(
        record.stream_id,
        lambda r: msgspec.structs.replace(
            r, state=StreamState.COMPLETE, total_size=file.size, mtime_ns=file.mtime_ns
        ),
    )
    discovery, now = supervisor.discovery, 1000.0
    discovery.missed.add(record.path)  # as a failed look leaves it
    supervisor.start_one_shot(now)
    assert supervisor.one_shot.missed == {record.path}
    assert not supervisor.tend_one_shot(now), "its look has not worked yet"
    discovery.rescan(now)
    assert record.path not in discovery.missed and record.stream_id not in discovery.table
    assert supervisor.tend_one_shot(now)
    assert supervisor.one_shot.all_finished and supervisor.stop_deadline is not None
