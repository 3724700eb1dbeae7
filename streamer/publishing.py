"""A stream's metadata.json, S3's record of it: written only over what this store last
saw there (none, or the ETag it recorded), so that a store that is behind S3 (a restored
backup, a copy) never replaces a record that is further along. When S3 holds another
than the one expected, it is read and the two reconciled (`policy.reconciled_record`):
the result is written over what was read, or, where S3's is already it, left alone; the
store is brought up to whatever S3 ends up holding."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from streamer import digests, manifest
from streamer.bodies import InMemory
from streamer.digests import SHA256
from streamer.manifest import Manifest
from streamer.objectstore import ABSENT, ObjectStore, Taken
from streamer.policy import OtherRecording, reconciled_record
from streamer.records import ChunkRecord, StreamRecord

ATTEMPTS = 5  # writers racing for one metadata.json: more is a fault, not a race


@dataclass(frozen=True)
class Published:
    """What S3's metadata.json holds now, and its ETag; `behind`: not what this store
    would have written, so the store is to be brought up to it."""

    manifest: Manifest
    etag: str
    behind: bool

    def records(self, record: StreamRecord) -> tuple[StreamRecord, list[ChunkRecord]]:
        """The stream as S3's record says, over the store's `record`."""
        return manifest.to_records(self.manifest, record, self.etag)


def publish(s3: ObjectStore, record: StreamRecord, chunks: list[ChunkRecord]) -> Published:
    """Write the stream's metadata.json as `record` and `chunks` say, unless S3 holds a
    record further along. Raises OtherRecording where S3's is of another recording (or
    cannot be read), Taken where writers keep racing."""
    ours = manifest.build(record, chunks, s3.layout)
    key = s3.layout.manifest_key(record.stream_id)
    expect = record.manifest_etag if record.manifest_etag is not None else ABSENT
    target = ours
    for _ in range(ATTEMPTS):
        body = manifest.encode(target)
        try:
            etag = s3.put(key, InMemory(body), digests.of(SHA256, body), "application/json", expect)
            return Published(target, etag, behind=target != ours)
        except Taken:
            found = s3.read(key)
        if found is None:
            expect = ABSENT  # deleted meanwhile: nothing to reconcile with
            continue
        data, expect = found
        try:
            theirs = manifest.decode(data)
        except msgspec.DecodeError as exc:
            raise OtherRecording(f"metadata.json in S3 cannot be read ({exc})") from None
        target = reconciled_record(ours, theirs)
        if target == theirs:
            return Published(theirs, expect, behind=theirs != ours)
    raise Taken(key)
