"""A stream's life as named phases with guarded moves, on both sides of the fork."""

from datetime import UTC, datetime

import pytest

from streamer.records import StreamRecord
from streamer.uploader.jobs import Job, Phase


def job() -> Job:
    record = StreamRecord(
        stream_id="s", path="/in/s.mp4", inode=1, device=1, chunk_size=4,
        first_seen_at=datetime.now(UTC),
    )  # fmt: skip
    return Job(record=record)


def test_a_stream_finishes_or_streams_on_then_concludes():
    streaming = job()
    for phase in (Phase.FINISHING, Phase.STREAMING, Phase.FINISHING, Phase.CONCLUDED):
        streaming.move_to(phase)
    abandoned = job()
    for phase in (Phase.FINISHING, Phase.ABANDONING, Phase.CONCLUDED):
        abandoned.move_to(phase)
    assert (streaming.phase, abandoned.phase) == (Phase.CONCLUDED, Phase.CONCLUDED)


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ((), Phase.CONCLUDED),  # never concluded without finishing or abandoning
        ((Phase.ABANDONING,), Phase.STREAMING),  # an abandoned stream never streams again
        ((Phase.ABANDONING,), Phase.FINISHING),
        ((Phase.FINISHING, Phase.CONCLUDED), Phase.STREAMING),
    ],
)
def test_moves_outside_the_table_are_refused(path, refused):
    stream = job()
    for phase in path:
        stream.move_to(phase)
    with pytest.raises(AssertionError, match=f"-> {refused}"):
        stream.move_to(refused)
