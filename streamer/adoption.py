"""Taking over on purpose (`streamer checkpoint adopt`): a store that is behind S3 (a
restored backup, or the store of a host gone for good, copied here) carries on where S3's
records are. Every stream it holds is brought up to its metadata.json in S3 first (a
record S3 holds further along is taken as it is; one this store holds further along is
written over S3's, conditionally); then the instance's claim is moved on to a new start
of this store, so that a daemon started from any other copy finds itself behind."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from streamer import claim, manifest
from streamer.checkpoint import CheckpointStore
from streamer.objectstore import ObjectStore
from streamer.publishing import publish
from streamer.records import StreamRecord


@dataclass
class Adopted:
    brought_up: list[str] = field(default_factory=list)  # streams taken from S3's records
    written: list[str] = field(default_factory=list)  # streams whose record S3 took
    unreadable: list[str] = field(default_factory=list)  # metadata.json that did not decode
    unchanged: int = 0
    claim: claim.Claim | None = None


def adopt(s3: ObjectStore, store: CheckpointStore) -> Adopted:
    """Reconcile every stream with S3, then take the claim. Raises claim.InstanceTaken
    where another store's claim holds the instance name."""
    done = Adopted()
    claim.check_owner(s3, store)  # before anything is written under the instance
    records, _ = store.every_stream()  # an unreadable record is reported by `status`
    for record in records:
        reconcile(s3, store, record, done)
    store.begin_start()
    done.claim = claim.hold(s3, store, take_over=True)
    return done


def reconcile(s3: ObjectStore, store: CheckpointStore, record: StreamRecord, done: Adopted) -> None:
    found = s3.read(s3.layout.manifest_key(record.stream_id))
    if found is None:
        done.unchanged += 1  # unfinished in S3 too: resumed, never written over
        return
    data, etag = found
    try:
        theirs = manifest.decode(data)
    except msgspec.DecodeError:
        done.unreadable.append(record.stream_id)  # left as it is: never written over
        return
    if not record.state.finished:
        if record.assembly is not None:  # S3's record says how it ended: the upload is done with
            s3.abort_upload(record.assembly.key, record.assembly.upload_id)
        store.replace_stream(*manifest.to_records(theirs, record, etag))
        done.brought_up.append(record.stream_id)
        return
    chunks = store.chunks(record.stream_id)
    if manifest.build(record, chunks, s3.layout) == theirs:
        store.update_stream(
            record.stream_id, lambda r: msgspec.structs.replace(r, manifest_etag=etag)
        )
        done.unchanged += 1
        return
    # Over the ETag this store last saw, not the one just read: S3's record is reconciled
    # with this store's, and a lesser one never goes over it.
    published = publish(s3, record, chunks)
    if published.behind:
        store.replace_stream(*published.records(record))
        done.brought_up.append(record.stream_id)
        return
    store.update_stream(
        record.stream_id, lambda r: msgspec.structs.replace(r, manifest_etag=published.etag)
    )
    done.written.append(record.stream_id)
