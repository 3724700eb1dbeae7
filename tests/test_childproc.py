"""What the supervisor and a forked uploader share: the heartbeat, in memory both see (a
beat in the child is read by the parent while the child still runs, what it was doing cut
to fit), and the exit codes that tell the supervisor how a process ended."""

from __future__ import annotations

import multiprocessing
import os

from streamer.childproc import (
    DOING_SIZE,
    EXIT_BOOT_ERROR,
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    Heartbeat,
)

FORK = multiprocessing.get_context("fork")


def beating(heartbeat: Heartbeat, beats: list[tuple[float, str]], beaten, go, code: int):
    """The child: beats, says so, waits for the parent to have looked, and exits."""
    for at, doing in beats:
        heartbeat.beat(at, doing)
    beaten.set()
    go.wait(10)
    os._exit(code)


def child(heartbeat: Heartbeat, beats: list[tuple[float, str]], code: int = EXIT_OK):
    beaten, go = FORK.Event(), FORK.Event()
    process = FORK.Process(target=beating, args=(heartbeat, beats, beaten, go, code))
    process.start()
    assert beaten.wait(10), "the child did not beat"
    return process, go


def test_a_new_heartbeat_says_it_is_starting_at_the_time_it_was_made():
    heartbeat = Heartbeat(FORK, 100.0)
    assert (heartbeat.at, heartbeat.doing) == (100.0, "starting")


def test_a_beat_in_the_child_is_read_by_the_parent_while_the_child_runs():
    heartbeat = Heartbeat(FORK, 100.0)
    process, go = child(heartbeat, [(105.0, "sending cam.mp4, chunk 3"), (107.25, "waiting")])
    try:
        assert process.is_alive()
        assert (heartbeat.at, heartbeat.doing) == (107.25, "waiting"), "the latest beat"
    finally:
        go.set()
        process.join(10)
    assert process.exitcode == EXIT_OK


def test_what_it_was_doing_is_cut_to_fit_and_always_reads_back():
    heartbeat = Heartbeat(FORK, 0.0)
    heartbeat.beat(1.0, "x" * 1000)
    assert heartbeat.doing == "x" * (DOING_SIZE - 1)
    heartbeat.beat(2.0, "é" * DOING_SIZE)  # cut inside a character
    assert heartbeat.doing.startswith("é" * ((DOING_SIZE - 2) // 2))
    heartbeat.beat(3.0, "reading \udcff.mp4")  # a file name not in UTF-8
    assert heartbeat.doing == "reading ?.mp4"
    heartbeat.beat(4.0, "idle")
    assert (heartbeat.at, heartbeat.doing) == (4.0, "idle"), "nothing left of a longer one"


def test_a_child_s_last_beat_outlives_it_and_its_exit_code_says_how_it_ended():
    heartbeat = Heartbeat(FORK, 100.0)
    process, go = child(heartbeat, [(130.0, "finishing cam.mp4")], EXIT_BOOT_ERROR)
    go.set()
    process.join(10)
    assert process.exitcode == EXIT_BOOT_ERROR
    assert (heartbeat.at, heartbeat.doing) == (130.0, "finishing cam.mp4")


def test_the_exit_codes_are_the_ones_the_docs_and_the_systemd_unit_name():
    """`run` exits 2 on a configuration error and 3 when it cannot start at all
    (RestartPreventExitStatus=2 3); 1 is a forced stop."""
    assert (EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_BOOT_ERROR) == (0, 1, 2, 3)
