"""Retention's deletions as the supervisor asks for them (`Retire`;
streamer/uploader/retiring.py): a finished stream's local file is deleted only once every
byte of it is proven in S3, the checkpoint and metadata.json say so, and the supervisor is
always answered (`Retired`), deleted or kept, and whether asking again could change that. In
this process, on the directory-backed store (tests/uploaders.py)."""

from __future__ import annotations

import json
import os
import struct

import msgspec
from uploaders import InProcess

from streamer.config import RetentionConfig
from streamer.messages import Retire, Retired, StreamFinished
from streamer.records import StreamRecord

SIZE = 64 * 1024


def box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def mp4(payload: int, moov: bool = True) -> bytes:
    """The least MP4 streamer calls complete (a video track in a moov), or, without its
    moov, partial (the recorder stopped before writing it)."""
    ftyp = box(b"ftyp", b"isom\0\0\0\x01isom")
    hdlr = box(b"hdlr", bytes(8) + b"vide" + bytes(12) + b"video\0")
    head = ftyp + (box(b"moov", box(b"trak", box(b"mdia", hdlr))) if moov else b"")
    return head + box(b"mdat", b"\x5a" * payload)


def finished(uploader: InProcess, data: bytes, status: str = "complete") -> StreamRecord:
    record = uploader.track("cam.mp4", data)
    uploader.run_until(lambda: uploader.store.get_stream(record.stream_id).chunk_count >= 2)
    uploader.finish(record)
    uploader.run_until(lambda: uploader.of(StreamFinished))
    [done] = uploader.of(StreamFinished)
    assert done.status == status
    return uploader.store.get_stream(record.stream_id)


def retire(uploader: InProcess, stream_id: str, reason: str = "uploaded") -> Retired:
    """Ask for the deletion, and wait for the one answer."""
    before = len(uploader.of(Retired))
    uploader.commands.put(Retire(stream_id=stream_id, reason=reason))
    uploader.run_until(lambda: len(uploader.of(Retired)) > before)
    [answer] = uploader.of(Retired)[before:]
    return answer


def manifest_of(uploader: InProcess, stream_id: str) -> dict:
    return json.loads(uploader.s3.get(uploader.s3.layout.manifest_key(stream_id)))


def test_a_stream_proven_in_s3_loses_its_file_and_the_checkpoint_and_manifest_say_why(
    uploader,
):
    record = finished(uploader, mp4(3 * SIZE))
    answer = retire(uploader, record.stream_id, "disk_pressure")
    assert answer == Retired(stream_id=record.stream_id, deleted=True)
    assert not os.path.exists(record.path)
    assert os.listdir(uploader.watch) == [], "nothing left aside"
    stored = uploader.store.get_stream(record.stream_id)
    assert stored.source_deleted_at is not None and stored.deleted_because == "disk_pressure"
    written = manifest_of(uploader, record.stream_id)
    assert written["source"]["deleted_at"] is not None
    assert (
        stored.manifest_etag
        == uploader.s3.stat(uploader.s3.layout.manifest_key(record.stream_id)).etag
    ), "the checkpoint knows the metadata.json it wrote"
    again = retire(uploader, record.stream_id)
    assert (again.deleted, again.final) == (False, True)
    assert "deleted already" in again.kept_because


def test_a_file_with_a_chunk_missing_from_s3_is_kept_and_may_be_asked_about_again(uploader):
    record = finished(uploader, mp4(3 * SIZE))
    chunk = uploader.store.chunks(record.stream_id)[1]
    uploader.s3.remove(uploader.s3.layout.chunk_key(record.stream_id, 1, chunk.revision))
    answer = retire(uploader, record.stream_id)
    assert (answer.deleted, answer.final) == (False, False), "put back, it may be proven"
    assert "chunk 1" in answer.kept_because
    assert os.path.exists(record.path)
    assert uploader.store.get_stream(record.stream_id).source_deleted_at is None


def test_a_stream_not_in_the_checkpoint_store_is_answered_kept_for_good(uploader):
    answer = retire(uploader, "nowhere-1")
    assert (answer.stream_id, answer.deleted, answer.final) == ("nowhere-1", False, True)
    assert "not in the checkpoint store" in answer.kept_because


def test_a_file_that_is_not_a_whole_recording_is_kept_for_good(uploader):
    record = finished(uploader, b"not a recording" * SIZE, status="invalid")
    answer = retire(uploader, record.stream_id)
    assert (answer.deleted, answer.final) == (False, True)
    assert "finished invalid, not complete" in answer.kept_because
    assert os.path.exists(record.path)


def test_a_partial_recording_is_deleted_only_where_retention_delete_partial_says(uploader):
    record = finished(uploader, mp4(3 * SIZE, moov=False), status="partial")
    kept = retire(uploader, record.stream_id)
    assert (kept.deleted, kept.final) == (False, True) and os.path.exists(record.path)
    ctx = uploader.uploader.ctx
    ctx.config = msgspec.structs.replace(ctx.config, retention=RetentionConfig(delete_partial=True))
    assert retire(uploader, record.stream_id).deleted
    assert not os.path.exists(record.path)


def test_a_file_written_again_after_it_finished_is_kept_for_good(uploader):
    record = finished(uploader, mp4(3 * SIZE))
    with open(record.path, "ab") as f:
        f.write(b"more")
    answer = retire(uploader, record.stream_id)
    assert (answer.deleted, answer.final) == (False, True)
    assert "changed after it was uploaded" in answer.kept_because
    assert os.path.getsize(record.path) == record.total_size + 4


def test_checks_that_s3_broke_off_keep_the_file_and_may_be_asked_again(uploader, monkeypatch):
    record = finished(uploader, mp4(3 * SIZE))

    def cut(*args, **kwargs):
        raise ConnectionResetError("cut")

    monkeypatch.setattr(uploader.s3, "get_if_exists", cut)  # metadata.json's read-back
    answer = retire(uploader, record.stream_id)
    assert (answer.deleted, answer.final, answer.retry_in) == (False, False, 0.0)
    assert answer.kept_because.startswith("could not finish the checks: ")
    assert "cut" in answer.kept_because and os.path.exists(record.path)


def test_a_deletion_whose_manifest_could_not_be_rewritten_is_still_told_and_recorded(
    uploader, monkeypatch
):
    record = finished(uploader, mp4(3 * SIZE))
    etag = uploader.store.get_stream(record.stream_id).manifest_etag

    def refused(*args, **kwargs):
        raise ConnectionResetError("cut")

    monkeypatch.setattr(uploader.s3, "put", refused)
    assert retire(uploader, record.stream_id).deleted
    assert not os.path.exists(record.path)
    stored = uploader.store.get_stream(record.stream_id)
    assert stored.deleted_because == "uploaded" and stored.source_deleted_at is not None
    assert stored.manifest_etag == etag, "the metadata.json in S3 is still the one before"
    assert manifest_of(uploader, record.stream_id)["source"]["deleted_at"] is None
