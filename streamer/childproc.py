"""What the supervisor and its uploader processes agree on across a fork: the exit codes
that tell how a process ended, the signals held back while a child is forked, and the
heartbeat an uploader keeps in memory both share."""

from __future__ import annotations

import ctypes
import signal

EXIT_OK = 0
EXIT_FAILURE = 1  # a forced stop, or uploaders that kept dying
EXIT_CONFIG = 2
EXIT_BOOT_ERROR = 3  # cannot start at all: restarting would only fail again

# Blocked in the supervisor around a fork, so that none reaches its handlers in the child
# before the child has its own; the child unblocks them.
FORK_BLOCKED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


DOING_SIZE = 240  # bytes of what an uploader says it is doing


class Heartbeat:
    """An uploader's sign of life, in memory shared across the fork and apart from its
    message pipes: when it was last known to make progress, and what it was doing then.
    An uploader stopped anywhere (SIGSTOP, a read stuck in the kernel on a dead mount)
    leaves it to age, whatever its pipes hold."""

    def __init__(self, fork_context, now: float):
        self._at = fork_context.RawValue(ctypes.c_double, now)
        self._doing = fork_context.RawArray(ctypes.c_char, DOING_SIZE)
        self._doing.value = b"starting"

    def beat(self, at: float, doing: str) -> None:
        self._doing.value = doing.encode(errors="replace")[: DOING_SIZE - 1]
        self._at.value = at

    @property
    def at(self) -> float:
        return self._at.value

    @property
    def doing(self) -> str:
        return self._doing.value.decode(errors="replace")
