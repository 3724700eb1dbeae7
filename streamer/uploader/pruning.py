"""Deleting a finished stream's chunk objects (stream.keep_chunks off), as the supervisor
asks: only once its assembled object is in S3 with the stream's size and ETag, and S3
checked its bytes against the crc64nvme of the chunks together as it joined them (and
keeps that checksum), or else its bytes read back hash to the stream's digest (its
sha256, or with integrity.file_sha256 off that crc64nvme). Every object under the
stream's chunks/ goes (older revisions too), then metadata.json says so, then the
checkpoint records it; the supervisor is always answered."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from streamer.audit import assembled_problem
from streamer.failures import classify
from streamer.logs import describe
from streamer.messages import Pruned
from streamer.policy import prunable
from streamer.publishing import Published, publish
from streamer.records import ChunkRecord, StreamRecord
from streamer.uploader.completion import bring_up, superseded_keys
from streamer.uploader.context import UploaderContext


@dataclass(frozen=True)
class Pruning:
    """What a pruning did: the record with its chunks deleted; what is left under its
    chunks/, and why; and metadata.json written (or the error that refused it)."""

    record: StreamRecord
    proven_by: str  # how the assembled object was proven
    left: list[str]
    left_because: str
    published: Published | None
    manifest_error: Exception | None


# How pruning proves the assembled object holds every byte, by what S3 did when it made it.
PROOFS = {True: ("checksum", "the crc64nvme S3 checked"), False: ("bytes", "reading it back")}


class NotProven(Exception):
    """The assembled object is not the recording: the chunks stay, for good."""


class Pruner:
    def __init__(self, ctx: UploaderContext):
        self.ctx = ctx

    def prune(self, stream_id: str) -> None:
        record = self.ctx.store.find_stream(stream_id)
        if record is None or not prunable(record):
            self.answer(stream_id, deleted=False, final=True)
            return
        # The finisher lane: reading a whole object back takes no sender from live chunks.
        self.ctx.tasks.submit(
            "finisher",
            stream_id,
            self.delete_chunks,
            record,
            self.ctx.store.chunks(stream_id),
            then=lambda future, now: self.pruned(record, future),
        )

    def delete_chunks(self, record: StreamRecord, chunks: list[ChunkRecord]) -> Pruning:
        """In a finisher thread: prove the assembled object, delete, say so."""
        s3 = self.ctx.s3
        look, proven_by = PROOFS[record.checked_by_s3]
        if problem := assembled_problem(record, s3, look=look):
            raise NotProven(problem)
        # The read back is long: the object is looked at once more just before the deletes.
        if problem := assembled_problem(record, s3):
            raise NotProven(problem)
        ours = [
            (s3.layout.chunk_key(record.stream_id, c.index, c.revision), c.etag) for c in chunks
        ]
        ours += superseded_keys(s3, record.stream_id, chunks)
        left_because = "not written by this store, or changed since"
        # Begun once one of ours is gone, by this attempt or an earlier one: a refusal
        # then leaves the rest, one before it keeps them all.
        present = s3.listing(self.chunks_prefix(record))
        begun = any(key not in present for key, _ in ours)
        for key, etag in ours:
            try:
                begun = s3.remove_if(key, etag) or begun
            except Exception as exc:
                if not begun or classify(exc) != "rejected":
                    raise  # asked again (the deletes done are not done twice), or kept
                left_because = f"S3 refused the rest of the deletes: {describe(exc)}"
                break
        left = list(s3.listing(self.chunks_prefix(record)))
        pruned = msgspec.structs.replace(record, chunks_deleted_at=datetime.now(UTC))
        try:
            published = publish(s3, pruned, chunks)
        except Exception as exc:
            return Pruning(pruned, proven_by, left, left_because, None, exc)
        return Pruning(pruned, proven_by, left, left_because, published, None)

    def chunks_prefix(self, record: StreamRecord) -> str:
        return self.ctx.s3.layout.stream_prefix(record.stream_id) + "chunks/"

    def pruned(self, record: StreamRecord, future: Future) -> None:
        stream_id = record.stream_id
        try:
            done = future.result()
            self.note(done)
        except Exception as exc:
            self.kept(record, exc)
            return
        if done.left:
            self.ctx.log.warning(
                "objects_kept", stream_id=stream_id, keys=done.left, reason=done.left_because
            )
        self.ctx.log.info(
            "chunks_deleted",
            stream_id=stream_id,
            chunks=record.chunk_count,
            size=record.total_size,
            kept=record.assembled.key,
            proven_by=done.proven_by,
        )
        self.answer(stream_id, deleted=True)

    def note(self, done: Pruning) -> None:
        """The chunks are gone: the checkpoint says so whatever became of metadata.json,
        which is brought up to date or, refused, named in the log."""
        stream_id, deleted_at = done.record.stream_id, done.record.chunks_deleted_at
        if done.published is not None and done.published.behind:
            bring_up(self.ctx, done.record, done.published)
            return
        etag = done.published.etag if done.published is not None else done.record.manifest_etag
        self.ctx.store.update_stream(
            stream_id,
            lambda r: msgspec.structs.replace(r, chunks_deleted_at=deleted_at, manifest_etag=etag),
        )
        self.ctx.store.forget_superseded(stream_id)
        if done.manifest_error is not None:
            self.ctx.log.error(
                "manifest_update_failed", stream_id=stream_id, error=describe(done.manifest_error)
            )

    def kept(self, record: StreamRecord, exc: Exception) -> None:
        """Not pruned: for good when the whole object is not the recording, or S3 refuses
        the deletes (recorded, so that no later start reads the whole object back again
        for nothing); else asked for again later."""
        final = isinstance(exc, NotProven) or classify(exc) == "rejected"
        fields = {"stream_id": record.stream_id, "error": describe(exc), "final": final}
        if final:
            self.ctx.log.error("chunks_kept", **fields)
            try:
                self.ctx.store.update_stream(
                    record.stream_id,
                    lambda r: msgspec.structs.replace(r, chunks_kept_because=describe(exc)),
                )
            except Exception as error:  # the next start asks again
                self.ctx.log.warning("chunks_kept", **fields, not_recorded=describe(error))
        else:
            self.ctx.log.warning("chunks_kept", **fields)
        self.answer(record.stream_id, deleted=False, final=final)

    def answer(self, stream_id: str, deleted: bool, final: bool = False) -> None:
        self.ctx.events.put(Pruned(stream_id=stream_id, deleted=deleted, final=final))
