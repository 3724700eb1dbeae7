"""The one door for an uploader's background work.

Chunks, surveys, part copies, completions and deletions all go out the same way: a
function submitted for a stream to one of the lanes (thread pools), with the handler that
takes its result. They come back the same way too: the thread that finished it queues the
handler and wakes the main loop, which runs it. Every handler runs inside one error
boundary: whatever it raises is handed to `boundary` (which parks the stream with its
backoff) and never escapes to end the process.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_all

# A handler takes the finished future and the loop's time.
Handler = Callable[[Future, float], None]
Boundary = Callable[[str, Exception, float], None]


class Tasks:
    def __init__(self, lanes: dict[str, int], boundary: Boundary):
        self._lanes = {
            name: ThreadPoolExecutor(threads, thread_name_prefix=name)
            for name, threads in lanes.items()
        }
        self._boundary = boundary
        # Submitted and not handled yet: the stream and the handler of each.
        self._pending: dict[Future, tuple[str, Handler]] = {}
        self._kept: set[Future] = set()  # not dropped on stop
        self._returned: collections.deque[Future] = collections.deque()
        self.wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def submit(
        self,
        lane: str,
        stream_id: str,
        fn: Callable,
        *args,
        then: Handler,
        finish_on_stop: bool = False,
    ) -> Future:
        """Run `fn(*args)` in a thread of `lane`; `then(future, now)` takes its outcome on
        the main thread. Work not started when the process stops is dropped, unless
        `finish_on_stop`."""
        future = self._lanes[lane].submit(fn, *args)
        self._pending[future] = (stream_id, then)
        if finish_on_stop:
            self._kept.add(future)
        future.add_done_callback(self._came_back)
        return future

    def lane(self, name: str) -> Executor:
        """A lane's threads, for work a task fans out and waits for itself."""
        return self._lanes[name]

    def _came_back(self, future: Future) -> None:
        """In the thread that finished it (or on the main thread, if it had finished)."""
        self._returned.append(future)
        with contextlib.suppress(BlockingIOError):  # full: the loop wakes anyway
            os.write(self._wake_w, b"\0")

    def drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_r, 4096)

    def run_handlers(self, now: float) -> None:
        while self._returned:
            future = self._returned.popleft()
            entry = self._pending.pop(future, None)
            self._kept.discard(future)
            if entry is None or future.cancelled():
                continue  # handled already, or dropped on stop
            stream_id, then = entry
            try:
                then(future, now)
            except Exception as exc:
                self._boundary(stream_id, exc, now)

    def under_way(self) -> bool:
        return bool(self._pending)

    def settle(self) -> None:
        """On stop: work not started is dropped, and what is under way is waited for; its
        handlers run at the next run_handlers."""
        for future in self._pending.keys() - self._kept:
            future.cancel()
        wait_for_all(list(self._pending))
        # A future is done before its callback runs: queue them all (each is handled once).
        self._returned.extend(self._pending)

    def shutdown(self) -> None:
        for pool in self._lanes.values():
            pool.shutdown(wait=False)
