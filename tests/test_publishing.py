"""A stream's metadata.json, written only over what this store last saw in S3: a store
behind S3 never replaces a record further along, and is brought up to it instead; a record
of another recording is refused. On the directory-backed store (tests/dirstore.py)."""

from __future__ import annotations

import msgspec
import pytest
from dirstore import DirectoryStore
from sample_records import chunks, finished

from streamer import manifest
from streamer.policy import OtherRecording
from streamer.publishing import publish
from streamer.records import StreamState


@pytest.fixture
def s3(tmp_path):
    made = DirectoryStore(tmp_path / "s3", prefix="rec", instance="host")
    made.ensure_bucket(create=True)
    return made


def in_s3(s3: DirectoryStore, stream_id: str = "cam-1") -> manifest.Manifest:
    return manifest.decode(s3.get(s3.layout.manifest_key(stream_id)))


def test_a_record_is_written_and_then_written_over_what_this_store_saw(s3):
    partial = finished(StreamState.PARTIAL, size=100, sha256=None)
    first = publish(s3, partial, chunks(1))
    assert not first.behind and in_s3(s3) == first.manifest
    complete = finished(manifest_etag=first.etag)
    second = publish(s3, complete, chunks(3))
    assert not second.behind and in_s3(s3).status == "complete"


def test_a_store_behind_s3_never_downgrades_it_and_is_brought_up_to_it(s3):
    ahead = publish(s3, finished(), chunks(3))
    # A restored backup, which saw no metadata.json, would write the stream as partial.
    behind = publish(s3, finished(StreamState.PARTIAL, size=100, sha256=None), chunks(1))
    assert behind.behind and behind.etag == ahead.etag
    assert in_s3(s3) == ahead.manifest, "S3's record, further along, is left as it was"
    record, records = behind.records(finished(StreamState.PARTIAL, size=100, sha256=None))
    assert (record.state, record.manifest_etag, len(records)) == (
        StreamState.COMPLETE,
        ahead.etag,
        3,
    )


def test_a_record_of_another_recording_is_refused_and_left_alone(s3):
    publish(s3, finished(), chunks(3))
    before = s3.read(s3.layout.manifest_key("cam-1"))
    other = msgspec.structs.replace(finished(), sha256="cd" * 32)
    with pytest.raises(OtherRecording, match="another recording"):
        publish(s3, other, chunks(3))
    assert s3.read(s3.layout.manifest_key("cam-1")) == before
