"""The ledger (streamer/uploader/ledger.py): chunks S3 confirmed, committed strictly in
index order, however they come back; a chunk that failed parks its stream, and those after
it wait for it. In this process, on the directory-backed store (tests/uploaders.py), the
futures made by hand."""

from __future__ import annotations

from concurrent.futures import Future

from uploaders import InProcess

from streamer.digests import CRC64NVME, of
from streamer.messages import ChunkCommitted, StreamParked
from streamer.policy import UploadChunk
from streamer.uploader.reports import Sent

SIZE = 64 * 1024


def adopted(uploader: InProcess, chunks: int):
    record = uploader.track("cam.mp4", b"\0" * (chunks * SIZE))
    uploader.uploader.handle(uploader.commands.get(1))  # the Assign
    return uploader.uploader.ctx.jobs[record.stream_id]


def returned(job, index: int, outcome) -> Future:
    """Chunk `index` comes back from its sender with `outcome` (a Sent, or an error)."""
    future = Future()
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
    job.in_flight[index] = future
    return future


def sent(index: int) -> Sent:
    crc = of(CRC64NVME, bytes(SIZE))
    return Sent(
        UploadChunk(index, index * SIZE, SIZE), 0, crc, crc.value, f"etag{index}", None, 0.1,
        None, None,
    )  # fmt: skip


def test_chunks_that_come_back_out_of_order_are_committed_in_order_together(uploader):
    job = adopted(uploader, 3)
    ledger, store = uploader.uploader.ledger, uploader.store
    for index in (2, 1):
        ledger.chunk_returned(job, index, returned(job, index, sent(index)), now=1.0)
    assert store.get_stream(job.stream_id).chunk_count == 0, "1 and 2 wait for 0"
    assert sorted(job.arrived) == [1, 2]
    ledger.chunk_returned(job, 0, returned(job, 0, sent(0)), now=1.0)
    assert [c.index for c in store.chunks(job.stream_id)] == [0, 1, 2]
    assert [m.committed_bytes for m in uploader.of(ChunkCommitted)] == [3 * SIZE], "one commit"
    assert job.arrived == {} and job.in_flight == {}


def test_a_chunk_that_failed_parks_its_stream_and_those_after_it_wait(uploader):
    job = adopted(uploader, 3)
    ledger, store = uploader.uploader.ledger, uploader.store
    ledger.chunk_returned(job, 0, returned(job, 0, sent(0)), now=1.0)
    ledger.chunk_returned(job, 1, returned(job, 1, ConnectionResetError("cut")), now=1.0)
    ledger.chunk_returned(job, 2, returned(job, 2, ConnectionResetError("cut")), now=1.0)
    [parked] = uploader.of(StreamParked)  # counted once: those on the wire failed alike
    assert parked.heals and "cut" in parked.reason
    assert job.backoff.due > 1.0 and store.get_stream(job.stream_id).chunk_count == 1
    ledger.chunk_returned(job, 2, returned(job, 2, sent(2)), now=1.0)
    assert store.get_stream(job.stream_id).chunk_count == 1, "2 waits for 1, sent again"
    ledger.chunk_returned(job, 1, returned(job, 1, sent(1)), now=job.backoff.due)
    assert [c.index for c in store.chunks(job.stream_id)] == [0, 1, 2]


def test_chunks_in_s3_whose_commit_failed_are_looked_for_there_before_sent_again(uploader):
    job = adopted(uploader, 2)
    ledger = uploader.uploader.ledger
    job.probe_below = 0
    uploader.store.close()  # the checkpoint store refuses the commit
    ledger.chunk_returned(job, 0, returned(job, 0, sent(0)), now=1.0)
    ledger.chunk_returned(job, 1, returned(job, 1, sent(1)), now=1.0)
    assert job.probe_below == 1, "chunk 0 may be in S3 already: looked for before it is sent"
    assert uploader.of(StreamParked)
