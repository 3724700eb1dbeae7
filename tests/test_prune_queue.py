"""The finished streams whose chunk objects are to go (stream.keep_chunks off;
streamer/supervisor/prune_queue.py), on a real checkpoint store, without processes: which
are due, one asked for at a time, again a minute after a failure, never the stream retention
is deleting the file of."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from supervisors import configure, recording, sent

from streamer.messages import Prune, Pruned
from streamer.records import Assembled, StreamState

ASSEMBLED = Assembled(key="cam/a.mp4", size=1000, etag='"e"', method="upload")


def stream(supervisor, name: str, **changes) -> str:
    """A stream finished complete and assembled, its sha256 known: its chunks may go."""
    record, _ = recording(supervisor, name)
    finished = {"state": StreamState.COMPLETE, "assembled": ASSEMBLED, "sha256": "ab" * 32}
    supervisor.ctx.store.update_stream(
        record.stream_id, lambda r: msgspec.structs.replace(r, **finished | changes)
    )
    return record.stream_id


@pytest.fixture
def pruning(supervisor):
    configure(supervisor, "stream", keep_chunks=False)
    return supervisor.pruning


def prune(stream_id: str) -> Prune:
    return Prune(stream_id=stream_id)


def test_at_start_the_finished_streams_whose_chunks_are_still_there_are_due(supervisor, pruning):
    stream(supervisor, "due.mp4")
    stream(supervisor, "active.mp4", state=StreamState.ACTIVE)
    stream(supervisor, "unassembled.mp4", assembled=None)
    stream(supervisor, "no-digest.mp4", sha256=None)
    stream(supervisor, "pruned.mp4", chunks_deleted_at=datetime.now(UTC))
    stream(supervisor, "kept.mp4", chunks_kept_because="copied by an older version")
    pruning.find_unpruned()
    assert pruning.waiting == {"due.mp4": 0.0}
    assert pruning.due(0.0) == ["due.mp4"]


def test_a_stream_that_just_finished_is_due_at_once_if_its_chunks_may_go(supervisor, pruning):
    pruning.finished(stream(supervisor, "a.mp4"), 5.0)
    pruning.finished(stream(supervisor, "no-digest.mp4", sha256=None), 5.0)
    assert pruning.waiting == {"a.mp4": 5.0}
    assert pruning.due(4.9) == [] and pruning.due(5.0) == ["a.mp4"]
    configure(supervisor, "stream", keep_chunks=True)
    pruning.finished(stream(supervisor, "b.mp4"), 6.0)
    assert "b.mp4" not in pruning.waiting, "chunks kept: nothing to prune"


def test_one_stream_is_pruned_at_a_time_by_the_least_loaded_uploader(supervisor, workers, pruning):
    workers[0].streams.add("streaming")
    for name in ("a.mp4", "b.mp4"):
        pruning.finished(stream(supervisor, name), 0.0)
    pruning.apply(0.0)
    assert sent(workers, 1) == [prune("a.mp4")] and sent(workers, 0) == []
    pruning.apply(1.0)
    assert sent(workers, 1) == [], "one at a time: the answer first"
    assert pruning.due(1.0) == ["a.mp4", "b.mp4"], "the one asked for among them"

    pruning.pruned(Pruned(stream_id="a.mp4", deleted=True), 2.0)
    assert pruning.due(2.0) == ["b.mp4"]
    pruning.apply(2.0)
    assert sent(workers, 1) == [prune("b.mp4")]


def test_a_stream_whose_pruning_failed_is_asked_for_again_a_minute_later(
    supervisor, workers, pruning
):
    pruning.finished(stream(supervisor, "a.mp4"), 0.0)
    pruning.apply(0.0)
    assert sent(workers, 0) == [prune("a.mp4")]
    pruning.pruned(Pruned(stream_id="a.mp4", deleted=False), 10.0)
    assert pruning.due(69.9) == []
    pruning.apply(69.9)
    assert sent(workers, 0) == []
    assert pruning.due(70.0) == ["a.mp4"]
    pruning.apply(70.0)
    assert sent(workers, 0) == [prune("a.mp4")]

    pruning.pruned(Pruned(stream_id="a.mp4", deleted=False, final=True), 100.0)
    assert pruning.waiting == {}, "asking again cannot change that"
    pruning.pruned(Pruned(stream_id="a.mp4", deleted=False), 101.0)  # a late answer
    assert pruning.waiting == {}, "not put back"
    pruning.apply(1000.0)
    assert sent(workers, 0) == []


def test_not_the_stream_retention_is_deleting_the_file_of(supervisor, workers, pruning):
    for name in ("a.mp4", "b.mp4"):
        pruning.finished(stream(supervisor, name), 0.0)
    pruning.apply(0.0, busy="a.mp4")
    assert sent(workers, 0) == [prune("b.mp4")]
    pruning.pruned(Pruned(stream_id="b.mp4", deleted=True), 1.0)
    pruning.apply(1.0, busy="a.mp4")
    assert sent(workers, 0) + sent(workers, 1) == [], "it waits while retention is at it"
    pruning.apply(2.0)
    assert sent(workers, 0) == [prune("a.mp4")]


def test_a_pruning_whose_uploader_died_is_asked_of_another(supervisor, workers, pruning):
    pruning.finished(stream(supervisor, "a.mp4"), 0.0)
    pruning.apply(0.0)
    assert sent(workers, 0) == [prune("a.mp4")]
    pruning.uploader_died(1)
    pruning.apply(1.0)
    assert sent(workers, 0) + sent(workers, 1) == [], "another uploader's death: still awaited"
    pruning.uploader_died(0)
    workers.workers.pop(0).commands.close()
    pruning.apply(2.0)
    assert sent(workers, 1) == [prune("a.mp4")]
