"""The supervisor's stream table on a real checkpoint store and real files, without
processes: which uploader owns each stream and what it is told, the phase moves, and the
index of which stream's file is at which path.

The uploaders are the supervisor's own `Workers`, each with a real command pipe but no
process behind it: `sent` reads back what an uploader was told."""

from __future__ import annotations

import os

import pytest
from supervisors import recording, sent

from streamer.messages import Abandon, Assign, Grow, StreamParked
from streamer.supervisor.table import StreamPhase
from streamer.supervisor.workers import WorkerState
from streamer.watcher import Watcher


def grow_to(file, size: int):
    with open(file.path, "ab") as f:
        f.write(b"g" * (size - os.path.getsize(file.path)))
    return Watcher.stat(file.path)


def test_a_stream_found_while_every_uploader_stops_waits_for_the_next_start(supervisor):
    """No running uploader (all told to stop): the stream is tracked, owned by none, and
    nothing is sent; losing it then tells no one either."""
    record, file = recording(supervisor, "late.mp4")
    tracked = supervisor.table.track(record, file, 0.0, "stream_discovered")
    assert tracked.owner == -1 and tracked.stream_id in supervisor.table
    supervisor.table.abandon(tracked, "deleted before it finished")
    assert tracked.phase is StreamPhase.ABANDONING


def test_a_stream_goes_to_the_least_loaded_uploader_which_is_told_and_holds_it(supervisor, workers):
    table = supervisor.table
    workers[0].streams.add("held-already")
    record, file = recording(supervisor, "a.mp4")
    tracked = table.track(record, file, 5.0, "stream_discovered")
    assert tracked.owner == 1 and workers[1].streams == {"a.mp4"}
    assert sent(workers, 1) == [Assign(stream_id="a.mp4")] and sent(workers, 0) == []
    assert table.at(file.path) is tracked and table.at(file.path + ".bak") is None
    assert list(tracked.arrivals) == [(1000, 5.0)], "its bytes wait to be committed since 5.0"
    record, other = recording(supervisor, "b.mp4")
    assert table.track(record, other, 6.0, "stream_discovered").owner == 0, "a tie: lowest id"

    untracked, held = table.untrack("a.mp4")
    assert untracked is tracked and held
    assert "a.mp4" not in table and table.at(file.path) is None
    assert workers[1].streams == set(), "its owner holds it no more"


def test_its_owner_hears_of_growth_only_when_a_chunk_more_is_there(supervisor, workers):
    record, file = recording(supervisor, "a.mp4")  # 1000 bytes, 4096-byte chunks
    table = supervisor.table
    tracked = table.track(record, file, 0.0, "stream_discovered")
    sent(workers, 0)
    table.changed(tracked, grow_to(file, 4095), 1.0)
    assert sent(workers, 0) == [] and tracked.file.size == 4095 and tracked.changed_at == 1.0
    table.changed(tracked, grow_to(file, 4096), 2.0)
    assert sent(workers, 0) == [Grow(stream_id="a.mp4", size=4096)]
    table.changed(tracked, grow_to(file, 8191), 3.0)
    assert sent(workers, 0) == [], "the same number of whole chunks"
    table.changed(tracked, grow_to(file, 9000), 4.0)
    assert sent(workers, 0) == [Grow(stream_id="a.mp4", size=9000)]
    assert [size for size, _ in tracked.arrivals] == [1000, 4095, 4096, 8191, 9000]
    tracked.committed_to(4096)
    assert list(tracked.arrivals) == [(8191, 3.0), (9000, 4.0)], "the oldest byte waiting"


def test_the_path_index_follows_a_renamed_file_and_keeps_a_new_one_at_the_old_path(supervisor):
    table = supervisor.table
    record, file = recording(supervisor, "a.mp4")
    tracked = table.track(record, file, 0.0, "stream_discovered")
    renamed = os.path.join(os.path.dirname(file.path), "b.mp4")
    os.rename(file.path, renamed)
    record, newcomer = recording(supervisor, "c.mp4")
    os.rename(newcomer.path, file.path)  # a new recording at the old name
    other = table.track(record, Watcher.stat(file.path), 1.0, "stream_discovered")

    assert table.holding(Watcher.stat(renamed)) is tracked, "found by its file, by any name"
    assert table.move(tracked, Watcher.stat(renamed), 2.0) == file.path
    assert table.at(renamed) is tracked and tracked.changed_at == 2.0
    assert table.at(file.path) is other, "the new recording keeps its path"


