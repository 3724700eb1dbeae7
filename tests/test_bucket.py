"""The bucket read back without S3 calls: keys parsed by the layout, a stream's pieces
planned from its objects, which streams a recording's name means, a recording's playable
prefix; what `remote list` and `restore` take and say."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import click
import msgspec
import pytest
from click.testing import CliRunner
from recordings import record

from streamer import mp4
from streamer.bucket import Ambiguous, ListedStream, RemoteStream, nearest, newest
from streamer.cli import main
from streamer.cli.remote import Moment
from streamer.layout import KeyOf, Layout
from streamer.manifest import Manifest
from streamer.objectstore import StoredObject
from streamer.restore import CONNECTIONS, Piece, RestoreError, in_order, plan

LAYOUT = Layout("rec", "cam")
AT = datetime(2026, 11, 30, tzinfo=UTC)


def test_keys_read_back_as_their_place_in_the_layout():
    assert LAYOUT.parse("rec/cam/s1/chunks/000041") == KeyOf("cam", "s1", "chunk", 41, 0)
    assert LAYOUT.parse("rec/other/s1/chunks/000003.r2") == KeyOf("other", "s1", "chunk", 3, 2)
    assert LAYOUT.parse("rec/cam/s1/metadata.json") == KeyOf("cam", "s1", "manifest")
    assert LAYOUT.parse("rec/cam/s1/cam one.mp4") == KeyOf("cam", "s1", "object")
    for key in ("rec/cam/.owner", "rec/cam/.doctor/ab", "elsewhere/cam/s1/x", "rec/cam//s1/b"):
        assert LAYOUT.parse(key) is None, key
    assert Layout("", "cam").parse("cam/s1/metadata.json") == KeyOf("cam", "s1", "manifest")


def active(*chunks: tuple[int, int, int]) -> RemoteStream:
    """A stream with chunks (index, revision, size) and no metadata.json."""
    stream = RemoteStream("cam", "s1")
    for index, revision, size in chunks:
        key = LAYOUT.chunk_key("s1", index, revision)
        stream.add(key, LAYOUT.parse(key), StoredObject(size, "e", None, AT))
    return stream


def test_an_active_stream_is_its_run_of_chunks_from_zero_latest_revision_first():
    stream = active((0, 0, 10), (1, 0, 10), (1, 1, 10), (2, 0, 10), (4, 0, 7))
    assert (stream.status, stream.size, stream.chunk_count) == ("active", 37, 4)
    planned = plan(stream)
    assert [(p.index, p.key, p.offset) for p in planned.pieces] == [
        (0, "rec/cam/s1/chunks/000000", 0),
        (1, "rec/cam/s1/chunks/000001.r1", 10),
        (2, "rec/cam/s1/chunks/000002", 20),
    ]
    assert planned.stopped == "chunk 3 is missing: restored 3 of the 4 chunks in S3"
    assert plan(active((0, 0, 10), (1, 0, 5))).stopped is None
    with pytest.raises(RestoreError, match="chunk 0 is not in S3"):
        plan(active((1, 0, 5)))


def test_an_active_stream_ends_at_a_short_chunk_not_at_older_bytes_after_it():
    # The file shrank and grew again: chunk 2's new revision is its tail, chunk 3 is old.
    planned = plan(active((0, 0, 10), (1, 0, 10), (2, 0, 10), (2, 1, 4), (3, 0, 10)))
    assert [(p.index, p.size) for p in planned.pieces] == [(0, 10), (1, 10), (2, 4)]
    assert planned.stopped == (
        "chunk 2 is shorter than the others, the end of the file as uploaded: the chunks "
        "after it in S3 (1) hold older bytes"
    )


def finished(stream: ListedStream, name: str = "x.mp4") -> ListedStream:
    """The stream with a metadata.json of two 10-byte chunks, its file called `name`."""
    stream.manifest_key = LAYOUT.manifest_key("s1")
    chunks = [
        {"index": i, "key": LAYOUT.chunk_key("s1", i), "offset": 10 * i, "size": 10,
         "sha256": "0" * 64, "etag": "e", "uploaded_at": AT, "revision": 0,
         "reupload_reason": None}
        for i in range(2)
    ]  # fmt: skip
    found = msgspec.convert(
        {
            "stream_id": "s1", "status": "complete", "status_reason": None,
            "source": {"path": f"/in/{name}", "name": name, "inode": 1, "modified_at": AT},
            "total_size": 20, "sha256": "1" * 64, "chunk_size": 10, "chunk_count": 2,
            "reuploaded_chunks": 0, "chunks": chunks, "assembled": None, "first_seen_at": AT,
            "first_upload_at": AT, "last_upload_at": AT, "completed_at": AT,
            "duration": {"wall_seconds": 1.0, "media_seconds": None}, "mp4": None,
        },
        Manifest,
    )  # fmt: skip
    stream.keep(found)
    return stream


def test_a_finished_stream_without_its_chunks_nor_its_whole_object_names_the_first_gone():
    stream = finished(active((0, 0, 10)))
    with pytest.raises(
        RestoreError, match=r"chunk 1 is missing from S3 \(rec/cam/s1/chunks/000001\)"
    ):
        plan(stream)


def test_a_listed_stream_adds_up_its_chunks_as_s3_lists_them_keeping_none():
    # S3 lists keys in UTF-8 binary order: chunk 1's revision 10 comes before its 2.
    sizes = {(0, 0): 10, (1, 0): 10, (1, 2): 9, (1, 10): 8, (2, 0): 10, (2, 1): 6, (4, 0): 3}
    keys = {
        LAYOUT.chunk_key("s1", index, revision): size for (index, revision), size in sizes.items()
    }
    assert list(keys)[:4] != sorted(keys)[:4], "the listing's order is not the revisions'"
    full, listed = RemoteStream("cam", "s1"), ListedStream("cam", "s1")
    for n, key in enumerate(sorted(keys)):
        stored = StoredObject(keys[key], "e", None, AT + timedelta(seconds=n))
        full.add(key, LAYOUT.parse(key), stored)
        listed.add(key, LAYOUT.parse(key), stored)
    shown = (listed.status, listed.size, listed.chunk_count, listed.upload_times())
    assert shown == ("active", 10 + 8 + 6 + 3, 4, (AT, AT + timedelta(seconds=6)))
    assert shown == (full.status, full.size, full.chunk_count, full.upload_times())
    assert sum(s.size for _, s in full.chunks.values()) == listed.size
    assert not hasattr(listed, "chunks"), "a listed stream keeps no chunk objects"


def test_a_listed_stream_keeps_what_is_shown_of_its_metadata_json_not_its_chunks():
    listed = finished(ListedStream("cam", "s1"), "Front Door.MOV")
    assert listed.recorded is not None and not hasattr(listed, "manifest")
    assert (listed.status, listed.size, listed.chunk_count) == ("complete", 20, 2)
    assert (listed.first_seen, listed.upload_times(), listed.file_name) == (
        AT,
        (AT, AT),
        "Front Door.MOV",
    )
    full = finished(active((0, 0, 10), (1, 0, 10)))
    assert full.manifest is not None and len(full.manifest.chunks) == 2, "restore's, whole"
    assert full.summary() == listed.summary()


def test_a_recordings_name_is_its_stream_id_without_the_time_and_any_end_of_its_path():
    stream = RemoteStream("cam", "cam1/2026-12-06/late-20261206T221500Z-2")
    assert stream.name == "cam1/2026-12-06/late"
    assert stream.first_seen == datetime(2026, 12, 6, 22, 15, tzinfo=UTC)
    names = ["late", "late.mp4", "2026-12-06/late", "cam1/2026-12-06/late.mp4", "cam1/*",
             "l?te", "*.mp4", "*/late"]  # fmt: skip
    assert [n for n in names if not stream.named(n)] == []
    others = ["cam1", "ate", "cam1/late", "am1/2026-12-06/late", "2026-12-06", "late-2*",
              "LATE", "cam1/2026-12-06/late/x"]  # fmt: skip
    assert [n for n in others if stream.named(n)] == []
    assert RemoteStream("cam", "s1").name == "s1", "an id of another form is its own name"


def test_the_newest_stream_of_one_recording_wins_and_of_several_they_are_listed():
    def streams(*ids: str, instance: str = "cam") -> list[RemoteStream]:
        return [RemoteStream(instance, i) for i in ids]

    # Two streams first seen in one second: the later one's id ends in -2.
    cam1 = streams("cam1-20261206T100000Z", "cam1-20261206T110000Z", "cam1-20261206T110000Z-2")
    assert newest(cam1, latest=False).stream_id == "cam1-20261206T110000Z-2"
    cam2 = streams("cam2-20261206T120000Z")
    with pytest.raises(Ambiguous) as listed:
        newest(cam1 + cam2, latest=False)
    assert [s.stream_id for s in listed.value.candidates] == [
        "cam2-20261206T120000Z", "cam1-20261206T110000Z-2", "cam1-20261206T110000Z",
        "cam1-20261206T100000Z",
    ]  # fmt: skip
    assert newest(cam1 + cam2, latest=True) is cam2[0]
    # One file name in two folders, or one name under two instances: two recordings.
    folders = streams("cam1/late-20261206T100000Z", "cam2/late-20261206T090000Z")
    with pytest.raises(Ambiguous):
        newest(folders, latest=False)
    elsewhere = streams("cam1-20261206T090000Z", instance="other")
    with pytest.raises(Ambiguous):
        newest(cam1 + elsewhere, latest=False)
    assert newest(cam1 + elsewhere, latest=True).stream_id == "cam1-20261206T110000Z-2"


def test_the_nearest_names_are_suggested():
    ids = ("cam1-20261206T100000Z", "yard/gate-20261206T100000Z", "garage-20261206T100000Z")
    known = [RemoteStream("cam", i) for i in ids]
    assert nearest(known, "cma1") == ["cam1"]
    assert nearest(known, "gates") == ["gate"]
    assert nearest(known, "zzzz") == []


def test_a_stream_restored_into_a_directory_takes_its_files_name():
    assert active((0, 0, 10)).file_name == "s1.mp4"
    named = RemoteStream("cam", "cam1/Front_Door-20261206T100000Z")
    assert named.file_name == "Front_Door.mp4", "its name, not its folder's nor its time"
    assert finished(active((0, 0, 10)), "Front Door.MOV").file_name == "Front Door.MOV"
    for hostile in ("../../etc/passwd", "..", "", "a/b.mp4"):
        assert finished(active((0, 0, 10)), hostile).file_name == "s1.mp4", hostile


def test_a_pipe_is_fed_in_order_never_more_than_the_connections_ahead():
    pieces = [Piece(i, f"k{i}", i, 1, None) for i in range(3 * CONNECTIONS)]

    class Counted(ThreadPoolExecutor):
        asked = 0

        def submit(self, *args, **kwargs):
            self.asked += 1
            return super().submit(*args, **kwargs)

    with Counted(CONNECTIONS) as pool:
        written = []
        for piece, result in in_order(pool, pieces, lambda p: p.index):
            assert piece.index == result == len(written)
            assert pool.asked <= len(written) + 1 + CONNECTIONS, "no more asked ahead"
            written.append(result)
    assert written == list(range(3 * CONNECTIONS))


def test_since_takes_an_iso_time_or_a_span_back_from_now(monkeypatch):
    since = Moment()
    before = datetime.now(UTC)
    two_hours = since.convert("2h", None, None)
    assert before - timedelta(hours=2) <= two_hours <= datetime.now(UTC) - timedelta(hours=2)
    assert since.convert("3d", None, None) < before - timedelta(days=3) + timedelta(minutes=1)
    assert since.convert("2026-12-06T22:15Z", None, None) == datetime(
        2026, 12, 6, 22, 15, tzinfo=UTC
    )
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        local = since.convert("2026-12-06", None, None)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert local == datetime(2026, 12, 5, 23, tzinfo=UTC), "without a zone: local time"
    with pytest.raises(click.BadParameter, match="'yesterday' is not a time: give an ISO"):
        since.convert("yesterday", None, None)


def test_the_help_of_remote_list_and_restore_says_what_each_option_does():
    def shown(*command: str) -> str:
        done = CliRunner().invoke(main, [*command, "--help"], terminal_width=100)
        assert done.exit_code == 0, done.output
        return " ".join(done.output.split())

    listing = shown("remote", "list")
    assert "restore" not in listing and "whichever instance" not in listing
    assert "--name GLOB" in listing and "--since TIME" in listing
    restoring = shown("restore")
    assert "OUTPUT" not in restoring and "-o, --output FILE|DIR|-" in restoring
    assert "--json" in restoring and "--latest" in restoring


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
