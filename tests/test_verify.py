"""`streamer verify`, its checks without the command: a stream uploaded and finished by an
uploader in this process, on the directory-backed store (tests/uploaders.py), compared
with S3 and with its file, in quick and full mode, as it was made and after something was
done to it: a chunk's bytes overwritten behind S3's back, a chunk or metadata.json gone,
metadata.json rewritten, the assembled object overwritten, the file's bytes changed under
the same size and mtime, the file gone or replaced, S3 away partway. The command itself
builds its ChunkStore from the configuration: tests/integration/test_cli.py runs it."""

from __future__ import annotations

import json
import os

import msgspec
import pytest
import urllib3
from dirstore import DirectoryStore
from uploaders import INSTANCE, InProcess

from streamer import digests
from streamer.bodies import InMemory
from streamer.cli.common import s3_errors
from streamer.cli.verify import Verdict, file_unchanged, manifest_problems, verify_stream
from streamer.digests import SHA256
from streamer.messages import Prune, Pruned, StreamFinished
from streamer.records import ChunkRecord, StreamRecord, StreamState

SIZE = 64 * 1024
DATA = os.urandom(3 * SIZE + 100)

both_modes = pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])


def finished(uploader: InProcess, data: bytes = DATA) -> tuple[StreamRecord, list[ChunkRecord]]:
    record = uploader.track("cam.mp4", data)
    uploader.finish(record)
    uploader.run_until(lambda: uploader.of(StreamFinished))
    return uploader.store.get_stream(record.stream_id), uploader.store.chunks(record.stream_id)


def verified(
    s3, record: StreamRecord, chunks: list[ChunkRecord], quick: bool = False
) -> tuple[Verdict, int]:
    """The verdict, and how many chunks progress was told of."""
    done = []
    verdict = verify_stream(s3, record, chunks, quick, done.append, s3_errors())
    return verdict, sum(done)


def overwritten_in_place(s3: DirectoryStore, key: str, data: bytes) -> None:
    """The object's bytes changed behind S3's back: its ETag and checksum as they were."""
    (s3.root / s3.bucket / key).write_bytes(data)


def rewritten_manifest(s3: DirectoryStore, stream_id: str, data: bytes) -> None:
    s3.put(
        s3.layout.manifest_key(stream_id),
        InMemory(data),
        digests.of(SHA256, data),
        "application/json",
    )


