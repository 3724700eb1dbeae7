"""The daemon's heartbeat file, kept with metrics off (streamer/health.py): a beat makes it
or moves its mtime on, never raises, and the seconds since it are never negative; and
`streamer health`, which reads it, says alive within the 10 s its help promises and not
after, with the exit status a container health check goes by. Real files; no daemon."""

from __future__ import annotations

import json
import os
import time

from commands import configured, streamer

from streamer.health import HEALTHY_WITHIN, beat, heartbeat_path, since_beat


def aged(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_beat_makes_the_heartbeat_file_in_the_checkpoint_directory(tmp_path):
    path = heartbeat_path(str(tmp_path))
    assert path == str(tmp_path / "heartbeat")
    assert since_beat(path) is None, "never beaten here"
    beat(path)
    assert (tmp_path / "heartbeat").is_file()
    assert 0 <= since_beat(path) < 1


def test_a_beat_moves_an_old_heartbeat_on_to_now_and_keeps_the_file(tmp_path):
    path = heartbeat_path(str(tmp_path))
    beat(path)
    aged(path, 600)
    assert since_beat(path) >= 600
    beat(path)
    assert since_beat(path) < 1
    assert os.path.getsize(path) == 0, "touched, never written to"


def test_a_beat_that_cannot_be_written_is_only_late_never_an_error(tmp_path):
    gone = heartbeat_path(str(tmp_path / "no-such-directory"))
    beat(gone)  # a full or read-only disk: `health` says the beat is late
    assert since_beat(gone) is None


def test_a_heartbeat_from_the_future_counts_as_just_now(tmp_path):
    path = heartbeat_path(str(tmp_path))
    beat(path)
    aged(path, -3600)  # the clock was set back after the beat
    assert since_beat(path) == 0.0


def test_health_says_alive_within_10_seconds_of_a_beat_and_not_after(tmp_path, monkeypatch):
    configured(tmp_path, monkeypatch)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    never = streamer("health")
    assert never.exit_code == 1
    assert never.stderr == f"streamer: no heartbeat in {checkpoint}: the daemon has not run there\n"
    beat(heartbeat_path(str(checkpoint)))
    aged(checkpoint / "heartbeat", 8)
    alive = streamer("health")
    assert (alive.exit_code, alive.stdout) == (0, "ok\n")
    aged(checkpoint / "heartbeat", 12)
    late = streamer("health")
    assert late.exit_code == 1
    assert late.stderr == "streamer: unhealthy: the daemon's loop last turned 12 s ago\n"
    said = json.loads(streamer("health", "--json").stdout)
    assert said["status"] == "stalled" and said["seconds_since_loop"] >= HEALTHY_WITHIN == 10
