"""Assembly (streamer/uploader/assembly.py): the whole recording made in S3 from its chunks,
each copied into a multipart upload as a part while the recording is live, the rest at
completion; S3 checks the whole's crc64nvme against its parts'. In this process, on the
directory-backed store (tests/uploaders.py), which checks it as S3 does."""

from __future__ import annotations

import json
import os

import pytest

from streamer.digests import CRC64NVME, of
from streamer.messages import StreamFinished

MiB = 1024 * 1024


@pytest.mark.parametrize("uploader", [{"chunk_size": 5 * MiB}], indirect=True)
def test_the_whole_object_is_joined_from_the_chunks_copied_while_live(uploader):
    data = os.urandom(11 * MiB)
    record = uploader.track("cam.mp4", data[: 10 * MiB])
    store, s3 = uploader.store, uploader.s3
    uploader.run_until(lambda: store.get_stream(record.stream_id).chunk_count == 2)

    def copied() -> list:
        return [c.part_etag for c in store.chunks(record.stream_id) if c.part_etag]

    uploader.run_until(lambda: len(copied()) == 2)  # while live, before completion
    upload = store.get_stream(record.stream_id).assembly
    assert s3.open_uploads(upload.key) == [upload.upload_id]
    uploader.append(record, data[10 * MiB :])
    uploader.finish(record)
    uploader.run_until(lambda: uploader.of(StreamFinished))
    manifest = json.loads(s3.get(s3.layout.manifest_key(record.stream_id)))
    assembled = manifest["assembled"]
    assert assembled["method"] == "compose" and assembled["etag"].endswith("-3")
    assert s3.get(assembled["key"]) == data
    assert assembled["crc64nvme"] == of(CRC64NVME, data).value, "checked by S3 as it joined"
    assert s3.open_uploads(assembled["key"]) == []
