"""The record of a `streamer run --once` (streamer/supervisor/once.py), driven as the
supervisor drives it, without a server or a process: the streams found at start and how
each ended, the missed paths taken up later, the lost streams, what retention and pruning
did or left, the first stop's note of the deletions still due, whether the run is done,
finished or succeeded, and its summary and one-line description.

tests/integration/test_once.py has the whole command on a server."""

from __future__ import annotations

from collections import Counter
from functools import partial

import pytest

from streamer.messages import Pruned, Retired
from streamer.records import StreamState
from streamer.supervisor.once import OneShotRun

ENDINGS = [state.value for state in StreamState if state.finished]


def there(path: str) -> bool:
    return True


def gone(path: str) -> bool:
    return False


def kept(because: str, **changes) -> Retired:
    return Retired(stream_id="s", deleted=False, kept_because=because, **changes)


DELETED = Retired(stream_id="s", deleted=True)


def test_a_run_holds_the_streams_found_at_start_and_copies_of_what_discovery_passed_over():
    found = {"a": None, "b": None}
    missed, lost = {"/in/m.mp4"}, {"unreadable"}
    # The supervisor hands over a generator and discovery's own sets.
    run = OneShotRun.of((stream_id for stream_id in found), missed, lost)
    missed.add("/in/later.mp4")
    lost.add("later")
    assert (run.pending, run.missed, run.lost) == (set(found), {"/in/m.mp4"}, {"unreadable"})
    assert (run.ended, run.files_deleted, run.chunks_pruned, run.left) == ({}, set(), set(), {})
    assert run.deletions_done is None, "noted only as the run stops"
    alone = OneShotRun.of(["a"])
    assert (alone.missed, alone.lost) == (set(), set())


def test_each_stream_ends_with_the_status_its_uploader_reported():
    ids = [f"s{n}" for n in range(len(ENDINGS) + 1)]
    statuses = [*reversed(ENDINGS), ENDINGS[0]]  # one status twice, none in sorted order
    run = OneShotRun.of(ids)
    for stream_id, status in zip(ids, statuses, strict=True):
        run.concluded(stream_id, status)
    assert run.ended == dict(zip(ids, statuses, strict=True)) and run.pending == set()
    by_status = run.summary()["by_status"]
    assert by_status == Counter(statuses) and list(by_status) == sorted(set(statuses))


def test_only_the_first_end_of_a_pending_stream_counts_and_a_lost_one_never_ends():
    run = OneShotRun.of(["a"], lost={"x"})
    run.concluded("a", "partial")
    run.concluded("a", "complete")
    run.concluded("x", "complete")
    assert run.ended == {"a": "partial"} and run.lost == {"x"}
    assert run.summary()["unfinished"] == ["x"]


def test_a_stream_still_tracked_after_it_ended_does_not_become_pending_again():
    run = OneShotRun.of(["a", "b"])
    run.concluded("a", "complete")
    run.follow({"/in/a.mp4": "a", "/in/b.mp4": "b"}, set(), there)
    assert run.pending == {"b"} and run.ended == {"a": "complete"}
    run.concluded("b", "complete")
    run.follow({"/in/a.mp4": "a", "/in/b.mp4": "b"}, set(), there)
    assert run.done and run.summary()["streams"] == 2


def test_following_shrinks_the_very_set_of_missed_paths_that_discovery_retries():
    run = OneShotRun.of([], missed={"/in/taken.mp4", "/in/gone.mp4", "/in/waiting.mp4"})
    failing = set(run.missed)  # discovery's look at each failed, and has not worked since
    retried = run.missed  # the supervisor sets discovery.only to this set
    asked = []

    def exists(path: str) -> bool:
        asked.append(path)
        return path != "/in/gone.mp4"

    run.follow({"/in/taken.mp4": "t"}, failing, exists)
    assert retried is run.missed and retried == {"/in/waiting.mp4"}
    assert "/in/waiting.mp4" in asked
    assert run.pending == {"t"} and not run.done
    run.follow({"/in/taken.mp4": "t"}, failing, exists)
    assert retried == {"/in/waiting.mp4"}, "still there and not taken up: it waits"


def test_a_missed_path_alone_keeps_the_run_from_being_done():
    run = OneShotRun.of([], missed={"/in/m.mp4"})
    assert not run.done and not run.all_finished
    run.follow({}, {"/in/m.mp4"}, gone)
    assert run.done and run.all_finished


def test_a_file_retention_deleted_counts_once_and_clears_what_was_left_of_it():
    run = OneShotRun.of([])
    run.retired("/in/a.mp4", kept("not proven in S3"), there)
    run.retired("/in/a.mp4", DELETED, there)
    run.retired("/in/a.mp4", DELETED, gone)
    run.retired("/in/b.mp4", DELETED, gone)
    assert run.files_deleted == {"/in/a.mp4", "/in/b.mp4"} and run.left == {}
    assert run.summary()["files_deleted"] == 2


