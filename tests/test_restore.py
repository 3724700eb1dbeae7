"""Restore without an S3 server: real streams, uploaded and finished by an uploader in
this process on the directory-backed store (tests/uploaders.py), planned and restored
into files in the test's folder; the temporary file, its mark and the output's name
worked on the disk directly. tests/integration/test_restore.py runs the command on real
servers."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import msgspec
import pytest
from recordings import record
from uploaders import INSTANCE, InProcess

from streamer import digests, mp4
from streamer.bodies import InMemory
from streamer.bucket import RemoteStream, find
from streamer.digests import SHA256, Digest
from streamer.manifest import Manifest
from streamer.messages import StreamFinished
from streamer.restore import (
    MARK,
    MARK_SUFFIX,
    MAX_CHUNK,
    PART_SUFFIX,
    InTheWay,
    RestoreError,
    mark,
    open_partial,
    plan,
    read_mark,
    reopen,
    restore,
    restore_to_pipe,
    settle,
    unfinished_plan,
    untrusted,
)

SIZE = 64 * 1024  # the chunk size the uploader fixture sends


def found(uploader: InProcess, stream_id: str) -> RemoteStream:
    """The stream as S3 alone shows it: every object of it, its metadata.json read."""
    [stream] = find(uploader.s3, stream_id, INSTANCE)
    return stream


def uploaded(uploader: InProcess, name: str, data: bytes, finish: bool = True) -> RemoteStream:
    """A recording of `data` whose whole chunks are in S3; finished (its tail sent, its
    metadata.json written) unless told not to be."""
    taken = uploader.track(name, data)
    stream_id = taken.stream_id
    whole = len(data) // SIZE
    uploader.run_until(lambda: uploader.store.get_stream(stream_id).chunk_count == whole)
    if finish:
        uploader.finish(taken)
        uploader.run_until(
            lambda: any(m.stream_id == stream_id for m in uploader.of(StreamFinished))
        )
    return found(uploader, stream_id)


def object_path(uploader: InProcess, key: str):
    """Where the directory-backed store keeps the object's bytes (its sidecar, with the
    size and digest it was stored with, is elsewhere and stays as it is)."""
    return uploader.s3.root / uploader.s3.bucket / key


def damage(uploader: InProcess, key: str) -> bytes:
    """As many other bytes put in place of the object's own; returns its own."""
    path = object_path(uploader, key)
    own = path.read_bytes()
    path.write_bytes(bytes(b ^ 0xFF for b in own))
    return own


def left_beside(out) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f"{out.name}.*"))


def sha256(data: bytes) -> Digest:
    return Digest(SHA256, hashlib.sha256(data).hexdigest())


def with_chunk(found: Manifest, place: int, **changes) -> Manifest:
    chunks = list(found.chunks)
    chunks[place] = msgspec.structs.replace(chunks[place], **changes)
    return msgspec.structs.replace(found, chunks=chunks)


# Planning


