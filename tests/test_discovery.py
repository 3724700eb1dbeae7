"""What the supervisor learns from the watched directory (streamer/supervisor/discovery.py),
on a real checkpoint store and real files, without processes: recordings discovered, grown,
moved, lost and idle, by scans and by file events. The clock is the `now` each call is
given."""

from __future__ import annotations

import os

import msgspec
from supervisors import configure, recording, sent

from streamer.messages import Abandon, Assign, Finish, Grow, Moved
from streamer.records import StreamState
from streamer.supervisor.table import StreamPhase
from streamer.watcher import Watcher


def write(supervisor, name: str, size: int = 1000) -> str:
    """A recorder writes `name` up to `size` bytes."""
    path = os.path.join(supervisor.config.watch.directory, name)
    with open(path, "ab") as f:
        f.write(b"r" * (size - f.tell()))
    return path


def only(supervisor):
    (tracked,) = supervisor.table.all()
    return tracked


def test_a_stream_forgotten_while_tracked_is_not_a_crash(supervisor):
    record, file = recording(supervisor, "gone.mp4")
    tracked = supervisor.table.track(record, file, 0.0, "stream_discovered")
    supervisor.ctx.store.update_stream(
        record.stream_id,
        lambda r: msgspec.structs.replace(r, state=StreamState.CANCELLED),
    )
    supervisor.ctx.store.forget_stream(record.stream_id)
    supervisor.discovery.check_cancellations()
    assert tracked.phase is StreamPhase.STREAMING


def test_a_new_recording_is_a_stream_with_a_record_and_after_a_restart_the_same_one(
    supervisor, workers
):
    discovery, store = supervisor.discovery, supervisor.ctx.store
    path = write(supervisor, "a.mp4")
    notes = write(supervisor, "notes.txt")
    discovery.rescan(10.0)
    discovery.observe(notes, 10.0)  # as a file event would have it: not a recording
    tracked = only(supervisor)
    record = store.stream_at(path)
    assert record.stream_id == tracked.stream_id and record.relative_path == "a.mp4"
    assert record.chunk_size == supervisor.config.stream.chunk_size
    assert sent(workers, 0) == [Assign(stream_id=tracked.stream_id)]
    assert discovery.next_rescan == 10.0 + supervisor.config.watch.rescan_interval
    discovery.rescan(11.0)
    assert only(supervisor) is tracked, "found again, not a second stream"

    store.update_stream(tracked.stream_id, lambda r: msgspec.structs.replace(r, committed_bytes=4))
    supervisor.table.untrack(tracked.stream_id)  # as a new daemon's empty table
    discovery.rescan(20.0)
    resumed = only(supervisor)
    assert resumed.stream_id == tracked.stream_id and resumed.committed == 4
    assert len(list(store.streams())) == 1


def test_a_stream_idle_for_idle_timeout_is_finished_unless_a_fresh_look_finds_it_grew(
    supervisor, workers
):
    configure(supervisor, "stream", chunk_size=4096)
    timeout = supervisor.config.stream.idle_timeout
    discovery = supervisor.discovery
    path = write(supervisor, "a.mp4")
    discovery.rescan(0.0)
    tracked = only(supervisor)
    sent(workers, 0)
    discovery.finish_idle_streams(timeout - 1)
    assert tracked.phase is StreamPhase.STREAMING and discovery.next_idle_at == timeout

    write(supervisor, "a.mp4", 5000)  # no file event read since: the look finds it
    discovery.finish_idle_streams(timeout)
    assert tracked.phase is StreamPhase.STREAMING and tracked.changed_at == timeout
    assert tracked.file.size == 5000
    assert sent(workers, 0) == [Grow(stream_id=tracked.stream_id, size=5000)]

    discovery.finish_idle_streams(2 * timeout)
    assert tracked.phase is StreamPhase.FINISHING
    mtime_ns = os.stat(path).st_mtime_ns
    assert sent(workers, 0) == [Finish(stream_id=tracked.stream_id, size=5000, mtime_ns=mtime_ns)]
    discovery.finish_idle_streams(3 * timeout)
    assert sent(workers, 0) == [], "told once"
    discovery.finish_declined(tracked, 3 * timeout + 1)
    assert tracked.phase is StreamPhase.STREAMING and tracked.changed_at == 3 * timeout + 1


def test_a_renamed_recording_keeps_its_stream_and_its_owner_hears_of_it(supervisor, workers):
    discovery, store = supervisor.discovery, supervisor.ctx.store
    path = write(supervisor, "a.mp4")
    discovery.rescan(0.0)
    tracked = only(supervisor)
    sent(workers, 0)
    renamed = os.path.join(os.path.dirname(path), "b.mp4")
    os.rename(path, renamed)
    discovery.rescan(5.0)
    assert only(supervisor) is tracked and tracked.phase is StreamPhase.STREAMING
    assert supervisor.table.at(renamed) is tracked and supervisor.table.at(path) is None
    record = store.get_stream(tracked.stream_id)
    assert (record.path, record.relative_path) == (renamed, "b.mp4")
    assert store.stream_at(renamed).stream_id == tracked.stream_id
    assert sent(workers, 0) == [Moved(stream_id=tracked.stream_id)]


