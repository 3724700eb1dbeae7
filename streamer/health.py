"""The supervisor's liveness, as `streamer health` and /healthz see it: the loop turned
within HEALTHY_WITHIN seconds. With metrics off there is no /healthz, so the loop touches
a heartbeat file in the checkpoint directory instead."""

from __future__ import annotations

import contextlib
import os
import time

HEALTHY_WITHIN = 10.0  # seconds since the supervisor's loop last turned
BEAT_EVERY = 2.0  # seconds between touches of the heartbeat file
HEARTBEAT_FILE = "heartbeat"


def heartbeat_path(checkpoint_path: str) -> str:
    return os.path.join(checkpoint_path, HEARTBEAT_FILE)


def beat(path: str) -> None:
    """Touch the file; a failure (a full or read-only disk) only makes the beat late,
    which is what `health` should then say."""
    with contextlib.suppress(OSError), open(path, "a"):
        os.utime(path)


def since_beat(path: str) -> float | None:
    """Seconds since the last beat; None: never beaten here."""
    try:
        return max(0.0, time.time() - os.stat(path).st_mtime)
    except FileNotFoundError:
        return None