@pytest.mark.parametrize("final", [True, False])
def test_a_file_kept_while_still_there_is_left_with_retentions_reason(final):
    because = "its object in S3 is smaller than the file"
    run = OneShotRun.of([])
    run.retired("/in/a.mp4", kept(because, final=final), there)
    assert run.left == {"/in/a.mp4": f"kept: {because}"} and run.files_deleted == set()


@pytest.mark.parametrize(
    ("answer", "exists"),
    [
        (kept("too young without a lease", retry_in=30.0), there),
        (kept("the file is gone", final=True), gone),
    ],
    ids=["kept only for now", "gone meanwhile"],
)
def test_a_file_kept_only_for_now_or_gone_meanwhile_is_no_longer_left(answer, exists):
    run = OneShotRun.of([])
    run.retired("/in/a.mp4", kept("not proven in S3"), there)
    run.retired("/in/b.mp4", kept("not proven in S3"), there)
    run.retired("/in/a.mp4", answer, exists)
    assert run.left == {"/in/b.mp4": "kept: not proven in S3"}
    assert run.files_deleted == set()


def test_whether_a_file_is_still_there_is_asked_of_its_own_path():
    run = OneShotRun.of([])
    run.retired("/in/a.mp4", kept("why"), lambda path: path == "/in/a.mp4")
    run.retired("/in/b.mp4", kept("why"), lambda path: path == "/in/a.mp4")
    assert set(run.left) == {"/in/a.mp4"}


def test_the_chunks_pruning_deleted_count_once_a_stream_and_clear_what_was_left_of_them():
    run = OneShotRun.of([])
    run.pruned(Pruned(stream_id="a", deleted=False, final=True))
    run.pruned(Pruned(stream_id="b", deleted=False, final=True))
    assert run.left == {f"chunks of {s}": "kept, chunks_kept says why" for s in ("a", "b")}
    run.pruned(Pruned(stream_id="a", deleted=True))
    run.pruned(Pruned(stream_id="a", deleted=True))
    assert run.chunks_pruned == {"a"} and run.left == {"chunks of b": "kept, chunks_kept says why"}
    assert run.summary()["chunks_pruned"] == 1


@pytest.mark.parametrize(
    ("files", "streams"),
    [([], []), (["/in/x.mp4"], []), ([], ["s"]), (["/in/x.mp4", "/in/y.mp4"], ["s", "t"])],
)
def test_the_first_stop_notes_whether_any_deletion_was_still_due_and_which(files, streams):
    run = OneShotRun.of([])
    run.stopping(files, streams)
    assert run.deletions_done is (not files and not streams)
    expected = {path: "not deleted yet" for path in files} | {
        f"chunks of {s}": "not pruned yet" for s in streams
    }
    assert run.left == expected


def test_a_later_stop_changes_nothing_of_the_first_ones_note():
    run = OneShotRun.of([])
    run.stopping([], [])
    run.stopping(["/in/x.mp4"], ["s"])
    assert run.deletions_done is True and run.left == {}


def test_a_stop_keeps_the_reason_a_file_or_chunks_were_kept():
    run = OneShotRun.of([])
    run.retired("/in/a.mp4", kept("not proven in S3"), there)
    run.pruned(Pruned(stream_id="s", deleted=False, final=True))
    run.stopping(["/in/a.mp4"], ["s"])
    assert run.left == {
        "/in/a.mp4": "kept: not proven in S3",
        "chunks of s": "kept, chunks_kept says why",
    }


def test_a_deletion_done_while_the_uploaders_wind_down_does_not_undo_the_stops_note():
    run = OneShotRun.of([])
    run.stopping(["/in/a.mp4"], ["s"])
    run.retired("/in/a.mp4", DELETED, gone)
    run.pruned(Pruned(stream_id="s", deleted=True))
    assert run.left == {} and run.deletions_done is False
    assert not run.succeeded


def ended(missed=(), lost=(), pending=()) -> OneShotRun:
    """A run whose stream "a" ended complete, with what else it was given at start."""
    run = OneShotRun.of(["a", *pending], missed, lost)
    run.concluded("a", "complete")
    return run


def a_file_kept(run: OneShotRun) -> None:
    run.retired("/in/a.mp4", kept("not proven in S3", final=True), there)


def test_a_run_stopped_with_every_stream_ended_and_no_deletion_due_succeeded():
    run = ended()
    run.stopping([], [])
    assert run.succeeded