def test_a_file_with_a_lost_recording_s_inode_but_fewer_bytes_is_a_new_recording(supervisor):
    """The stream's file is gone, and its inode is at another name with fewer bytes than
    were uploaded: not the recording renamed, but another one."""
    discovery, store = supervisor.discovery, supervisor.ctx.store
    path = write(supervisor, "a.mp4")
    discovery.rescan(0.0)
    tracked = only(supervisor)
    store.update_stream(
        tracked.stream_id, lambda r: msgspec.structs.replace(r, committed_bytes=1000)
    )
    other = os.path.join(os.path.dirname(path), "b.mp4")
    os.rename(path, other)
    os.truncate(other, 10)
    discovery.rescan(5.0)
    assert tracked.phase is StreamPhase.ABANDONING
    assert tracked.abandon.reason == "deleted before it finished"
    newcomer = supervisor.table.at(other)
    assert newcomer is not None and newcomer.stream_id != tracked.stream_id
    assert store.get_stream(tracked.stream_id).path == path, "the lost one's record stays"


def test_a_stream_ends_as_partial_when_its_file_is_deleted_or_replaced_or_cancelled(
    supervisor, workers
):
    discovery, table, store = supervisor.discovery, supervisor.table, supervisor.ctx.store
    deleted, replaced = write(supervisor, "a.mp4"), write(supervisor, "b.mp4")
    cancelled = write(supervisor, "c.mp4")
    discovery.rescan(0.0)
    first, second, third = (table.at(p) for p in (deleted, replaced, cancelled))
    another = write(supervisor, "new.tmp")  # made first: no inode of theirs to reuse
    os.unlink(deleted)
    os.replace(another, replaced)
    store.update_stream(  # as `streamer streams cancel` asks
        third.stream_id, lambda r: msgspec.structs.replace(r, cancel_requested=True)
    )
    discovery.rescan(5.0)
    discovery.check_cancellations()

    assert first.abandon == Abandon(stream_id=first.stream_id, reason="deleted before it finished")
    assert second.abandon == Abandon(
        stream_id=second.stream_id, reason="replaced by another file before it finished"
    )
    assert third.abandon == Abandon(
        stream_id=third.stream_id, reason="cancelled by an operator", status="cancelled"
    )
    assert {first.phase, second.phase, third.phase} == {StreamPhase.ABANDONING}
    assert table.at(deleted) is None and table.at(cancelled) is None
    newcomer = table.at(replaced)
    assert newcomer.stream_id not in {first.stream_id, second.stream_id}
    told = sent(workers, 0) + sent(workers, 1)
    assert all(t.abandon in told for t in (first, second, third))


def test_file_events_bring_a_new_recording_in_and_its_deletion_ends_it(supervisor):
    watcher, discovery = supervisor.ctx.watcher, supervisor.discovery
    watcher.open()
    try:
        path = write(supervisor, "a.mp4")
        discovery.handle_file_events(1.0)
        tracked = supervisor.table.at(path)
        assert tracked is not None and tracked.changed_at == 1.0
        write(supervisor, "a.mp4", 2000)
        discovery.handle_file_events(2.0)
        assert tracked.file.size == 2000 and tracked.changed_at == 2.0
        os.unlink(path)
        discovery.handle_file_events(3.0)
        assert tracked.phase is StreamPhase.ABANDONING
        assert supervisor.table.at(path) is None
    finally:
        watcher.close()


def test_a_finished_file_is_settled_and_one_changed_since_it_finished_is_a_new_stream(
    supervisor,
):
    discovery, table, store = supervisor.discovery, supervisor.table, supervisor.ctx.store
    kept, changed = write(supervisor, "a.mp4"), write(supervisor, "b.mp4")
    discovery.rescan(0.0)
    for path in (kept, changed):
        file, stream_id = Watcher.stat(path), table.at(path).stream_id
        store.update_stream(  # as its uploader finished it
            stream_id,
            lambda r, file=file: msgspec.structs.replace(
                r, state=StreamState.COMPLETE, total_size=file.size, mtime_ns=file.mtime_ns
            ),
        )
    finished = {path: table.at(path) for path in (kept, changed)}
    write(supervisor, "b.mp4", 3000)  # the recorder came back after it was finished

    for tracked in finished.values():
        discovery.concluded(tracked.stream_id, 1000, tracked.file.mtime_ns, 40.0)
    assert table.at(kept) is None and discovery.retirement.is_settled(Watcher.stat(kept))
    newcomer = table.at(changed)
    assert newcomer is not None and newcomer.stream_id != finished[changed].stream_id
    assert newcomer.file.size == 3000
    discovery.rescan(41.0)
    assert table.at(kept) is None and len(table) == 1, "a settled file is no new stream"
