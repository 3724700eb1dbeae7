"""Decisions, as pure functions of state and time: what to upload next, is a stream done,
which uploader owns it, how long to wait before trying again. Tested without processes."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class UploadChunk:
    index: int
    offset: int
    size: int


@dataclass(frozen=True)
class Finalise:
    pass


@dataclass(frozen=True)
class Wait:
    pass


Step = UploadChunk | Finalise | Wait


def next_step(
    chunk_count: int, committed_bytes: int, chunk_size: int, size_on_disk: int, finishing: bool
) -> Step:
    """Full chunks go as soon as their bytes exist; the short tail only once the stream is done."""
    available = size_on_disk - committed_bytes
    if available >= chunk_size:
        return UploadChunk(chunk_count, committed_bytes, chunk_size)
    if not finishing:
        return Wait()
    if available > 0:
        return UploadChunk(chunk_count, committed_bytes, available)
    return Finalise()


def is_idle(changed_at: float, now: float, idle_timeout: float) -> bool:
    return now - changed_at >= idle_timeout


def choose_uploader(loads: Mapping[int, int]) -> int:
    """The uploader with the fewest streams (lowest id on a tie)."""
    return min(loads, key=lambda worker_id: (loads[worker_id], worker_id))


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt))."""
    return rand() * min(cap, base * 2 ** min(attempt, 32))
