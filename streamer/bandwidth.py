"""The upload bandwidth cap (s3.max_bytes_per_second): one token bucket shared by every
uploader process, so an idle uploader's share goes to the busy ones.

The bucket lives in a shared memory page made by the supervisor before it forks the
uploaders. A taker holds an fcntl lock while it updates the bucket: the kernel drops that
lock when its holder dies, so a killed uploader never leaves the others waiting.
"""

from __future__ import annotations

import fcntl
import mmap
import struct
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator

from streamer import metrics

# Bodies go out in pieces, each paid for before it is sent: a tenth of a second's worth
# (within these bounds), so that streams interleave, the rate is smooth within a second,
# and on a thin link no request waits long between two pieces.
MIN_PIECE = 4 * 1024
MAX_PIECE = 64 * 1024
BURST_SECONDS = 0.1
_STATE = struct.Struct("dd")  # tokens, and the monotonic time they were counted at


class TokenBucket:
    def __init__(self, rate: int, clock=time.monotonic):
        self.rate = rate
        self.piece = int(min(MAX_PIECE, max(MIN_PIECE, rate * BURST_SECONDS)))
        self.burst = max(self.piece, rate * BURST_SECONDS)
        self.clock = clock
        self._state = mmap.mmap(-1, _STATE.size)  # MAP_SHARED: one bucket across forks
        self._lock_file = tempfile.TemporaryFile()  # noqa: SIM115 (open for the daemon's life)
        self._threads = threading.Lock()  # fcntl locks do not exclude threads of one process
        _STATE.pack_into(self._state, 0, self.burst, clock())

    def take(self, size: int) -> float:
        """Pay for `size` bytes; return how long to wait before sending them. Takers go
        into debt in turn, so each waits for the bytes granted before its own."""
        with self._threads:
            fcntl.lockf(self._lock_file, fcntl.LOCK_EX)
            try:
                tokens, counted_at = _STATE.unpack_from(self._state)
                now = self.clock()
                tokens = min(self.burst, tokens + (now - counted_at) * self.rate) - size
                _STATE.pack_into(self._state, 0, tokens, now)
            finally:
                fcntl.lockf(self._lock_file, fcntl.LOCK_UN)
        return max(0.0, -tokens / self.rate)

    def pace(self, pieces: Iterable[memoryview]) -> Iterator[memoryview]:
        """The bytes of `pieces` in smaller ones, each released when the bucket allows."""
        for view in pieces:
            for start in range(0, len(view), self.piece):
                piece = view[start : start + self.piece]
                delay = self.take(len(piece))
                if delay:
                    metrics.BANDWIDTH_WAIT_SECONDS.inc(delay)
                    time.sleep(delay)
                yield piece
