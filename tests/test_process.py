"""An uploader's own loop (streamer/uploader/process.py), stepped by hand in this process on
the directory-backed store (tests/uploaders.py): a stream assigned, its chunks sent and
committed in order as its file grows, finished at the supervisor's word, its metadata.json
written."""

from __future__ import annotations

import json

from streamer.messages import ChunkCommitted, StreamFinished

KiB = 1024


def test_a_growing_file_is_sent_chunk_by_chunk_and_finished_when_told(uploader):
    first = bytes(range(256)) * (2 * 256 + 100)  # two chunks of 64 KiB, and a part of one
    record = uploader.track("cam.mp4", first)
    store = uploader.store
    uploader.run_until(lambda: store.get_stream(record.stream_id).chunk_count == 2)
    assert [c.index for c in store.chunks(record.stream_id)] == [0, 1]
    assert (
        uploader.s3.get(uploader.s3.layout.chunk_key(record.stream_id, 1, 0))
        == first[64 * KiB : 128 * KiB]
    )
    # The tail waits for more bytes, or for the supervisor's word that the file is done.
    uploader.append(record, b"x" * (64 * KiB))
    uploader.run_until(lambda: store.get_stream(record.stream_id).chunk_count == 3)
    uploader.finish(record)
    uploader.run_until(lambda: uploader.of(StreamFinished))
    [finished] = uploader.of(StreamFinished)
    whole = first + b"x" * (64 * KiB)
    assert (finished.status, finished.size) == ("invalid", len(whole))  # not an MP4
    manifest = json.loads(uploader.s3.get(uploader.s3.layout.manifest_key(record.stream_id)))
    assert manifest["total_size"] == len(whole)
    assert [c["index"] for c in manifest["chunks"]] == [0, 1, 2, 3]
    key = uploader.s3.layout.chunk_key(record.stream_id, 3, 0)
    assert uploader.s3.get(key) == whole[3 * 64 * KiB :]
    committed = [m.committed_bytes for m in uploader.of(ChunkCommitted)]
    assert committed == sorted(committed) and committed[-1] == len(whole)