def changed_in_place(path: str, offset: int, data: bytes) -> None:
    """The file's bytes changed, its size and mtime as they were."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def flipped(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


@both_modes
def test_a_finished_stream_whose_objects_and_file_are_as_made_is_ok(uploader, quick):
    record, chunks = finished(uploader)
    assert len(chunks) == 4
    assert record.assembled is not None
    verdict, done = verified(uploader.s3, record, chunks, quick)
    assert verdict.problems == []
    assert verdict.error is None
    assert verdict.ok
    assert (verdict.chunks, done) == (4, 4)


def test_a_stream_still_being_written_has_no_metadata_json_to_miss(uploader):
    record = uploader.track("cam.mp4", DATA[: 3 * SIZE])
    uploader.run_until(lambda: uploader.store.get_stream(record.stream_id).chunk_count == 3)
    record = uploader.store.get_stream(record.stream_id)
    assert record.state is StreamState.ACTIVE
    assert uploader.s3.get_if_exists(uploader.s3.layout.manifest_key(record.stream_id)) is None
    verdict, _ = verified(uploader.s3, record, uploader.store.chunks(record.stream_id))
    assert verdict.ok, verdict


def test_a_chunk_overwritten_behind_s3s_back_is_found_by_reading_its_bytes(uploader):
    record, chunks = finished(uploader)
    key = uploader.s3.layout.chunk_key(record.stream_id, 1, chunks[1].revision)
    overwritten_in_place(uploader.s3, key, flipped(DATA[SIZE : 2 * SIZE]))
    verdict, done = verified(uploader.s3, record, chunks, quick=False)
    assert verdict.problems == ["chunk 1: the bytes in S3 differ from those recorded"]
    assert verdict.error is None
    assert done == 4


def test_quick_trusts_the_size_etag_and_checksum_s3_keeps_so_misses_an_overwrite(uploader):
    record, chunks = finished(uploader)
    key = uploader.s3.layout.chunk_key(record.stream_id, 1, chunks[1].revision)
    overwritten_in_place(uploader.s3, key, flipped(DATA[SIZE : 2 * SIZE]))
    verdict, _ = verified(uploader.s3, record, chunks, quick=True)
    assert verdict.ok, verdict


@both_modes
def test_a_chunk_deleted_from_s3_is_named_missing(uploader, quick):
    record, chunks = finished(uploader)
    key = uploader.s3.layout.chunk_key(record.stream_id, 2, chunks[2].revision)
    uploader.s3.remove(key)
    verdict, _ = verified(uploader.s3, record, chunks, quick)
    assert verdict.problems == [f"chunk 2 is missing from S3 ({key})"]
    assert not verdict.ok


@both_modes
def test_a_finished_stream_whose_recorded_chunks_fall_short_of_its_size_is_named(uploader, quick):
    record, chunks = finished(uploader)
    verdict, _ = verified(uploader.s3, record, chunks[:-1], quick)
    assert f"the chunks hold {3 * SIZE} bytes of {len(DATA)}" in verdict.problems


@both_modes
def test_a_finished_stream_without_its_metadata_json_is_a_problem(uploader, quick):
    record, chunks = finished(uploader)
    key = uploader.s3.layout.manifest_key(record.stream_id)
    uploader.s3.remove(key)
    verdict, _ = verified(uploader.s3, record, chunks, quick)
    assert verdict.problems == [f"metadata.json is missing from S3 ({key})"]


def test_metadata_json_as_written_at_completion_has_no_problem(uploader):
    record, chunks = finished(uploader)
    assert manifest_problems(uploader.s3, record, chunks) == []


def test_metadata_json_with_another_total_size_is_named(uploader):
    record, chunks = finished(uploader)
    key = uploader.s3.layout.manifest_key(record.stream_id)
    stored = json.loads(uploader.s3.get(key))
    stored["total_size"] += 1
    rewritten_manifest(uploader.s3, record.stream_id, json.dumps(stored).encode())
    named = [f"metadata.json says total_size is {len(DATA) + 1}, the checkpoint {len(DATA)}"]
    assert manifest_problems(uploader.s3, record, chunks) == named
    verdict, _ = verified(uploader.s3, record, chunks)
    assert verdict.problems == named


def test_metadata_json_listing_a_chunk_with_another_etag_is_named(uploader):
    record, chunks = finished(uploader)
    stored = json.loads(uploader.s3.get(uploader.s3.layout.manifest_key(record.stream_id)))
    stored["chunks"][0]["etag"] = "0" * 32
    rewritten_manifest(uploader.s3, record.stream_id, json.dumps(stored).encode())
    assert manifest_problems(uploader.s3, record, chunks) == [
        "metadata.json lists other chunks than the checkpoint records"
    ]


def test_metadata_json_that_is_not_a_streams_metadata_is_named(uploader):
    record, chunks = finished(uploader)
    rewritten_manifest(uploader.s3, record.stream_id, b'{"stream_id": "cam-1"}')
    (problem,) = manifest_problems(uploader.s3, record, chunks)
    assert problem.startswith("metadata.json is not a stream's metadata: ")
    rewritten_manifest(uploader.s3, record.stream_id, b"not json")
    (problem,) = manifest_problems(uploader.s3, record, chunks)
    assert problem.startswith("metadata.json is not a stream's metadata: ")


def test_an_assembled_object_overwritten_behind_s3s_back_is_found_in_full_mode_only(uploader):
    record, chunks = finished(uploader)
    overwritten_in_place(uploader.s3, record.assembled.key, flipped(DATA))
    full, _ = verified(uploader.s3, record, chunks, quick=False)
    assert full.problems == [
        f"the assembled object's bytes are not the stream's ({record.assembled.key})"
    ]
    quick, _ = verified(uploader.s3, record, chunks, quick=True)
    assert quick.ok, quick


@pytest.mark.parametrize("uploader", [{"keep_chunks": False}], indirect=True)
def test_a_stream_whose_chunks_were_deleted_is_verified_by_its_assembled_object(uploader):
    record, chunks = finished(uploader)
    stream_id = record.stream_id
    uploader.commands.put(Prune(stream_id=stream_id))  # as the supervisor asks
    uploader.run_until(lambda: uploader.of(Pruned))
    record = uploader.store.get_stream(stream_id)
    assert record.chunks_deleted_at is not None
    assert uploader.s3.listing(uploader.s3.layout.stream_prefix(stream_id) + "chunks/") == {}
    verdict, done = verified(uploader.s3, record, chunks)
    assert verdict.ok, verdict
    assert done == 0
    overwritten_in_place(uploader.s3, record.assembled.key, flipped(DATA))
    verdict, _ = verified(uploader.s3, record, chunks)
    assert verdict.problems == [
        f"the assembled object's bytes are not the stream's ({record.assembled.key})"
    ]


def test_the_file_as_the_stream_finished_it_is_unchanged(uploader):
    record, _ = finished(uploader)
    assert file_unchanged(record)


def test_a_file_with_another_mtime_or_gone_is_not_unchanged(uploader):
    record, _ = finished(uploader)
    st = os.stat(record.path)
    os.utime(record.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not file_unchanged(record)
    os.utime(record.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_unchanged(record)
    os.remove(record.path)
    assert not file_unchanged(record)


def test_the_file_of_a_stream_still_active_is_not_called_unchanged(uploader):
    record, _ = finished(uploader)
    assert not file_unchanged(msgspec.structs.replace(record, state=StreamState.ACTIVE))


@both_modes
def test_file_bytes_changed_under_the_same_size_and_mtime_are_named_by_chunk(uploader, quick):
    record, chunks = finished(uploader)
    changed_in_place(record.path, 2 * SIZE + 10, b"moov")
    assert file_unchanged(record)
    verdict, _ = verified(uploader.s3, record, chunks, quick)
    assert verdict.problems == ["chunk 2: the file's bytes differ from S3's"]
    assert verdict.error is None


def test_a_file_whose_chunks_match_by_crc_is_still_held_to_the_streams_sha256(uploader):
    record, chunks = finished(uploader)
    assert all(c.digest.algorithm != SHA256 for c in chunks)
    # What a CRC collision would leave: each chunk's CRC matches, the sha256 does not.
    # Quick mode, so that only the file is read; metadata.json agrees with the checkpoint.
    other = msgspec.structs.replace(record, sha256="0" * 64)
    key = uploader.s3.layout.manifest_key(record.stream_id)
    stored = json.loads(uploader.s3.get(key))
    assert stored["sha256"] == record.sha256
    stored["sha256"] = other.sha256
    rewritten_manifest(uploader.s3, record.stream_id, json.dumps(stored).encode())
    verdict, _ = verified(uploader.s3, other, chunks, quick=True)
    assert verdict.problems == ["the file's bytes are not the stream's (sha256)"]


@both_modes
def test_a_stream_whose_file_is_gone_is_checked_against_s3_alone(uploader, quick):
    record, chunks = finished(uploader)
    os.remove(record.path)
    verdict, _ = verified(uploader.s3, record, chunks, quick)
    assert verdict.ok, verdict


def test_another_file_put_at_the_streams_path_is_not_compared(uploader):
    record, chunks = finished(uploader)
    st = os.stat(record.path)
    other = record.path + ".new"
    with open(other, "wb") as f:
        f.write(flipped(DATA))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, record.path)
    assert not file_unchanged(record)
    verdict, _ = verified(uploader.s3, record, chunks)
    assert verdict.ok, verdict


class GoneAfterListing(DirectoryStore):
    """S3 that answers a listing, then drops the connection on every object asked for."""

    def away(self, *args, **kwargs):
        raise urllib3.exceptions.ProtocolError("Connection aborted.")

    stat = get = get_if_exists = read = digest_of = away


@both_modes
def test_s3_going_away_partway_leaves_the_stream_unchecked_with_no_problem_said(uploader, quick):
    record, chunks = finished(uploader)
    uploader.s3.remove(uploader.s3.layout.chunk_key(record.stream_id, 0, chunks[0].revision))
    changed_in_place(record.path, 10, b"moov")
    gone = GoneAfterListing(uploader.s3.root, prefix="rec", instance=INSTANCE)
    verdict, _ = verified(gone, record, chunks, quick)
    assert verdict.problems == []
    assert verdict.error is not None
    assert verdict.error.startswith("cannot read it from S3: ")
    assert not verdict.ok