@pytest.mark.parametrize(
    ("start", "act", "due"),
    [
        (ended, lambda run: None, None),
        (partial(ended, pending=["b"]), lambda run: None, []),
        (partial(ended, missed=["/in/m.mp4"]), lambda run: None, []),
        (partial(ended, lost=["x"]), lambda run: None, []),
        (ended, lambda run: None, ["/in/a.mp4"]),
        (ended, a_file_kept, []),
        (ended, lambda run: run.pruned(Pruned(stream_id="a", deleted=False, final=True)), []),
    ],
    ids=[
        "not stopped yet",
        "a stream pending",
        "a path missed",
        "a stream lost",
        "a deletion due at the stop",
        "a file kept",
        "chunks kept",
    ],
)
def test_a_run_not_stopped_or_with_anything_unfinished_or_left_did_not_succeed(start, act, due):
    run = start()
    act(run)
    if due is not None:
        run.stopping(due, [])
    assert not run.succeeded


@pytest.mark.parametrize(
    ("start", "done", "all_finished"),
    [
        (ended, True, True),
        (partial(ended, pending=["b"]), False, False),
        (partial(ended, missed=["/in/m.mp4"]), False, False),
        (partial(ended, lost=["x"]), True, False),
    ],
    ids=["nothing else", "a stream pending", "a path missed", "a stream lost"],
)
def test_done_is_nothing_left_to_finish_and_all_finished_is_done_with_nothing_lost(
    start, done, all_finished
):
    run = start()
    assert (run.done, run.all_finished) == (done, all_finished)


def test_the_summary_counts_the_streams_and_deletions_and_names_what_is_unfinished_or_left():
    pending, lost, missed = ["p2", "p1"], ["l1"], ["/in/m2.mp4", "/in/m1.mp4"]
    endings = {"e1": "partial", "e2": "complete", "e3": "complete"}
    run = OneShotRun.of([*pending, *endings], missed, lost)
    for stream_id, status in endings.items():
        run.concluded(stream_id, status)
    deleted = ["/in/d1.mp4", "/in/d2.mp4", "/in/d3.mp4"]
    for path in deleted:
        run.retired(path, DELETED, gone)
    run.pruned(Pruned(stream_id="e1", deleted=True))
    run.pruned(Pruned(stream_id="e2", deleted=False, final=True))
    run.retired("/in/k.mp4", kept("not proven in S3"), there)
    summary = run.summary()
    assert summary == {
        "streams": len(pending) + len(lost) + len(endings) + len(missed),
        "finished": len(endings),
        "by_status": {"complete": 2, "partial": 1},
        # Streams first, then the paths not taken up, which would sort before them.
        "unfinished": sorted(pending + lost) + sorted(missed),
        "files_deleted": len(deleted),
        "chunks_pruned": 1,
        "left": {
            "/in/k.mp4": "kept: not proven in S3",
            "chunks of e2": "kept, chunks_kept says why",
        },
    }
    assert list(summary["left"]) == sorted(summary["left"])


def test_describe_says_in_one_line_what_finished_what_did_not_and_what_was_deleted_or_left():
    run = OneShotRun.of(["a", "b", "c"], missed={"/in/m.mp4"})
    run.concluded("b", "partial")
    run.concluded("a", "complete")
    run.retired("/in/a.mp4", DELETED, gone)
    run.pruned(Pruned(stream_id="a", deleted=True))
    run.pruned(Pruned(stream_id="b", deleted=False, final=True))
    run.stopping(["/in/b.mp4"], [])
    assert run.describe() == (
        "2 of 4 streams finished (1 complete, 1 partial); not finished: c, /in/m.mp4"
        "; 1 files deleted; chunks of 1 streams pruned"
        "; left: /in/b.mp4 (not deleted yet), chunks of b (kept, chunks_kept says why)"
    )


def test_describe_leaves_out_what_did_not_happen():
    run = OneShotRun.of(["a", "b"])
    assert run.describe() == "0 of 2 streams finished; not finished: a, b"
    run.concluded("a", "cancelled")
    run.concluded("b", "cancelled")
    run.pruned(Pruned(stream_id="a", deleted=True))
    assert run.describe() == "2 of 2 streams finished (2 cancelled); chunks of 1 streams pruned"


def test_a_run_is_done_when_each_stream_found_at_start_has_ended():
    run = OneShotRun.of(["a", "b"])
    run.concluded("a", "complete")
    run.concluded("z", "complete")  # not of the run
    assert not run.done and run.summary()["unfinished"] == ["b"]
    run.concluded("b", "partial")
    assert run.done and run.all_finished
    assert run.describe() == "2 of 2 streams finished (1 complete, 1 partial)"
    assert OneShotRun.of([]).done and OneShotRun.of([]).describe() == "0 of 0 streams finished"


