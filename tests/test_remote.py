"""The bucket read back without S3 calls: keys parsed by the layout, a stream's pieces
planned from its objects, a recording's playable prefix."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from conftest import record

from streamer import mp4
from streamer.chunkstore import StoredObject
from streamer.layout import KeyOf, Layout
from streamer.manifest import Manifest
from streamer.remote import RemoteStream
from streamer.restore import RestoreError, plan

LAYOUT = Layout("rec", "cam")
AT = datetime(2026, 11, 30, tzinfo=UTC)


def test_keys_read_back_as_their_place_in_the_layout():
    assert LAYOUT.parse("rec/cam/s1/chunks/000041") == KeyOf("cam", "s1", "chunk", 41, 0)
    assert LAYOUT.parse("rec/other/s1/chunks/000003.r2") == KeyOf("other", "s1", "chunk", 3, 2)
    assert LAYOUT.parse("rec/cam/s1/metadata.json") == KeyOf("cam", "s1", "manifest")
    assert LAYOUT.parse("rec/cam/s1/cam one.mp4") == KeyOf("cam", "s1", "object")
    for key in ("rec/cam/.owner", "rec/cam/.doctor/ab", "elsewhere/cam/s1/x", "rec/cam/s1/a/b"):
        assert LAYOUT.parse(key) is None, key
    assert Layout("", "cam").parse("cam/s1/metadata.json") == KeyOf("cam", "s1", "manifest")


def unfinished(*chunks: tuple[int, int, int]) -> RemoteStream:
    """A stream with chunks (index, revision, size) and no metadata.json."""
    stream = RemoteStream("cam", "s1")
    for index, revision, size in chunks:
        key = LAYOUT.chunk_key("s1", index, revision)
        stream.add(key, LAYOUT.parse(key), StoredObject(size, "e", None, AT))
    return stream


def test_an_unfinished_stream_is_its_run_of_chunks_from_zero_latest_revision_first():
    stream = unfinished((0, 0, 10), (1, 0, 10), (1, 1, 10), (2, 0, 10), (4, 0, 7))
    assert (stream.status, stream.size, stream.chunk_count) == ("unfinished", 37, 4)
    planned = plan(stream)
    assert [(p.index, p.key, p.offset) for p in planned.pieces] == [
        (0, "rec/cam/s1/chunks/000000", 0),
        (1, "rec/cam/s1/chunks/000001.r1", 10),
        (2, "rec/cam/s1/chunks/000002", 20),
    ]
    assert planned.stopped == "chunk 3 is missing: restored 3 of the 4 chunks in S3"
    assert plan(unfinished((0, 0, 10), (1, 0, 5))).stopped is None
    with pytest.raises(RestoreError, match="chunk 0 is not in S3"):
        plan(unfinished((1, 0, 5)))


def test_an_unfinished_stream_ends_at_a_short_chunk_not_at_older_bytes_after_it():
    # The file shrank and grew again: chunk 2's new revision is its tail, chunk 3 is old.
    planned = plan(unfinished((0, 0, 10), (1, 0, 10), (2, 0, 10), (2, 1, 4), (3, 0, 10)))
    assert [(p.index, p.size) for p in planned.pieces] == [(0, 10), (1, 10), (2, 4)]
    assert planned.stopped == (
        "chunk 2 is shorter than the others, the end of the file as uploaded: the chunks "
        "after it in S3 (1) hold older bytes"
    )


def test_a_finished_stream_without_its_chunks_nor_its_whole_object_names_the_first_gone():
    stream = unfinished((0, 0, 10))
    stream.manifest_key = LAYOUT.manifest_key("s1")
    chunks = [
        {"index": i, "key": LAYOUT.chunk_key("s1", i), "offset": 10 * i, "size": 10,
         "sha256": "0" * 64, "etag": "e", "uploaded_at": AT, "revision": 0,
         "reupload_reason": None}
        for i in range(2)
    ]  # fmt: skip
    stream.manifest = msgspec.convert(
        {
            "stream_id": "s1", "status": "complete", "status_reason": None,
            "source": {"path": "/in/x.mp4", "name": "x.mp4", "inode": 1, "modified_at": AT},
            "total_size": 20, "sha256": "1" * 64, "chunk_size": 10, "chunk_count": 2,
            "reuploaded_chunks": 0, "chunks": chunks, "assembled": None, "first_seen_at": AT,
            "first_upload_at": AT, "last_upload_at": AT, "completed_at": AT,
            "duration": {"wall_seconds": 1.0, "media_seconds": None}, "mp4": None,
        },
        Manifest,
    )  # fmt: skip
    with pytest.raises(
        RestoreError, match=r"chunk 1 is missing from S3 \(rec/cam/s1/chunks/000001\)"
    ):
        plan(stream)


@pytest.mark.parametrize("kind", ["fragmented", "plain"])
def test_the_playable_prefix_of_a_recording_cut_anywhere(ffmpeg, tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    assert record(ffmpeg, path, 4, kind, live=False).wait(60) == 0
    data = path.read_bytes()
    for cut in range(0, len(data), max(1, len(data) // 50)):
        head = data[:cut]
        keep = mp4.playable_prefix(lambda at, n, head=head: head[at : at + n], len(head))
        if keep is not None:
            assert mp4.inspect_bytes(head[:keep]).playable, (kind, cut, keep)
        if kind == "plain":
            assert keep is None, "a plain MP4 cut short has no moov to play by"
    whole = mp4.playable_prefix(lambda at, n: data[at : at + n], len(data))
    assert whole is not None and mp4.inspect_bytes(data[:whole]).playable
