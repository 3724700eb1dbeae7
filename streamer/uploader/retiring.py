"""Retention's deletions, as the supervisor asks for them: a finished stream's local file
is deleted only once every byte of it is proven in S3 (streamer.retention), and the
supervisor is always answered, deleted or kept."""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from datetime import UTC, datetime

import msgspec

from streamer import metrics, retention
from streamer.checkpoint import UnknownStream
from streamer.fileio import BLIND_MIN_AGE
from streamer.logs import describe
from streamer.messages import Retired
from streamer.publishing import Published, publish
from streamer.records import ChunkRecord, StreamRecord
from streamer.uploader.completion import bring_up
from streamer.uploader.context import UploaderContext


class Retirer:
    def __init__(self, ctx: UploaderContext):
        self.ctx = ctx

    def retire(self, stream_id: str, reason: str) -> None:
        """Start deleting a finished stream's local file: a sender thread proves and
        deletes, the main loop records the outcome."""
        record = self.ctx.store.find_stream(stream_id)
        if record is None:
            gone = retention.Kept("the stream is not in the checkpoint store", final=True)
            self.keep(stream_id, "", reason, gone)
            return
        self.ctx.tasks.submit(
            "sender",
            stream_id,
            self.delete_source,
            record,
            self.ctx.store.chunks(stream_id),
            reason,
            then=lambda future, now: self.retired(record, reason, future),
        )

    def delete_source(
        self, record: StreamRecord, chunks: list[ChunkRecord], reason: str
    ) -> tuple[StreamRecord, Published | None, str | None]:
        """In a sender thread: prove, delete, and write metadata.json again, saying so.
        Also returns why retention was blind to the file (None: a lease was held)."""
        config = self.ctx.config
        blind = retention.delete_if_proven(
            record, chunks, self.ctx.s3, config.watch.directory, config.retention.delete_partial
        )
        deleted = msgspec.structs.replace(
            record, source_deleted_at=datetime.now(UTC), deleted_because=reason
        )
        try:
            return deleted, publish(self.ctx.s3, deleted, chunks), blind
        except Exception as exc:
            # The checkpoint has the deletion; `streamer streams show` tells it.
            self.ctx.log.error(
                "manifest_update_failed", stream_id=record.stream_id, error=describe(exc)
            )
        return deleted, None, blind

    def retired(self, record: StreamRecord, reason: str, future: Future) -> None:
        if future.exception() is not None:
            self.keep(record.stream_id, record.path, reason, future.exception())
        else:
            self.note_deletion(*future.result())

    def note_deletion(
        self, deleted: StreamRecord, published: Published | None, blind: str | None
    ) -> None:
        """Told and counted first: the file is gone, whatever the checkpoint store says."""
        stream_id, reason = deleted.stream_id, deleted.deleted_because
        metrics.SOURCES_DELETED.labels(reason=reason).inc()
        self.ctx.log.info(
            "source_deleted",
            stream_id=stream_id,
            path=deleted.path,
            reason=reason,
            size=deleted.total_size,
        )
        if blind is not None:
            self.ctx.log.warning(
                "source_deleted_blind",
                stream_id=stream_id,
                path=deleted.path,
                blind_because=blind,
                message="deleted without a lease: whether a process still had it open for "
                "writing could not be known; its last write was over "
                f"{BLIND_MIN_AGE / 60:g} minutes old",
            )
        self.ctx.events.put(Retired(stream_id=stream_id, deleted=True))
        with contextlib.suppress(UnknownStream):  # forgotten meanwhile: nothing to note
            if published is not None and published.behind:
                bring_up(self.ctx, deleted, published)
                return
            etag = published.etag if published is not None else deleted.manifest_etag
            self.ctx.store.update_stream(
                stream_id,
                lambda r: msgspec.structs.replace(
                    r,
                    source_deleted_at=deleted.source_deleted_at,
                    deleted_because=reason,
                    manifest_etag=etag,
                ),
            )

    def keep(self, stream_id: str, path: str, reason: str, exc: BaseException) -> None:
        if isinstance(exc, retention.Kept):
            why, final, retry_in = str(exc), exc.final, exc.retry_in
        else:
            why, final, retry_in = f"could not finish the checks: {describe(exc)}", False, 0.0
        metrics.SOURCES_KEPT.inc()
        self.ctx.log.warning(
            "source_kept", stream_id=stream_id, path=path, reason=reason, kept_because=why
        )
        self.ctx.events.put(
            Retired(
                stream_id=stream_id,
                deleted=False,
                final=final,
                kept_because=why,
                retry_in=retry_in,
            )
        )
