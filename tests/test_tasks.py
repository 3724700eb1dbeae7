"""The one door for an uploader's background work, and its error boundary."""

import os
import select
import threading
import time
from concurrent.futures import Future

from streamer.uploader.tasks import Tasks


def door():
    failures = []
    tasks = Tasks(
        {"sender": 2, "copier": 1}, lambda stream, exc, now: failures.append((stream, exc, now))
    )
    return tasks, failures


def run_all(tasks: Tasks, now: float = 1.0) -> None:
    tasks.settle()
    tasks.run_handlers(now)


def test_results_come_back_on_the_main_thread_with_the_loop_s_time():
    tasks, failures = door()
    seen = []
    tasks.submit(
        "sender",
        "s",
        lambda x: x * 2,
        21,
        then=lambda f, now: seen.append((f.result(), now, threading.current_thread())),
    )
    assert select.select([tasks.wake_r], [], [], 5)[0], "the loop is woken"
    run_all(tasks, now=7.0)
    assert seen == [(42, 7.0, threading.main_thread())] and failures == []
    tasks.shutdown()


def test_a_handler_that_raises_parks_its_stream_and_the_others_are_handled():
    tasks, failures = door()
    seen = []

    def refuse(future: Future, now: float) -> None:
        raise PermissionError("metadata.json refused")

    tasks.submit("sender", "refused", lambda: None, then=refuse)
    tasks.submit("copier", "other", lambda: "copied", then=lambda f, now: seen.append(f.result()))
    run_all(tasks, now=3.0)
    assert seen == ["copied"]
    [(stream, exc, now)] = failures
    assert (stream, type(exc), now) == ("refused", PermissionError, 3.0)
    assert not tasks.under_way()
    tasks.shutdown()


def test_work_not_started_at_stop_is_dropped_unless_kept_and_what_runs_is_waited_for():
    tasks, failures = door()
    started, release = threading.Event(), threading.Event()
    handled = []

    def busy():
        started.set()
        release.wait(5)
        return "landed"

    tasks.submit("copier", "a", busy, then=lambda f, now: handled.append(f.result()))
    queued = tasks.submit("copier", "b", lambda: "never", then=lambda f, now: handled.append(f))
    tasks.submit(
        "copier", "c", lambda: "kept", then=lambda f, now: handled.append(f.result()),
        finish_on_stop=True,
    )  # fmt: skip
    assert started.wait(5)

    def release_once_dropped():
        while not queued.cancelled():
            time.sleep(0.01)
        release.set()

    threading.Thread(target=release_once_dropped, daemon=True).start()
    run_all(tasks)
    assert handled == ["landed", "kept"] and failures == []
    tasks.shutdown()


def test_wakeups_are_drained():
    tasks, _ = door()
    for _ in range(3):
        tasks.submit("sender", "s", lambda: None, then=lambda f, now: None)
    run_all(tasks)
    tasks.drain_wakeups()
    assert not select.select([tasks.wake_r], [], [], 0)[0]
    os.close(tasks.wake_r)
    tasks.shutdown()