def test_an_abandoned_stream_lets_go_of_its_path_and_its_file_and_never_streams_again(
    supervisor, workers
):
    table = supervisor.table
    record, file = recording(supervisor, "a.mp4")
    tracked = table.track(record, file, 0.0, "stream_discovered")
    sent(workers, 0)
    table.abandon(tracked, "deleted before it finished")
    assert tracked.phase is StreamPhase.ABANDONING
    assert sent(workers, 0) == [Abandon(stream_id="a.mp4", reason="deleted before it finished")]
    assert table.at(file.path) is None and "a.mp4" in table, "until its uploader reports it"
    assert table.holding(file) is None, "a file with its inode is another recording now"
    with pytest.raises(AssertionError):
        tracked.move_to(StreamPhase.STREAMING)
    with pytest.raises(AssertionError):
        tracked.move_to(StreamPhase.FINISHING)
    assert table.untrack("a.mp4") == (tracked, False)


def test_a_dead_uploader_s_streams_go_on_elsewhere_as_they_were(supervisor, workers):
    """Its streams go to a running uploader: one being finished streams again (the Finish
    died with the uploader), one being abandoned is told so again."""
    table = supervisor.table
    workers[1].state = WorkerState.STOPPING  # every stream goes to uploader 0
    streaming, finishing, abandoning = (
        table.track(*recording(supervisor, name), 0.0, "stream_discovered")
        for name in ("s.mp4", "f.mp4", "a.mp4")
    )
    workers[1].state = WorkerState.RUNNING
    finishing.move_to(StreamPhase.FINISHING)
    table.abandon(abandoning, "deleted before it finished")
    workers.workers.pop(0).commands.close()

    table.reassign_from(0, 9.0)
    assert [t.owner for t in (streaming, finishing, abandoning)] == [1, 1, 1]
    assert workers[1].streams == {"s.mp4", "f.mp4", "a.mp4"}
    assert finishing.phase is StreamPhase.STREAMING and finishing.changed_at == 9.0
    assert abandoning.phase is StreamPhase.ABANDONING
    assert sent(workers, 1) == [
        Assign(stream_id="s.mp4"),
        Assign(stream_id="f.mp4"),
        Assign(stream_id="a.mp4"),
        Abandon(stream_id="a.mp4", reason="deleted before it finished"),
    ]


def test_a_parked_stream_fails_since_its_first_failure_and_is_said_stuck_once(supervisor):
    table = supervisor.table
    tracked = table.track(*recording(supervisor, "a.mp4"), 0.0, "stream_discovered")
    stuck_after = supervisor.config.stream.stuck_after

    def parked(now: float, failing_for: float, delay: float):
        message = StreamParked(
            stream_id="a.mp4", reason="S3 away", delay=delay, failing_for=failing_for, heals=True
        )
        table.parked(tracked, message, now)

    parked(100.0, failing_for=5.0, delay=10.0)
    assert (tracked.parking.since, tracked.parking.due) == (95.0, 110.0)
    assert tracked.condition(109.0, stuck_after) == "parked"
    assert tracked.condition(110.0, stuck_after) is None, "due: being tried again"
    # Another uploader took it over meanwhile: it knows of its own failure only.
    parked(200.0, failing_for=1.0, delay=20.0)
    assert (tracked.parking.since, tracked.parking.due) == (95.0, 220.0)

    table.tell_stuck(95.0 + stuck_after - 1)
    assert not tracked.parking.told_stuck
    table.tell_stuck(95.0 + stuck_after)
    assert tracked.condition(95.0 + stuck_after, stuck_after) == "stuck"
    assert tracked.parking.told_stuck
    parked(95.0 + stuck_after + 1, failing_for=1.0, delay=20.0)
    assert tracked.parking.told_stuck, "said once, not again at the next failure"
    table.resumed(tracked)
    assert tracked.parking is None and tracked.condition(1e9, stuck_after) is None
