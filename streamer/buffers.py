"""Chunk buffers, used again chunk after chunk by an uploader's threads.

A fresh 10 MiB buffer per chunk is mapped anew by the kernel: a page fault and a zeroed
page for every 4 KiB, about a third of a CPU-second per GiB here, ten times the read
itself. A buffer from the pool costs nothing but the read. The pool grows to what is in
use at once (the chunks on the wire, and those waiting to be hashed in order), and lets
go of every buffer not in use when its uploader has nothing on the wire, so an idle
uploader holds no chunk memory.
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
