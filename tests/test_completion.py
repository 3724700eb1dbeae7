"""Completion (streamer/uploader/completion.py): a stream the supervisor found idle is
compared with its file, reconciled (chunks whose bytes changed after they went are sent
again, as a new revision), and concluded with its metadata.json. In this process, on the
directory-backed store (tests/uploaders.py)."""

from __future__ import annotations

import json

from uploaders import InProcess

from streamer.messages import FinishDeclined, StreamFinished

SIZE = 64 * 1024


def manifest_of(uploader: InProcess, stream_id: str) -> dict:
    return json.loads(uploader.s3.get(uploader.s3.layout.manifest_key(stream_id)))


def test_a_chunk_the_recorder_rewrote_is_sent_again_as_a_new_revision(uploader):
    data = bytearray(b"a" * (3 * SIZE))
    record = uploader.track("cam.mp4", bytes(data))
    store = uploader.store
    uploader.run_until(lambda: store.get_stream(record.stream_id).chunk_count == 3)
    with open(record.path, "r+b") as f:  # as ffmpeg rewrites a header it reserved
        f.seek(1000)
        f.write(b"moov")
    data[1000:1004] = b"moov"
    uploader.finish(record)
    uploader.run_until(lambda: uploader.of(StreamFinished))
    chunks = manifest_of(uploader, record.stream_id)["chunks"]
    assert [(c["index"], c["revision"]) for c in chunks] == [(0, 1), (1, 0), (2, 0)]
    layout = uploader.s3.layout
    assert uploader.s3.get(layout.chunk_key(record.stream_id, 0, 1)) == data[:SIZE]
    # The revision that no longer holds the file's bytes goes once metadata.json is written.
    uploader.run_until(lambda: uploader.s3.stat(layout.chunk_key(record.stream_id, 0)) is None)


def test_a_file_that_changed_since_the_supervisor_saw_it_idle_is_not_finished(uploader):
    record = uploader.track("cam.mp4", b"a" * SIZE)
    uploader.run_until(lambda: uploader.store.get_stream(record.stream_id).chunk_count == 1)
    uploader.finish(record)
    uploader.append(record, b"more")  # written after the supervisor looked
    uploader.run_until(lambda: uploader.of(FinishDeclined))
    assert not uploader.of(StreamFinished)
    assert uploader.s3.get_if_exists(uploader.s3.layout.manifest_key(record.stream_id)) is None
