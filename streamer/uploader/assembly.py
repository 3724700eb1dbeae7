"""Assembly: the whole recording as one object in S3. While a stream is live, the copier
thread copies its committed chunks into a multipart upload, a few at a time, behind the
uploads; completion copies what is left and finishes that upload (or assembles afresh,
or streams the file where S3 cannot join the chunks)."""

from __future__ import annotations

import collections
import contextlib
import itertools
from concurrent.futures import Future

import msgspec

from streamer import metrics, mp4, naming, objectstore
from streamer.digests import Digest
from streamer.fileio import HashingReader, SourceChanged, open_regular
from streamer.logs import describe
from streamer.messages import Finish
from streamer.objectstore import ABSENT, CopiesUnchecked, PartSource, UploadGone
from streamer.policy import assembly_method, copies_ahead, upload_to_finish
from streamer.records import (
    Assembled,
    AssemblyUpload,
    ChunkRecord,
    StreamRecord,
    whole_crc64nvme,
)
from streamer.uploader.context import STEP_EVENTS, UploaderContext
from streamer.uploader.jobs import Job, JobPhase
from streamer.uploader.reports import Copied

COPY_BATCH = 4  # parts the copier copies before the loop records them


def content_type(is_mp4: bool) -> str:
    return "video/mp4" if is_mp4 else "application/octet-stream"


