"""A stream's life as named phases with guarded moves, on both sides of the fork."""

from datetime import UTC, datetime

import pytest

from streamer.records import StreamRecord
from streamer.uploader.jobs import Job, JobPhase


def job() -> Job:
    record = StreamRecord(
        stream_id="s", path="/in/s.mp4", inode=1, device=1, chunk_size=4,
        first_seen_at=datetime.now(UTC),
    )  # fmt: skip
    return Job(record=record)


def test_a_stream_finishes_or_streams_on_then_concludes():
    streaming = job()
    for phase in (JobPhase.FINISHING, JobPhase.STREAMING, JobPhase.FINISHING, JobPhase.CONCLUDED):
        streaming.move_to(phase)
    abandoned = job()
    for phase in (JobPhase.FINISHING, JobPhase.ABANDONING, JobPhase.CONCLUDED):
        abandoned.move_to(phase)
    assert (streaming.phase, abandoned.phase) == (JobPhase.CONCLUDED, JobPhase.CONCLUDED)


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ((), JobPhase.CONCLUDED),  # never concluded without finishing or abandoning
        ((JobPhase.ABANDONING,), JobPhase.STREAMING),  # an abandoned stream never streams again
        ((JobPhase.ABANDONING,), JobPhase.FINISHING),
        ((JobPhase.FINISHING, JobPhase.CONCLUDED), JobPhase.STREAMING),
    ],
)
def test_moves_outside_the_table_are_refused(path, refused):
    stream = job()
    for phase in path:
        stream.move_to(phase)
    with pytest.raises(AssertionError, match=f"-> {refused}"):
        stream.move_to(refused)
