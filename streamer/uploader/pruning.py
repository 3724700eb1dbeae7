"""Deleting a finished stream's chunk objects (stream.keep_chunks off), as the supervisor
asks: only once its assembled object is in S3 with the stream's size and ETag and its
bytes read back hash to the stream's sha256. Every object under the stream's chunks/
goes (older revisions too), then metadata.json says so, then the checkpoint records it;
the supervisor is always answered."""

from __future__ import annotations

from concurrent.futures import Future
from datetime import UTC, datetime

import msgspec

from streamer.audit import assembled_problem
from streamer.failures import classify
from streamer.logs import describe
from streamer.messages import Pruned
from streamer.policy import prunable
from streamer.records import ChunkRecord, StreamRecord
from streamer.uploader.completion import put_manifest
from streamer.uploader.context import Context


class NotProven(Exception):
    """The assembled object is not the recording: the chunks stay, for good."""


class Pruner:
    def __init__(self, ctx: Context):
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

    def delete_chunks(self, record: StreamRecord, chunks: list[ChunkRecord]) -> StreamRecord:
        """In a finisher thread: prove the assembled object, delete, say so."""
        s3 = self.ctx.s3
        if problem := assembled_problem(record, s3, read_back=True):
            raise NotProven(problem)
        for key in s3.listing(s3.layout.stream_prefix(record.stream_id) + "chunks/"):
            s3.remove(key)
        pruned = msgspec.structs.replace(record, chunks_deleted_at=datetime.now(UTC))
        put_manifest(s3, pruned, chunks)
        return pruned

    def pruned(self, record: StreamRecord, future: Future) -> None:
        stream_id = record.stream_id
        try:
            deleted_at = future.result().chunks_deleted_at
            self.ctx.store.update_stream(
                stream_id, lambda r: msgspec.structs.replace(r, chunks_deleted_at=deleted_at)
            )
        except Exception as exc:
            self.kept(record, exc)
            return
        self.ctx.log.info(
            "chunks_deleted",
            stream_id=stream_id,
            chunks=record.chunk_count,
            size=record.total_size,
            kept=record.assembled.key,
        )
        self.answer(stream_id, deleted=True)

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