def test_a_finished_streams_plan_is_its_chunks_in_order_with_their_recorded_digests(uploader):
    data = os.urandom(3 * SIZE + 1000)
    stream = uploaded(uploader, "cam.mp4", data)
    recorded = stream.manifest
    assert recorded is not None and recorded.total_size == len(data)
    planned = plan(stream)
    pieces = planned.pieces
    assert [p.index for p in pieces] == list(range(-(-len(data) // SIZE)))
    assert [p.key for p in pieces] == [
        uploader.s3.layout.chunk_key(stream.stream_id, p.index) for p in pieces
    ]
    assert [p.offset for p in pieces] == [sum(q.size for q in pieces[: p.index]) for p in pieces]
    assert sum(p.size for p in pieces) == len(data)
    assert [p.digest for p in pieces] == [c.digest for c in recorded.chunks]
    assert None not in [p.digest for p in pieces], "each piece is checked by what was recorded"
    assert (planned.whole, planned.stopped) == (sha256(data), None)
    assert b"".join(uploader.s3.get(p.key) for p in pieces) == data


def test_a_finished_stream_whose_chunks_are_gone_is_its_whole_object(uploader, tmp_path):
    data = os.urandom(2 * SIZE + 10)
    stream = uploaded(uploader, "cam.mp4", data)
    assert stream.assembled_key is not None
    for key in stream.chunk_keys:
        uploader.s3.remove(key)
    stream = found(uploader, stream.stream_id)
    [piece] = plan(stream).pieces
    assert (piece.key, piece.offset, piece.size) == (stream.assembled_key, 0, len(data))
    assert piece.digest == sha256(data)
    out = tmp_path / "out.mp4"
    restored, _ = restore(uploader.s3, stream, str(out))
    assert out.read_bytes() == data and restored.pieces == 1
    # And without it as well: the first chunk missing is named.
    uploader.s3.remove(stream.assembled_key)
    gone = found(uploader, stream.stream_id)
    first = stream.manifest.chunks[0].key
    with pytest.raises(RestoreError, match=f"chunk 0 is missing from S3 \\({first}\\)"):
        plan(gone)


def test_a_metadata_json_that_disagrees_with_the_listing_says_why(uploader):
    data = os.urandom(3 * SIZE + 1000)
    stream = uploaded(uploader, "cam.mp4", data)
    good = stream.manifest
    assert untrusted(good, stream) is None
    chunks, total, last = good.chunks, good.total_size, len(good.chunks) - 1
    wrong = {
        "total size": (
            msgspec.structs.replace(good, total_size=total + 1),
            f"its chunks add up to {total} bytes, not to its total_size, {total + 1}",
        ),
        "offset": (
            with_chunk(good, 1, offset=chunks[1].offset + 1),
            f"chunk 1 starts at byte {chunks[1].offset + 1}, not at {chunks[0].size}",
        ),
        "another chunk's key": (
            with_chunk(good, 2, key=chunks[1].key),
            f"chunk 2 is listed as chunk 2 at {chunks[1].key}, not at {chunks[2].key}",
        ),
        "an index twice": (
            with_chunk(good, 2, index=1),
            f"chunk 2 is listed as chunk 1 at {chunks[2].key}, not at {chunks[2].key}",
        ),
        "not its size in S3": (
            msgspec.structs.replace(
                with_chunk(good, last, size=chunks[last].size - 1), total_size=total - 1
            ),
            f"chunk {last} is {chunks[last].size - 1} bytes, and {chunks[last].size} in S3 "
            f"({chunks[last].key})",
        ),
        "longer than a chunk": (
            msgspec.structs.replace(good, chunk_size=chunks[0].size - 1),
            f"chunk 0 is {chunks[0].size} bytes, not 0 to {chunks[0].size - 1} (a chunk)",
        ),
        "a chunk size S3 takes no chunk of": (
            msgspec.structs.replace(good, chunk_size=MAX_CHUNK + 1),
            f"its chunk_size, {MAX_CHUNK + 1}, is not one S3 takes",
        ),
    }
    said = {what: untrusted(manifest, stream) for what, (manifest, _) in wrong.items()}
    assert said == {what: reason for what, (_, reason) in wrong.items()}
    for what, (manifest, reason) in wrong.items():
        with pytest.raises(RestoreError) as refused:
            plan(dataclasses.replace(stream, manifest=manifest))
        assert str(refused.value) == f"its metadata.json is not to be trusted: {reason}", what


def test_a_wrong_metadata_json_in_s3_writes_nothing(uploader, tmp_path):
    stream = uploaded(uploader, "cam.mp4", os.urandom(2 * SIZE + 10))
    chunks = stream.manifest.chunks
    body = msgspec.json.encode(with_chunk(stream.manifest, 1, offset=chunks[1].offset - 1))
    uploader.s3.put(
        stream.manifest_key, InMemory(body), digests.of(SHA256, body), "application/json"
    )
    stream = found(uploader, stream.stream_id)
    out = tmp_path / "out.mp4"
    reason = f"chunk 1 starts at byte {chunks[1].offset - 1}, not at {chunks[1].offset}"
    with pytest.raises(RestoreError, match=f"not to be trusted: {reason}"):
        restore(uploader.s3, stream, str(out))
    assert list(tmp_path.glob("out.mp4*")) == []


def test_an_unfinished_stream_is_its_chunks_from_zero_up_to_the_first_missing(uploader):
    data = os.urandom(3 * SIZE + 1000)  # its tail goes once the stream finishes
    stream = uploaded(uploader, "live.mp4", data, finish=False)
    assert stream.manifest is None and stream.manifest_key is None
    planned = unfinished_plan(stream)
    assert planned == plan(stream)
    assert [(p.index, p.offset, p.size) for p in planned.pieces] == [
        (i, i * SIZE, SIZE) for i in range(len(data) // SIZE)
    ]
    assert [p.key for p in planned.pieces] == [stream.chunks[i][0] for i in range(3)]
    assert [p.digest for p in planned.pieces] == [None] * 3, "asked of S3, as each arrives"
    assert (planned.whole, planned.stopped) == (None, None)

    uploader.s3.remove(stream.chunks[1][0])
    gapped = unfinished_plan(found(uploader, stream.stream_id))
    assert [p.index for p in gapped.pieces] == [0]
    assert gapped.stopped == "chunk 1 is missing: restored 1 of the 2 chunks in S3"


# Restoring


def test_a_finished_stream_is_restored_to_the_exact_bytes_and_nothing_is_left(uploader, tmp_path):
    data = os.urandom(3 * SIZE + 1000)
    stream = uploaded(uploader, "cam.mp4", data)
    out = tmp_path / "out.mp4"
    progress = []
    restored, stopped = restore(uploader.s3, stream, str(out), progress=progress.append)
    assert out.read_bytes() == data
    assert (restored.size, restored.pieces, restored.reused, restored.cut) == (
        len(data),
        len(stream.manifest.chunks),
        0,
        None,
    )
    assert restored.digest == stream.manifest.whole == sha256(data)
    assert stopped is None and sum(progress) == len(data)
    assert left_beside(out) == []


def test_an_unfinished_stream_is_restored_to_what_reached_s3(uploader, tmp_path):
    data = os.urandom(3 * SIZE + 1000)
    stream = uploaded(uploader, "live.mp4", data, finish=False)
    out = tmp_path / "out.mp4"
    restored, stopped = restore(uploader.s3, stream, str(out))
    assert out.read_bytes() == data[: 3 * SIZE]
    assert (restored.size, restored.pieces, restored.digest) == (
        3 * SIZE,
        3,
        sha256(data[: 3 * SIZE]),
    )
    assert stopped is None and left_beside(out) == []


@pytest.mark.parametrize("finish", [True, False], ids=["finished", "unfinished"])
def test_a_chunk_with_other_bytes_is_refused_and_the_output_not_written(uploader, tmp_path, finish):
    data = os.urandom(3 * SIZE + 1000)
    stream = uploaded(uploader, "cam.mp4", data, finish=finish)
    key = stream.chunks[1][0]
    damage(uploader, key)
    out = tmp_path / "out.mp4"
    with pytest.raises(RestoreError) as refused:
        restore(uploader.s3, stream, str(out))
    # Caught as the chunk arrives: an unfinished stream has no whole digest to catch it by.
    assert str(refused.value).startswith("chunk 1 in S3 is not the bytes it was stored as: ")
    assert str(refused.value).endswith(f"({key})")
    assert not out.exists()
    assert left_beside(out) == ["out.mp4.part", "out.mp4.part.streamer"]


def test_a_chunk_longer_than_listed_is_refused(uploader, tmp_path):
    data = os.urandom(3 * SIZE + 1000)
    stream = uploaded(uploader, "cam.mp4", data, finish=False)
    key = stream.chunks[1][0]
    with open(object_path(uploader, key), "ab") as f:  # since the listing
        f.write(b"x")
    out = tmp_path / "out.mp4"
    with pytest.raises(RestoreError, match=f"chunk 1 in S3 is {SIZE + 1} bytes, not {SIZE}"):
        restore(uploader.s3, stream, str(out))
    assert not out.exists()


def test_a_last_chunk_longer_than_listed_writes_nothing_past_the_recording(uploader, tmp_path):
    data = os.urandom(3 * SIZE + 1000)
    stream = uploaded(uploader, "cam.mp4", data)
    key = stream.chunks[3][0]
    with open(object_path(uploader, key), "ab") as f:  # since the listing
        f.write(b"x" * SIZE)
    out = tmp_path / "out.mp4"
    with pytest.raises(RestoreError, match=f"chunk 3 in S3 is {SIZE + 1000} bytes, not 1000"):
        restore(uploader.s3, stream, str(out))
    assert (tmp_path / "out.mp4.part").stat().st_size <= len(data)


def test_an_interrupted_restore_goes_on_from_its_temporary_file_checked(uploader, tmp_path):
    data = os.urandom(3 * SIZE + 1000)
    stream = uploaded(uploader, "cam.mp4", data)
    key = stream.chunks[1][0]
    own = damage(uploader, key)
    out = tmp_path / "out.mp4"
    with pytest.raises(RestoreError):
        restore(uploader.s3, stream, str(out))
    assert left_beside(out) == ["out.mp4.part", "out.mp4.part.streamer"]
    # What it wrote before it stopped (the fetches not begun yet were let go): chunk 0,
    # whose bytes were taken before chunk 1's were found wrong, and chunk 1's other bytes.
    held = (tmp_path / f"out.mp4{PART_SUFFIX}").read_bytes()
    spans = [slice(p.offset, p.offset + p.size) for p in plan(stream).pieces]
    assert held[spans[0]] == data[spans[0]] and held[spans[1]] != data[spans[1]]
    whole = [n for n, span in enumerate(spans) if len(held) >= span.stop]
    kept = [n for n in whole if held[spans[n]] == data[spans[n]]]
    object_path(uploader, key).write_bytes(own)
    progress = []
    restored, _ = restore(uploader.s3, stream, str(out), progress=progress.append)
    assert restored.reused == len(kept), "what it wrote right, checked and kept"
    assert out.read_bytes() == data and sum(progress) == len(data)
    assert left_beside(out) == []


def test_a_temporary_file_with_some_pieces_right_and_one_wrong_is_gone_on_from(uploader, tmp_path):
    data = os.urandom(3 * SIZE + 1000)
    stream = uploaded(uploader, "live.mp4", data, finish=False)
    out = tmp_path / "out.mp4"
    fd = open_partial(str(out) + PART_SUFFIX, stream.stream_id)
    try:
        os.pwrite(fd, data[: 2 * SIZE] + os.urandom(SIZE // 2), 0)
    finally:
        os.close(fd)
    restored, _ = restore(uploader.s3, stream, str(out))
    assert restored.reused == 2, "chunks 0 and 1 checked and kept, chunk 2 fetched"
    assert out.read_bytes() == data[: 3 * SIZE] and left_beside(out) == []

    # Wrong bytes where a whole piece would be: fetched again, not kept.
    again = tmp_path / "again.mp4"
    fd = open_partial(str(again) + PART_SUFFIX, stream.stream_id)
    try:
        os.pwrite(fd, data[:SIZE] + os.urandom(2 * SIZE), 0)
    finally:
        os.close(fd)
    restored, _ = restore(uploader.s3, stream, str(again))
    assert restored.reused == 1
    assert again.read_bytes() == data[: 3 * SIZE]


def test_a_temporary_file_another_streams_restore_left_is_refused_and_left(uploader, tmp_path):
    data = os.urandom(2 * SIZE + 10)
    stream = uploaded(uploader, "cam.mp4", data)
    other = uploaded(uploader, "other.mp4", os.urandom(2 * SIZE + 10))
    out = tmp_path / "out.mp4"
    partial = f"{out}{PART_SUFFIX}"
    marker = partial + MARK_SUFFIX
    os.close(open_partial(partial, other.stream_id))
    with open(partial, "wb") as f:  # what the other stream's restore wrote: this one's bytes
        f.write(data)
    before = (Path(partial).read_bytes(), os.stat(partial).st_ino, read_mark(marker))
    with pytest.raises(InTheWay) as refused:
        restore(uploader.s3, stream, str(out))
    assert f"does not mark it as restoring {stream.stream_id}" in str(refused.value)
    assert (Path(partial).read_bytes(), os.stat(partial).st_ino, read_mark(marker)) == before
    assert not out.exists()
    # The stream it names goes on from it.
    restored, _ = restore(uploader.s3, other, str(out))
    assert restored.reused == 0 and left_beside(out) == []


def test_an_output_that_is_there_is_not_replaced_unless_forced(uploader, tmp_path):
    data = os.urandom(2 * SIZE + 10)
    stream = uploaded(uploader, "cam.mp4", data)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the user's")
    with pytest.raises(InTheWay, match=f"{out} appeared while restoring"):
        restore(uploader.s3, stream, str(out))
    assert out.read_bytes() == b"the user's"
    assert (tmp_path / f"out.mp4{PART_SUFFIX}").read_bytes() == data, "the restored file kept"
    restored, _ = restore(uploader.s3, stream, str(out), force=True)
    assert restored.reused == len(stream.manifest.chunks)
    assert out.read_bytes() == data and left_beside(out) == []


def test_to_a_pipe_no_byte_of_a_chunk_with_other_bytes_goes_out(uploader, tmp_path):
    data = os.urandom(3 * SIZE + 1000)
    stream = uploaded(uploader, "live.mp4", data, finish=False)
    with open(tmp_path / "whole", "wb") as f:
        restored, _ = restore_to_pipe(uploader.s3, stream, f.fileno())
    assert (tmp_path / "whole").read_bytes() == data[: 3 * SIZE]
    assert restored.digest == sha256(data[: 3 * SIZE])
    damage(uploader, stream.chunks[2][0])
    with (
        open(tmp_path / "cut", "wb") as f,
        pytest.raises(RestoreError, match="chunk 2 in S3 is not"),
    ):
        restore_to_pipe(uploader.s3, stream, f.fileno())
    assert (tmp_path / "cut").read_bytes() == data[: 2 * SIZE]


def test_a_recording_cut_mid_upload_is_made_playable_a_whole_one_plays_as_it_is(
    uploader, ffmpeg, tmp_path
):
    source = tmp_path / "source.mp4"
    assert record(ffmpeg, source, 3, "fragmented", live=False).wait(60) == 0
    data = source.read_bytes()
    assert len(data) > 2 * SIZE, "long enough to be cut"
    live = uploaded(uploader, "live.mp4", data, finish=False)
    exact = len(data) // SIZE * SIZE
    out = tmp_path / "playable.mp4"
    restored, _ = restore(uploader.s3, live, str(out), playable=True)
    kept = out.read_bytes()
    assert data[:exact].startswith(kept) and mp4.inspect_bytes(kept).playable
    assert (restored.size, restored.cut, restored.digest) == (
        len(kept),
        exact - len(kept),
        sha256(kept),
    )

    whole = uploaded(uploader, "whole.mp4", data)
    out = tmp_path / "whole.mp4"
    restored, _ = restore(uploader.s3, whole, str(out), playable=True)
    assert restored.cut == 0 and out.read_bytes() == data


# The temporary file and its mark


def test_a_new_temporary_file_is_marked_as_this_streams_and_this_very_file(tmp_path):
    partial = str(tmp_path / f"out.mp4{PART_SUFFIX}")
    marker = partial + MARK_SUFFIX
    assert read_mark(marker) is None
    fd = open_partial(partial, "cam-1")
    try:
        assert read_mark(marker) == mark("cam-1", os.fstat(fd)) == mark("cam-1", os.stat(partial))
    finally:
        os.close(fd)
    assert read_mark(marker).startswith(MARK) and b"cam-1" in read_mark(marker)
    assert mark("cam-1", os.stat(partial)) != mark("cam-2", os.stat(partial))
    # Opened again for the same stream: the same file.
    fd = reopen(partial, marker, "cam-1")
    try:
        assert os.fstat(fd).st_ino == os.stat(partial).st_ino
    finally:
        os.close(fd)


def test_a_temporary_file_not_marked_as_this_streams_is_refused_untouched(tmp_path):
    partial = str(tmp_path / f"out.mp4{PART_SUFFIX}")
    marker = partial + MARK_SUFFIX
    os.close(open_partial(partial, "cam-1"))
    with pytest.raises(InTheWay, match="does not mark it as restoring cam-2"):
        reopen(partial, marker, "cam-2")
    with pytest.raises(InTheWay, match="does not mark it as restoring cam-2"):
        open_partial(partial, "cam-2")
    # Another file put at its name since: its mark names the file that was there.
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"someone else's")
    os.replace(replacement, partial)
    with pytest.raises(InTheWay, match="does not mark it as restoring cam-1"):
        open_partial(partial, "cam-1")
    # No mark at all: another program's file.
    os.unlink(marker)
    with pytest.raises(InTheWay, match=f"no {marker} marks it as restore's"):
        open_partial(partial, "cam-1")
    assert Path(partial).read_bytes() == b"someone else's" and read_mark(marker) is None


def test_a_mark_left_without_its_file_is_replaced_one_not_restores_is_refused(tmp_path):
    partial = str(tmp_path / f"out.mp4{PART_SUFFIX}")
    marker = partial + MARK_SUFFIX
    os.close(open_partial(partial, "cam-1"))
    os.unlink(partial)  # removed by hand: the mark beside it is restore's, and goes
    fd = open_partial(partial, "cam-2")
    try:
        assert read_mark(marker) == mark("cam-2", os.fstat(fd))
    finally:
        os.close(fd)

    notes = str(tmp_path / f"notes.mp4{PART_SUFFIX}")
    with open(notes + MARK_SUFFIX, "wb") as f:
        f.write(b"someone's notes")
    with pytest.raises(InTheWay, match="is not restore's mark"):
        open_partial(notes, "cam-1")
    assert read_mark(notes + MARK_SUFFIX) == b"someone's notes" and not os.path.lexists(notes)

    victim = tmp_path / "victim"
    victim.write_bytes(MARK + b"cam-1\n")
    linked = str(tmp_path / f"linked.mp4{PART_SUFFIX}")
    os.symlink(victim, linked + MARK_SUFFIX)
    assert read_mark(linked + MARK_SUFFIX) == b"", "a symbolic link is no mark"
    with pytest.raises(InTheWay, match="is not restore's mark"):
        open_partial(linked, "cam-1")
    assert victim.read_bytes() == MARK + b"cam-1\n" and os.path.islink(linked + MARK_SUFFIX)


def test_settle_gives_the_output_its_name_replacing_a_file_only_when_forced(tmp_path):
    partial, out = tmp_path / "out.mp4.part", tmp_path / "out.mp4"
    partial.write_bytes(b"restored")
    settle(str(partial), str(out), force=False)
    assert out.read_bytes() == b"restored" and not partial.exists()

    partial.write_bytes(b"restored again")
    with pytest.raises(InTheWay, match=f"{out} appeared while restoring"):
        settle(str(partial), str(out), force=False)
    assert out.read_bytes() == b"restored" and partial.read_bytes() == b"restored again"
    settle(str(partial), str(out), force=True)
    assert out.read_bytes() == b"restored again" and not partial.exists()
