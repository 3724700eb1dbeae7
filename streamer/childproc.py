"""What the supervisor and its uploader processes agree on across a fork: the exit codes
that tell how a process ended, and the signals held back while a child is forked."""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_FAILURE = 1  # a forced stop, or uploaders that kept dying
EXIT_CONFIG = 2
EXIT_BOOT_ERROR = 3  # cannot start at all: restarting would only fail again

# Blocked in the supervisor around a fork, so that none reaches its handlers in the child
# before the child has its own; the child unblocks them.
FORK_BLOCKED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
