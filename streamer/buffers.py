"""Read buffers, used again piece after piece by an uploader's threads.

A chunk is read in pieces of `fileio.PIECE` (1 MiB) into a buffer of the pool, on each
pass over it: its digest, then its PUT. A fresh buffer per read would be mapped anew by
the kernel, a page fault and a zeroed page for every 4 KiB (about a third of a CPU-second
per GiB here, ten times the read itself); a buffer from the pool costs nothing but the
read. The pool grows to what is in use at once (a piece for each thread reading), and
lets go of every buffer not in use when its uploader has nothing on the wire, so an idle
uploader holds none.
"""

from __future__ import annotations

import threading


class BufferPool:
    def __init__(self):
        self._lock = threading.Lock()
        self._free: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        """A buffer of at least `size` bytes, its old content still in it, the caller's
        alone until it gives it back."""
        with self._lock:
            for i, buffer in enumerate(self._free):
                if len(buffer) >= size:
                    return self._free.pop(i)
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        """Back to the pool: nothing may read a view of it after this."""
        with self._lock:
            self._free.append(buffer)

    def release(self) -> None:
        """Let go of the buffers not in use."""
        with self._lock:
            self._free.clear()
