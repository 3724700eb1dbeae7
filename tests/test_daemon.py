"""The supervisor's loop: how long it sleeps, up to a tick but no later than the moment
the next stream falls idle."""

import pytest
from clock import Clock

from streamer.config import Config
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
