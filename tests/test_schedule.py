"""Turn-taking in an uploader (streamer/uploader/schedule.py): its streams share one window
of chunks on the wire, take turns, and a parked stream waits out its backoff while the
others go on. In this process, on the directory-backed store (tests/uploaders.py)."""

from __future__ import annotations

from streamer.messages import ChunkCommitted, StreamParked

SIZE = 64 * 1024


def test_streams_share_the_window_and_each_gets_its_turn(uploader):
    records = [uploader.track(f"cam{n}.mp4", bytes([n]) * (5 * SIZE)) for n in range(3)]
    jobs, store = uploader.uploader.ctx.jobs, uploader.store
    most = 0

    def done() -> bool:
        nonlocal most
        most = max(most, sum(len(job.in_flight) for job in jobs.values()))
        return all(store.get_stream(r.stream_id).chunk_count == 5 for r in records)

    uploader.run_until(done)
    assert 1 <= most <= 2, "never more chunks on the wire than the window"
    # Turns: each stream has a chunk committed before any has all five.
    order = [m.stream_id for m in uploader.of(ChunkCommitted)]
    last = {stream_id: i for i, stream_id in enumerate(order)}
    assert {r.stream_id for r in records} <= set(order[: min(last.values()) + 1])
    for n, record in enumerate(records):
        key = uploader.s3.layout.chunk_key(record.stream_id, 4)
        assert uploader.s3.get(key) == bytes([n]) * SIZE


def test_a_parked_stream_waits_out_its_backoff_while_the_others_go_on(uploader):
    stuck = uploader.track("stuck.mp4", b"s" * (2 * SIZE))
    uploader.run_until(lambda: stuck.stream_id in uploader.uploader.ctx.jobs)
    job = uploader.uploader.ctx.jobs[stuck.stream_id]
    uploader.uploader.ctx.retry_later(job, ConnectionResetError("cut"), uploader.clock())
    assert uploader.of(StreamParked)
    other = uploader.track("other.mp4", b"o" * (2 * SIZE))
    store = uploader.store
    uploader.run_until(lambda: store.get_stream(other.stream_id).chunk_count == 2, step=0.0)
    assert store.get_stream(stuck.stream_id).chunk_count == 0, "not before its backoff is due"
    assert job.backoff.due > uploader.clock()
    uploader.run_until(lambda: store.get_stream(stuck.stream_id).chunk_count == 2)