def test_a_run_follows_missed_files_taken_up_and_recordings_written_over_its_own():
    run = OneShotRun.of(["a"], missed={"/in/m.mp4", "/in/gone.mp4"}, lost={"x"})
    run.follow(
        {"/in/a.mp4": "a"},
        {"/in/m.mp4", "/in/gone.mp4"},
        exists=lambda path: path != "/in/gone.mp4",
    )
    assert run.missed == {"/in/m.mp4"} and not run.done
    run.follow({"/in/a.mp4": "a", "/in/m.mp4": "m"}, {"/in/m.mp4"}, exists=lambda path: True)
    assert run.pending == {"a", "m"} and not run.missed
    run.concluded("a", "partial")  # written over: its successor joins
    run.follow({"/in/m.mp4": "m", "/in/a.mp4": "a2"}, set(), exists=lambda path: True)
    run.concluded("m", "complete")
    run.concluded("a2", "complete")
    assert run.done and not run.all_finished, "an unreadable record is not finished"
    assert run.summary()["unfinished"] == ["x"]
    assert run.describe() == "3 of 4 streams finished (2 complete, 1 partial); not finished: x"


def test_a_run_counts_its_deletions_and_names_what_is_left():
    run = OneShotRun.of(["a"])
    run.concluded("a", "complete")
    run.pruned(Pruned(stream_id="a", deleted=False, final=True))
    kept = Retired(stream_id="a", deleted=False, kept_because="not proven in S3")
    run.retired("/in/a.mp4", kept, exists=lambda path: True)
    young = Retired(stream_id="y", deleted=False, kept_because="no lease", retry_in=300.0)
    run.retired("/in/young.mp4", young, exists=lambda path: True)
    gone = Retired(stream_id="g", deleted=False, final=True, kept_because="the file is gone")
    run.retired("/in/gone.mp4", gone, exists=lambda path: False)
    assert run.summary()["left"] == {
        "/in/a.mp4": "kept: not proven in S3",
        "chunks of a": "kept, chunks_kept says why",
    }
    # Asked again later in a long run, and done.
    run.pruned(Pruned(stream_id="a", deleted=True))
    run.retired("/in/a.mp4", Retired(stream_id="a", deleted=True), exists=lambda path: False)
    run.stopping([], [])
    assert run.succeeded and run.summary()["left"] == {}
    assert run.describe() == (
        "1 of 1 streams finished (1 complete); 1 files deleted; chunks of 1 streams pruned"
    )

    stopped = OneShotRun.of([])
    stopped.stopping(["/in/x.mp4"], ["s"])
    stopped.stopping([], [])  # as its uploaders wind down: the first stop counts
    assert not stopped.succeeded and stopped.describe() == (
        "0 of 0 streams finished; left: /in/x.mp4 (not deleted yet), chunks of s (not pruned yet)"
    )


def test_a_missed_path_looked_at_since_and_not_taken_up_has_nothing_to_finish():
    """A recording finished by an earlier run, passed over at the start (the store took no
    writes, say): looked at again, it is settled, not tracked."""
    run = OneShotRun.of(["a"], missed={"/in/old.mp4", "/in/m.mp4"})
    run.follow({"/in/a.mp4": "a"}, {"/in/m.mp4"}, there)
    assert run.missed == {"/in/m.mp4"}
    run.concluded("a", "complete")
    run.follow({"/in/a.mp4": "a"}, set(), there)
    assert run.done and run.all_finished


def test_chunks_kept_for_now_are_not_pruned_yet_and_kept_for_good_say_where_why_is():
    run = OneShotRun.of([])
    run.pruned(Pruned(stream_id="a", deleted=False))
    assert run.left == {"chunks of a": "not pruned yet"}
    run.pruned(Pruned(stream_id="a", deleted=False, final=True))
    assert run.left == {"chunks of a": "kept, chunks_kept says why"}


def test_a_run_stopped_with_deletions_due_says_so_though_they_were_done_since():
    run = OneShotRun.of(["a"])
    run.concluded("a", "complete")
    run.stopping(["/in/a.mp4"], [])  # timed out, say
    run.retired("/in/a.mp4", DELETED, gone)  # as its uploaders wound down
    assert not run.succeeded and run.left == {}
    assert run.describe() == (
        "1 of 1 streams finished (1 complete); 1 files deleted; stopped with deletions still due"
    )


def test_a_path_passed_over_counts_among_the_streams_it_did_not_finish():
    run = OneShotRun.of([], missed={"/in/m.mp4"})
    assert run.describe() == "0 of 1 streams finished; not finished: /in/m.mp4"
