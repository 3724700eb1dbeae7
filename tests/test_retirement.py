"""Finished files and retention's choice, on a real checkpoint store and real files,
without processes: which settled files retention may delete, the oldest first and one at a
time (asked of an uploader through `OneAtATime`), and the disk-pressure flag."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
from prometheus_client import REGISTRY
from supervisors import configure, recording, sent

from streamer.messages import Retire, Retired
from streamer.records import StreamState
from streamer.supervisor.retirement import identity
from streamer.watcher import Watcher


def finished(supervisor, name: str, age: float, **changes):
    """A stream that finished complete with its file `name`, last written `age` seconds
    ago (as its record has it), and its file settled: its file as it was then."""
    record, file = recording(supervisor, name)
    mtime_ns = time.time_ns() - int(age * 1e9)
    record = supervisor.ctx.store.update_stream(
        record.stream_id,
        lambda r: msgspec.structs.replace(
            r,
            **{"state": StreamState.COMPLETE, "total_size": file.size, "mtime_ns": mtime_ns}
            | changes,
        ),
    )
    supervisor.retirement.settle(file.path, identity(file), record)
    return file


def retire(name: str, reason: str) -> Retire:
    return Retire(stream_id=name, reason=reason)


def disk_pressure_gauge() -> float | None:
    return REGISTRY.get_sample_value("streamer_disk_pressure")


def test_only_a_whole_recording_not_yet_deleted_is_retention_s_to_delete(supervisor):
    configure(supervisor, "retention", delete_after_upload=True)
    retirement = supervisor.retirement
    complete = finished(supervisor, "complete.mp4", 3600)
    partial = finished(supervisor, "partial.mp4", 3600, state=StreamState.PARTIAL)
    cancelled = finished(supervisor, "cancelled.mp4", 3600, state=StreamState.CANCELLED)
    gone = finished(supervisor, "gone.mp4", 3600, source_deleted_at=datetime.now(UTC))
    assert all(retirement.is_settled(f) for f in (complete, partial, cancelled, gone))
    assert list(retirement.retainable) == [complete.path]
    entry = retirement.retainable[complete.path]
    assert (entry.stream_id, entry.size) == ("complete.mp4", 1000)

    with open(complete.path, "ab") as f:
        f.write(b"more")
    assert not retirement.is_settled(Watcher.stat(complete.path)), "changed since it finished"
    retirement.unsettle(complete.path)
    assert not retirement.is_settled(complete) and complete.path not in retirement.retainable

    configure(supervisor, "retention", delete_partial=True)
    record = supervisor.ctx.store.get_stream("partial.mp4")
    retirement.settle(partial.path, identity(partial), record)
    assert partial.path in retirement.retainable, "partial ones too, when the user says so"
    configure(supervisor, "retention", delete_after_upload=False, delete_partial=False)
    record = supervisor.ctx.store.get_stream("complete.mp4")
    retirement.settle(complete.path, identity(complete), record)
    assert retirement.is_settled(complete) and complete.path not in retirement.retainable


def test_the_oldest_proven_file_goes_first_one_at_a_time_by_the_least_loaded_uploader(
    supervisor, workers
):
    configure(supervisor, "retention", delete_after_upload=True)
    retirement = supervisor.retirement
    workers[0].streams.add("streaming")
    newer = finished(supervisor, "a.mp4", 3600)
    oldest = finished(supervisor, "z.mp4", 7200)
    finished(supervisor, "young.mp4", 10)  # under retention.min_age: the recorder may be back
    retirement.apply(0.0)
    assert sent(workers, 1) == [retire("z.mp4", "uploaded")] and sent(workers, 0) == []
    assert retirement.due(0.0) == sorted([newer.path, oldest.path])
    retirement.apply(0.5)
    assert sent(workers, 1) == [], "one at a time: the answer first"

    assert retirement.retired(Retired(stream_id="z.mp4", deleted=True), 1.0) == oldest.path
    assert oldest.path not in retirement.retainable and not retirement.is_settled(oldest)
    assert retirement.next_retention == 1.0, "the next is asked for at once"
    retirement.apply(1.0)
    assert sent(workers, 1) == [retire("a.mp4", "uploaded")]
    assert retirement.due(1.0) == [newer.path]


def test_a_file_kept_is_asked_about_again_a_minute_later_and_never_once_final(supervisor, workers):
    configure(supervisor, "retention", delete_after_upload=True)
    retirement = supervisor.retirement
    file = finished(supervisor, "a.mp4", 3600)
    retirement.apply(0.0)
    assert sent(workers, 0) == [retire("a.mp4", "uploaded")]
    kept = Retired(stream_id="a.mp4", deleted=False, kept_because="not in S3 yet", retry_in=5)
    assert retirement.retired(kept, 10.0) == file.path
    retirement.apply(10.0)
    retirement.apply(69.9)
    assert sent(workers, 0) == [] and retirement.due(69.9) == []
    retirement.apply(70.0)
    assert sent(workers, 0) == [retire("a.mp4", "uploaded")]

    final = Retired(stream_id="a.mp4", deleted=False, final=True, kept_because="cancelled")
    assert retirement.retired(final, 100.0) == file.path
    retirement.apply(1000.0)
    assert sent(workers, 0) == [] and retirement.due(1000.0) == []
    assert retirement.is_settled(file), "still no new stream"


def test_the_file_of_the_stream_being_pruned_waits_and_the_next_goes_first(supervisor, workers):
    configure(supervisor, "retention", delete_after_upload=True)
    finished(supervisor, "older.mp4", 7200)
    finished(supervisor, "newer.mp4", 3600)
    supervisor.retirement.apply(0.0, busy="older.mp4")
    assert sent(workers, 0) == [retire("newer.mp4", "uploaded")]


def test_disk_pressure_is_flagged_while_no_file_may_go_and_lifted_once_one_does(
    supervisor, workers
):
    def threshold(free_bytes: int) -> None:
        configure(supervisor, "retention", min_free_bytes=free_bytes)

    retirement = supervisor.retirement
    threshold(1 << 62)  # never that much free
    finished(supervisor, "young.mp4", 10)
    retirement.apply(0.0)
    assert retirement.disk_pressure and disk_pressure_gauge() == 1
    assert sent(workers, 0) == [] and retirement.due(0.0) == []
    threshold(1)  # room made by other means
    retirement.apply(1.0)
    assert not retirement.disk_pressure and disk_pressure_gauge() == 0

    threshold(1 << 62)
    old = finished(supervisor, "old.mp4", 3600)
    older = finished(supervisor, "older.mp4", 7200)
    assert retirement.due(2.0) == [older.path], "the oldest, one file at a time"
    retirement.apply(2.0)
    assert sent(workers, 0) == [retire("older.mp4", "disk_pressure")]
    assert not retirement.disk_pressure and disk_pressure_gauge() == 0, "a file is going"

    retirement.retired(Retired(stream_id="older.mp4", deleted=True), 3.0)
    threshold(1)
    retirement.apply(3.0)
    assert sent(workers, 0) == [] and retirement.due(3.0) == [], "kept: no pressure"
    assert old.path in retirement.retainable and not retirement.disk_pressure


def test_a_deletion_whose_uploader_died_is_asked_of_another(supervisor, workers):
    configure(supervisor, "retention", delete_after_upload=True)
    retirement = supervisor.retirement
    file = finished(supervisor, "a.mp4", 3600)
    retirement.apply(0.0)
    assert sent(workers, 0) == [retire("a.mp4", "uploaded")]
    retirement.uploader_died(1)
    retirement.apply(1.0)
    assert sent(workers, 0) + sent(workers, 1) == [], "another uploader's death: still awaited"
    retirement.uploader_died(0)
    workers.workers.pop(0).commands.close()
    retirement.apply(2.0)
    assert sent(workers, 1) == [retire("a.mp4", "uploaded")]
    assert retirement.due(2.0) == [file.path]
