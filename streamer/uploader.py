"""An uploader process: owns the streams the supervisor assigns, uploads their chunks in
order, commits each to the checkpoint store, and finalises a stream when told it is idle.

It handles commands only between chunks, so a chunk in flight always ends in a
consistent state: committed, or not at all.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import urllib3
from minio.error import MinioException

from streamer import logs, manifest, metrics
from streamer.checkpoint import (
    CheckpointError,
    CheckpointStore,
    ChunkRecord,
    StreamRecord,
    StreamState,
)
from streamer.chunkstore import ChunkStore
from streamer.config import Config
from streamer.messages import (
    Assign,
    ChunkCommitted,
    Finish,
    FinishDeclined,
    Grow,
    Mailbox,
    Stop,
    StreamFinished,
)
from streamer.policy import Finalise, UploadChunk, Wait, backoff_delay, next_step

# Exit codes are a contract with the supervisor.
EXIT_OK = 0
EXIT_BOOT_ERROR = 3  # cannot start at all: restarting would only fail again

RETRY_BASE = 0.5
RETRY_CAP = 30.0
IDLE_WAIT = 1.0
PR_SET_PDEATHSIG = 1

# What a failed upload step may raise: S3 and HTTP trouble, and file trouble.
TRANSIENT = (MinioException, urllib3.exceptions.HTTPError, OSError)


class SourceChanged(Exception):
    """The file no longer holds the bytes the step was planned on."""


@dataclass
class Job:
    """One owned stream, as this uploader sees it."""

    record: StreamRecord
    finish: Finish | None = None
    waiting: bool = False  # nothing to do until the supervisor says the file changed
    probe: bool = True  # the next chunk may be in S3 already from before a restart
    attempt: int = 0
    retry_at: float = 0.0
    log_fields: dict = field(default_factory=dict)

    def wake(self) -> None:
        self.waiting = False


def main(
    worker_id: int, config: Config, commands: Mailbox, events: Mailbox, inherited_fds: list[int]
) -> None:
    """Entry point in the forked child; its exit code tells the supervisor how it ended."""
    raise SystemExit(Uploader(worker_id, config, commands, events, inherited_fds).run())


class Uploader:
    def __init__(
        self,
        worker_id: int,
        config: Config,
        commands: Mailbox,
        events: Mailbox,
        inherited_fds: list[int],
        clock=time.monotonic,
    ):
        self.worker_id = worker_id
        self.config = config
        self.commands = commands
        self.events = events
        self.inherited_fds = inherited_fds
        self.clock = clock
        self.parent_pid = os.getppid()
        self.jobs: dict[str, Job] = {}
        self.stopping = False
        self.bucket_ready = False
        self.log = logs.EventLog(f"uploader.{worker_id}")

    def run(self) -> int:
        try:
            self.init_process()
        except CheckpointError as exc:
            self.log.error("uploader_boot_failed", error=str(exc))
            return EXIT_BOOT_ERROR
        self.log.info("uploader_started", worker=self.worker_id)
        while not self.stopping:
            self.loop(self.clock())
        self.store.close()
        self.log.info("uploader_stopped", worker=self.worker_id)
        return EXIT_OK

    def init_process(self) -> None:
        # Die with the supervisor: an orphan would keep uploading streams it no longer owns.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.parent_pid:
            os._exit(EXIT_OK)
        signal.set_wakeup_fd(-1)  # the supervisor's wakeup pipe, closed just below
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the supervisor's
        signal.signal(signal.SIGTERM, self.handle_term)
        for fd in self.inherited_fds:
            os.close(fd)
        logs.configure(self.config.log.level, self.config.log.format)
        self.store = CheckpointStore(self.config.checkpoint.path, self.config.checkpoint.map_size)
        self.s3 = ChunkStore(self.config.s3)

    def handle_term(self, signum, frame) -> None:
        self.stopping = True

    def loop(self, now: float) -> None:
        job = self.next_job(now)
        self.handle_commands(timeout=0 if job else self.wait_time(now))
        if job and not self.stopping and job.record.stream_id in self.jobs:
            self.work_on(job, now)

    # Commands

    def handle_commands(self, timeout: float) -> None:
        message = self.commands.get(timeout)
        while message is not None:
            self.handle(message)
            message = self.commands.get(0)

    def handle(self, message) -> None:
        match message:
            case Assign(stream_id=stream_id):
                self.adopt(stream_id)
            case Grow(stream_id=stream_id) if stream_id in self.jobs:
                self.jobs[stream_id].wake()
            case Finish(stream_id=stream_id) if stream_id in self.jobs:
                job = self.jobs[stream_id]
                job.finish = message
                job.wake()
            case Stop():
                self.stopping = True

    def adopt(self, stream_id: str) -> None:
        record = self.store.get_stream(stream_id)
        self.jobs[stream_id] = Job(record=record, log_fields={"stream_id": stream_id})
        self.log.info("stream_adopted", stream_id=stream_id, position=str(record.position))

    # Scheduling

    def next_job(self, now: float) -> Job | None:
        """The first runnable job; it then goes to the back, so streams take turns."""
        for stream_id, job in self.jobs.items():
            if not job.waiting and job.retry_at <= now:
                self.jobs[stream_id] = self.jobs.pop(stream_id)
                return job
        return None

    def wait_time(self, now: float) -> float:
        retries = [j.retry_at - now for j in self.jobs.values() if not j.waiting]
        return max(0.0, min([IDLE_WAIT, *retries]))

    def work_on(self, job: Job, now: float) -> None:
        try:
            self.step(job)
            job.attempt = 0
        except (SourceChanged, *TRANSIENT) as exc:
            delay = backoff_delay(job.attempt, RETRY_BASE, RETRY_CAP)
            job.attempt += 1
            job.retry_at = now + delay
            metrics.UPLOAD_ERRORS.labels(kind=type(exc).__name__).inc()
            self.log.warning(
                "upload_retry",
                **job.log_fields,
                error=_describe(exc),
                attempt=job.attempt,
                delay=round(delay, 3),
            )

    def step(self, job: Job) -> None:
        if not self.bucket_ready:
            self.s3.ensure_bucket()
            self.bucket_ready = True
        record = job.record
        size = _file_size(record)
        match next_step(
            record.chunk_count,
            record.committed_bytes,
            record.chunk_size,
            size,
            finishing=job.finish is not None,
        ):
            case UploadChunk() as chunk:
                self.upload_chunk(job, chunk)
            case Finalise():
                self.finalise(job)
            case Wait():
                job.waiting = True

    # Chunks

    def upload_chunk(self, job: Job, chunk: UploadChunk) -> None:
        record = job.record
        data = _read_range(record, chunk.offset, chunk.size)
        sha256 = hashlib.sha256(data).hexdigest()
        key = self.s3.layout.chunk_key(record.stream_id, chunk.index)
        etag = self.find_in_s3(key, data, sha256) if job.probe else None
        job.probe = False
        fields = {
            **job.log_fields,
            "index": chunk.index,
            "offset": chunk.offset,
            "size": chunk.size,
        }
        if etag is not None:
            self.log.info("chunk_found_in_s3", **fields)
        else:
            started = time.perf_counter()
            etag = self.s3.put(key, data, sha256, "application/octet-stream")
            seconds = time.perf_counter() - started
            metrics.CHUNK_UPLOAD_SECONDS.observe(seconds)
            metrics.CHUNKS_UPLOADED.inc()
            metrics.BYTES_UPLOADED.inc(chunk.size)
            self.log.info("chunk_uploaded", **fields, seconds=round(seconds, 3))
        self.commit(
            job,
            ChunkRecord(
                index=chunk.index,
                offset=chunk.offset,
                size=chunk.size,
                sha256=sha256,
                etag=etag,
                uploaded_at=_utcnow(),
            ),
        )

    def find_in_s3(self, key: str, data: bytes, sha256: str) -> str | None:
        """The ETag of an object already holding exactly these bytes (a chunk whose upload
        finished just before a crash, but whose checkpoint commit did not), else None."""
        stored = self.s3.stat(key)
        if stored is not None and stored.size == len(data) and stored.sha256 == sha256:
            return stored.etag
        return None

    def commit(self, job: Job, chunk: ChunkRecord) -> None:
        with metrics.CHECKPOINT_COMMIT_SECONDS.time():
            job.record = self.store.commit_chunk(job.record.stream_id, chunk)
        self.events.put(
            ChunkCommitted(
                stream_id=job.record.stream_id,
                index=chunk.index,
                committed_bytes=job.record.committed_bytes,
            )
        )

    # Completion

    def finalise(self, job: Job) -> None:
        """Check every uploaded range against the file's final bytes, re-upload what the
        recorder rewrote, then write the manifest and mark the stream complete."""
        record, finish = job.record, job.finish
        if not self.still_idle(job, finish):
            return
        sha256 = self.reconcile(job, finish.size)
        if not self.still_idle(job, finish):
            return
        completion = {
            "state": StreamState.COMPLETE,
            "total_size": finish.size,
            "mtime_ns": finish.mtime_ns,
            "sha256": sha256,
            "completed_at": _utcnow(),
        }
        done = msgspec.structs.replace(job.record, **completion)
        chunks = self.store.chunks(record.stream_id)
        document = manifest.build(done, chunks, self.s3.layout)
        body = manifest.encode(document)
        # The manifest goes first: a stream marked complete always has its metadata.json.
        self.s3.put(
            self.s3.layout.manifest_key(record.stream_id),
            body,
            hashlib.sha256(body).hexdigest(),
            "application/json",
        )
        self.store.update_stream(
            record.stream_id, lambda r: msgspec.structs.replace(r, **completion)
        )
        del self.jobs[record.stream_id]
        metrics.STREAMS_FINISHED.labels(status=done.state.value).inc()
        self.events.put(StreamFinished(stream_id=record.stream_id, status=done.state.value))
        self.log.info(
            "stream_finished",
            **job.log_fields,
            status=done.state.value,
            size=done.total_size,
            chunks=len(chunks),
            reuploaded_chunks=done.reuploaded_chunks,
            sha256=sha256,
        )

    def still_idle(self, job: Job, finish: Finish) -> bool:
        st = os.stat(job.record.path)
        if (st.st_size, st.st_mtime_ns) == (finish.size, finish.mtime_ns):
            return True
        job.finish = None
        self.events.put(FinishDeclined(stream_id=job.record.stream_id))
        self.log.info("finish_declined", **job.log_fields, size=st.st_size)
        return False

    def reconcile(self, job: Job, size: int) -> str:
        """Make the committed chunks equal the file's `size` bytes; return the file's sha256."""
        stream_id = job.record.stream_id
        whole = hashlib.sha256()
        for chunk in self.store.chunks(stream_id):
            if chunk.offset >= size:
                job.record = self.store.drop_chunks_from(stream_id, chunk.index)
                self.log.warning(
                    "chunks_dropped", **job.log_fields, from_index=chunk.index, reason="file shrank"
                )
                break
            length = min(chunk.size, size - chunk.offset)
            data = _read_range(job.record, chunk.offset, length)
            whole.update(data)
            sha256 = hashlib.sha256(data).hexdigest()
            if sha256 != chunk.sha256 or length != chunk.size:
                self.reupload(job, chunk, data, sha256)
        return whole.hexdigest()

    def reupload(self, job: Job, old: ChunkRecord, data: bytes, sha256: str) -> None:
        key = self.s3.layout.chunk_key(job.record.stream_id, old.index)
        etag = self.s3.put(key, data, sha256, "application/octet-stream")
        metrics.BYTES_UPLOADED.inc(len(data))
        self.log.info(
            "chunk_reuploaded",
            **job.log_fields,
            index=old.index,
            offset=old.offset,
            size=len(data),
            reason="bytes changed after upload",
        )
        self.commit(
            job,
            ChunkRecord(
                index=old.index,
                offset=old.offset,
                size=len(data),
                sha256=sha256,
                etag=etag,
                uploaded_at=_utcnow(),
            ),
        )


def _file_size(record: StreamRecord) -> int:
    st = os.stat(record.path)
    if st.st_ino != record.inode:
        raise SourceChanged(f"{record.path} is now another file (inode {st.st_ino})")
    return st.st_size


def _read_range(record: StreamRecord, offset: int, size: int) -> bytes:
    fd = os.open(record.path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_ino != record.inode:
            raise SourceChanged(f"{record.path} is now another file")
        parts, done = [], 0
        while done < size:
            part = os.pread(fd, size - done, offset + done)
            if not part:
                raise SourceChanged(f"{record.path} ends before byte {offset + size}")
            parts.append(part)
            done += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"