class Assembler:
    def __init__(self, ctx: UploaderContext):
        self.ctx = ctx
        # The whole object made for a stream whose finishing was then called off (its
        # file changed): made again over that one, which is this uploader's own.
        self.made: dict[str, str] = {}
        # The whole object proven for a stream, and what it was made from (its key, the
        # file's sha256, its chunks' ETags): a completion tried again over the same (a
        # refused metadata.json) uses it again instead of copying every byte once more.
        self.proven: dict[str, tuple[tuple, Assembled]] = {}

    def forget(self, stream_id: str) -> None:
        """The stream concluded."""
        self.made.pop(stream_id, None)
        self.proven.pop(stream_id, None)

    # While live

    def copy_ahead(self, now: float) -> None:
        """Give the copier thread its next work: a few committed chunks of one stream to
        copy into its assembly upload (or the upload to begin). Only while this uploader
        has no chunk on the wire, and one batch at a time: a copy is S3's work, and would
        slow the uploads down if it ran beside them."""
        ctx = self.ctx
        if ctx.outstanding():
            return
        if any(job.copying is not None for job in ctx.jobs.values()):
            return
        job = next((j for j in ctx.jobs.values() if self.copyable(j, now)), None)
        if job is None:
            return
        record, upload = job.record, job.record.assembly
        if upload is None:
            work = (self.begin_assembly, record)
        else:
            batch = list(itertools.islice(job.uncopied, COPY_BATCH))
            work = (self.copy_parts, record.stream_id, upload, batch)
        job.copying = ctx.submit("copier", job, *work, then=lambda f, now: self.copied(job, f, now))

    def copyable(self, job: Job, now: float) -> bool:
        if not job.uncopied or job.copy_backoff.due > now:
            return False
        if job.phase is not JobPhase.STREAMING:
            return False  # completion copies what is left, several at a time
        upload = job.record.assembly
        # Renamed since the upload began: completion assembles afresh, under the new name.
        return upload is None or upload.key == self.assembled_key(job.record)

    def begin_assembly(self, record: StreamRecord) -> AssemblyUpload:
        """In the copier thread. The content type is judged from the file's first bytes;
        should the finished file say otherwise, completion assembles afresh."""
        key = self.assembled_key(record)
        kind = content_type(mp4.inspect_bytes(record.head or b"").is_mp4)
        upload_id, checked = self.ctx.s3.begin_upload(key, kind, self.ctx.s3.checks_copies)
        return AssemblyUpload(key=key, upload_id=upload_id, content_type=kind, checked=checked)

    def copy_parts(
        self, stream_id: str, upload: AssemblyUpload, chunks: list[ChunkRecord]
    ) -> Copied:
        """In the copier thread: chunk N becomes part N + 1. An upload begun asking S3 to
        check the whole's crc64nvme that S3 will not copy into gives way to one that asks
        for none."""
        parts: list[tuple[ChunkRecord, str]] = []
        unchecked = None
        try:
            for chunk in chunks:
                source = self.part_source(stream_id, chunk, None)
                try:
                    etag = self.copy_part(upload, chunk.index + 1, source)
                except CopiesUnchecked as exc:
                    upload, unchecked = self.begin_unchecked(upload), str(exc)
                    etag = self.copy_part(upload, chunk.index + 1, source)
                parts.append((chunk, etag))
        except Exception as exc:
            return Copied(upload, parts, exc, unchecked)
        return Copied(upload, parts, None, unchecked)

    def copy_part(self, upload: AssemblyUpload, number: int, source: PartSource) -> str:
        return self.ctx.s3.copy_part(upload.key, upload.upload_id, number, source, upload.checked)

    def begin_unchecked(self, upload: AssemblyUpload) -> AssemblyUpload:
        """In the copier thread: `upload` aborted (should that fail, completion's look for
        strays aborts it), and another begun that asks S3 to check nothing."""
        with contextlib.suppress(Exception):
            self.ctx.s3.abort_upload(upload.key, upload.upload_id)
        upload_id, _ = self.ctx.s3.begin_upload(upload.key, upload.content_type)
        return msgspec.structs.replace(upload, upload_id=upload_id, checked=False)

    def copied(self, job: Job, future: Future, now: float) -> None:
        """Record what the copier thread reports; a failed copy is tried again after the
        stream's copy backoff."""
        job.copying = None
        job.wake()
        store, stream_id = self.ctx.store, job.stream_id
        try:
            report = future.result()
        except Exception as exc:
            self.copy_failed(job, "assembly_begin_failed", exc, now)
            return
        if isinstance(report, AssemblyUpload):
            job.record = store.update_stream(
                stream_id, lambda r: msgspec.structs.replace(r, assembly=report)
            )
            self.ctx.log.info("assembly_begun", **job.log_fields, key=report.key)
            return
        if report.unchecked is not None:
            job.record = store.update_stream(
                stream_id, lambda r: msgspec.structs.replace(r, assembly=report.upload)
            )
            key = report.upload.key
            self.ctx.log.info(
                "assembly_unchecked", **job.log_fields, key=key, reason=report.unchecked
            )
        store.record_parts(stream_id, report.upload.upload_id, report.parts)
        for _ in report.parts:
            job.uncopied.popleft()
        metrics.PARTS_COPIED.labels(when="live").inc(len(report.parts))
        if isinstance(report.error, UploadGone):
            self.lost_assembly(job, report.error, now)
        elif report.error is not None:
            self.copy_failed(job, "part_copy_failed", report.error, now)
        else:
            job.copy_backoff.succeeded()

    def copy_failed(self, job: Job, event: str, exc: Exception, now: float) -> None:
        events = {"transient": event, "rejected": event, "failed": STEP_EVENTS["failed"]}
        self.ctx.fail(job.copy_backoff, exc, now, events, **job.log_fields)

    def lost_assembly(self, job: Job, error: UploadGone, now: float) -> None:
        """S3 aborted the upload (MinIO expires one after a day by default): begin another,
        and copy every chunk into it."""
        self.copy_failed(job, "assembly_upload_lost", error, now)
        job.record = self.ctx.store.update_stream(
            job.stream_id, lambda r: msgspec.structs.replace(r, assembly=None)
        )
        job.uncopied = collections.deque(self.not_copied(job.record))

    def not_copied(self, record: StreamRecord) -> list[ChunkRecord]:
        """The committed chunks, of those copied ahead, not in the stream's upload yet."""
        upload_id = record.assembly.upload_id if record.assembly else None
        assemble = self.ctx.config.stream.assemble
        return [
            c
            for c in self.ctx.store.chunks(record.stream_id)
            if copies_ahead(assemble, record.chunk_size, c.index, c.size)
            and c.part_in(upload_id) is None
        ]

    def drop(self, job: Job) -> None:
        """An abandoned stream is not assembled. If S3 is away, the server's own expiry of
        stale uploads (or a lifecycle rule) removes its upload."""
        upload = job.record.assembly
        self.ctx.tasks.submit(
            "copier",
            job.stream_id,
            self.ctx.s3.abort_upload,
            upload.key,
            upload.upload_id,
            then=lambda future, now: self.dropped(future, job.log_fields),
            finish_on_stop=True,  # it is not tried again: the stream is concluded
        )

    def dropped(self, future: Future, log_fields: dict) -> None:
        if future.exception() is not None:
            self.ctx.log.warning(
                "assembly_abort_failed", **log_fields, error=describe(future.exception())
            )

    # At completion (in a finisher thread)

    def assemble(
        self,
        record: StreamRecord,
        chunks: list[ChunkRecord],
        finish: Finish,
        whole: Digest,
        kind: str,
        log_fields: dict,
    ) -> Assembled:
        """The whole recording as one object: joined in S3 from the chunks where S3 allows
        (finishing the upload the chunks were copied into while live), else streamed from
        the file (checked against `whole`, its digest, as it is read)."""
        s3 = self.ctx.s3
        key = self.assembled_key(record)
        basis = (key, whole, tuple((c.index, c.revision, c.etag) for c in chunks))
        if (reused := self.still_proven(record.stream_id, basis)) is not None:
            self.ctx.log.info("assembled_object_reused", **log_fields, key=key, etag=reused.etag)
            return reused
        # Made over nothing, or over the one this store made before (a finishing called
        # off, a retried stream).
        made = record.assembled.etag if record.assembled is not None else ABSENT
        expect = self.made.get(record.stream_id, made)
        method = assembly_method([c.size for c in chunks])
        upload = upload_to_finish(record.assembly, key, kind, method)
        if record.assembly is not None and upload is None:
            s3.abort_upload(record.assembly.key, record.assembly.upload_id)
        crc, checked = whole_crc64nvme(chunks), False
        if method == "compose":
            etag, ahead, checked = self.compose(
                record, chunks, key, kind, upload, expect, crc, log_fields
            )
            self.made[record.stream_id] = etag
        else:
            ahead = 0
            with open_regular(record.path) as f:
                reader = HashingReader(f, whole.algorithm)
                etag = s3.put_stream(key, reader, finish.size, kind, expect)
            self.made[record.stream_id] = etag
            if reader.hexdigest() != whole.value:
                raise SourceChanged(f"{record.path} changed while it was being assembled")
        self.abort_strays(key, log_fields)
        self.ctx.log.info(
            "stream_assembled",
            **log_fields,
            key=key,
            method=method,
            size=finish.size,
            parts_copied_live=ahead,
            checked_by_s3=checked,
        )
        assembled = Assembled(
            key=key,
            size=finish.size,
            etag=etag,
            method=method,
            crc64nvme=crc if checked else None,
        )
        self.proven[record.stream_id] = (basis, assembled)
        return assembled

    def still_proven(self, stream_id: str, basis: tuple) -> Assembled | None:
        """The object made from the very same before, if S3 still holds it as made."""
        proven = self.proven.get(stream_id)
        if proven is None or proven[0] != basis:
            return None
        stored = self.ctx.s3.stat(proven[1].key)
        return proven[1] if stored is not None and stored.etag == proven[1].etag else None

    def compose(
        self,
        record: StreamRecord,
        chunks: list[ChunkRecord],
        key: str,
        kind: str,
        upload: AssemblyUpload | None,
        expect: str,
        crc: str | None,
        log_fields: dict,
    ) -> tuple[str, int, bool]:
        """The object's ETag, how many of its parts were copied while live, and whether S3
        checked its bytes against `crc`, the crc64nvme of the chunks together."""
        s3, senders = self.ctx.s3, self.ctx.tasks.lane("sender")
        if upload is not None:
            parts = [self.part_source(record.stream_id, c, upload.upload_id) for c in chunks]
            ahead = sum(1 for p in parts if p.copied)
            begun = (upload.upload_id, upload.checked)
            try:
                etag, checked = objectstore.compose(
                    s3, key, parts, kind, senders, begun, expect, crc
                )
            except UploadGone as exc:
                self.ctx.log.warning("assembly_upload_lost", **log_fields, error=str(exc))
            except CopiesUnchecked as exc:  # left to abort_strays
                self.ctx.log.info("assembly_unchecked", **log_fields, key=key, reason=str(exc))
            else:
                metrics.PARTS_COPIED.labels(when="completion").inc(len(parts) - ahead)
                return etag, ahead, checked
        parts = [self.part_source(record.stream_id, c, None) for c in chunks]
        try:
            etag, checked = objectstore.compose(
                s3, key, parts, kind, senders, expect=expect, crc64nvme=crc
            )
        except CopiesUnchecked as exc:  # the uploader begins unchecked uploads from now on
            self.ctx.log.info("assembly_unchecked", **log_fields, key=key, reason=str(exc))
            etag, checked = objectstore.compose(
                s3, key, parts, kind, senders, expect=expect, crc64nvme=crc
            )
        metrics.PARTS_COPIED.labels(when="completion").inc(len(parts))
        return etag, 0, checked

    def abort_strays(self, key: str, log_fields: dict) -> None:
        """Uploads to the object begun but never recorded (a crash just after beginning
        one) would hold their parts' storage until the server expires them."""
        try:
            for upload_id in self.ctx.s3.open_uploads(key):
                self.ctx.s3.abort_upload(key, upload_id)
                self.ctx.log.info("stray_upload_aborted", **log_fields, key=key)
        except Exception as exc:
            self.ctx.log.warning("stray_upload_check_failed", **log_fields, error=describe(exc))

    def part_source(self, stream_id: str, chunk: ChunkRecord, upload_id: str | None) -> PartSource:
        key = self.ctx.s3.layout.chunk_key(stream_id, chunk.index, chunk.revision)
        return PartSource(key, chunk.size, chunk.etag, chunk.crc64nvme, chunk.part_in(upload_id))

    def assembled_key(self, record: StreamRecord) -> str:
        return self.ctx.s3.layout.assembled_key(record.stream_id, naming.object_name(record.name))
