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
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import urllib3
from minio.error import MinioException, S3Error

from streamer import logs, manifest, metrics, mp4, naming
from streamer.checkpoint import (
    Assembled,
    CheckpointError,
    CheckpointStore,
    ChunkRecord,
    StreamRecord,
    StreamState,
)
from streamer.chunkstore import BucketMissing, ChunkStore, NoCredentials
from streamer.config import Config
from streamer.messages import (
    Abandon,
    Assign,
    ChunkCommitted,
    ChunkUploaded,
    Finish,
    FinishDeclined,
    Grow,
    Mailbox,
    Moved,
    S3State,
    SourceRewritten,
    Stop,
    StreamFinished,
)
from streamer.policy import (
    Finalise,
    UploadChunk,
    Wait,
    assembly_method,
    final_status,
    is_rejection,
    next_step,
    retry_delay,
)
from streamer.watcher import HEAD_SIZE, Watcher

# Exit codes are a contract with the supervisor.
EXIT_OK = 0
EXIT_BOOT_ERROR = 3  # cannot start at all: restarting would only fail again

IDLE_WAIT = 1.0
PR_SET_PDEATHSIG = 1
FORK_BLOCKED_SIGNALS = {signal.SIGTERM, signal.SIGINT}

# Errors that say S3 itself (or the way to it) is in trouble, not the file.
S3_TROUBLE = (MinioException, urllib3.exceptions.HTTPError, BucketMissing, NoCredentials)
REJECTED_HINT = "check s3.access_key, s3.secret_key, s3.bucket and the bucket's policy"
UNTRUSTED_HINT = "S3's certificate is not trusted: set s3.ca_file to the CA certificate (PEM)"


class SourceChanged(Exception):
    """The file no longer holds the bytes the step was planned on."""


@dataclass
class Job:
    """One owned stream, as this uploader sees it."""

    record: StreamRecord
    finish: Finish | None = None
    waiting: bool = False  # nothing to do until the supervisor says the file changed
    probe: bool = True  # the next chunk may be in S3 already from before a restart
    # Why to stop it, and as what, once the supervisor says so (file gone, or cancelled).
    abandon: tuple[str, StreamState] | None = None
    shrank: bool = False
    attempt: int = 0
    retry_at: float = 0.0
    log_fields: dict = field(default_factory=dict)

    def wake(self) -> None:
        self.waiting = False


def main(
    worker_id: int,
    config: Config,
    commands: Mailbox,
    events: Mailbox,
    parent_pid: int,
    inherited_fds: list[int],
) -> None:
    """Entry point in the forked child; its exit code tells the supervisor how it ended."""
    uploader = Uploader(worker_id, config, commands, events, parent_pid, inherited_fds)
    raise SystemExit(uploader.run())


class Uploader:
    def __init__(
        self,
        worker_id: int,
        config: Config,
        commands: Mailbox,
        events: Mailbox,
        parent_pid: int,
        inherited_fds: list[int],
        clock=time.monotonic,
    ):
        self.worker_id = worker_id
        self.config = config
        self.commands = commands
        self.events = events
        self.inherited_fds = inherited_fds
        self.clock = clock
        self.parent_pid = parent_pid
        self.jobs: dict[str, Job] = {}
        self.stopping = False
        self.bucket_ready = False
        self.bucket_attempt = 0
        self.bucket_retry_at = 0.0
        self.s3_reachable: bool | None = None
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
        # The supervisor blocked these around the fork, so none reached its handlers here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED_SIGNALS)
        for fd in self.inherited_fds:
            os.close(fd)
        logs.configure(self.config.log.level, self.config.log.format)
        self.store = CheckpointStore(self.config.checkpoint.path, self.config.checkpoint.map_size)
        self.s3 = ChunkStore(self.config.s3, self.config.instance)

    def handle_term(self, signum, frame) -> None:
        self.stopping = True

    def loop(self, now: float) -> None:
        if not self.bucket_ready and now >= self.bucket_retry_at:
            self.check_bucket(now)
        job = self.next_job(now) if self.bucket_ready else None
        self.handle_commands(timeout=0 if job else self.wait_time(now))
        if job and not self.stopping and job.record.stream_id in self.jobs:
            self.work_on(job, now)

    def check_bucket(self, now: float) -> None:
        """S3 is asked first thing, so /readyz tells whether S3 works before any file comes."""
        try:
            self.s3.ensure_bucket(self.config.s3.create_bucket)
        except Exception as exc:
            self.bucket_attempt += 1
            rejected = _classify(exc) != "transient"
            s3 = self.config.s3
            delay = retry_delay(self.bucket_attempt, rejected, s3.retry_base, s3.retry_cap)
            self.bucket_retry_at = now + delay
            metrics.UPLOAD_ERRORS.labels(kind="rejected" if rejected else "transient").inc()
            self.s3_state(False, exc)
            event = "s3_rejected" if rejected else "s3_unreachable"
            self.log.error(
                event,
                error=_describe(exc),
                attempt=self.bucket_attempt,
                delay=round(delay, 3),
                **_hint(exc, rejected),
            )
            return
        self.bucket_ready = True
        self.s3_state(True)

    def s3_state(self, reachable: bool, exc: Exception | None = None) -> None:
        if reachable != self.s3_reachable:
            self.s3_reachable = reachable
            metrics.S3_REACHABLE.set(1 if reachable else 0)
            self.events.put(S3State(reachable=reachable, error=_describe(exc) if exc else ""))

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
            case Moved(stream_id=stream_id) if stream_id in self.jobs:
                job = self.jobs[stream_id]
                job.record = self.store.get_stream(stream_id)
                job.retry_at = 0.0
                job.wake()
            case Abandon(stream_id=stream_id, reason=reason, status=status) if (
                stream_id in self.jobs
            ):
                job = self.jobs[stream_id]
                job.abandon = (reason, StreamState(status))
                job.retry_at = 0.0
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
        if not self.bucket_ready:
            return max(0.0, min(IDLE_WAIT, self.bucket_retry_at - now))
        retries = [j.retry_at - now for j in self.jobs.values() if not j.waiting]
        return max(0.0, min([IDLE_WAIT, *retries]))

    def work_on(self, job: Job, now: float) -> None:
        try:
            self.step(job)
            job.attempt = 0
        except Exception as exc:
            self.retry_later(job, exc, now)

    def retry_later(self, job: Job, exc: Exception, now: float) -> None:
        """Every error is retried, for ever: a stream is never given up because S3 or the
        file was away. Only how soon, and how loudly, depends on the error."""
        kind = _classify(exc)
        s3 = self.config.s3
        delay = retry_delay(job.attempt, kind != "transient", s3.retry_base, s3.retry_cap)
        job.attempt += 1
        job.retry_at = now + delay
        metrics.UPLOAD_ERRORS.labels(kind=kind).inc()
        metrics.UPLOAD_RETRIES.inc()
        if isinstance(exc, S3_TROUBLE):
            self.s3_state(False, exc)
        fields = {
            **job.log_fields,
            "error": _describe(exc),
            "attempt": job.attempt,
            "delay": round(delay, 3),
        }
        if kind == "transient":
            self.log.warning("upload_retry", **fields, **_hint(exc, False))
        elif kind == "rejected":
            self.log.error("s3_rejected", **fields, **_hint(exc, True))
        else:
            # A bug, or a file we cannot handle: this stream waits, the others go on.
            self.log.error("stream_failed", **fields, traceback=traceback.format_exc(limit=5))

    def step(self, job: Job) -> None:
        if job.abandon is not None:
            self.abandon(job, *job.abandon)
            return
        record = job.record
        size = _file_size(record)
        if size < record.committed_bytes and not job.shrank:
            job.shrank = True
            self.log.warning(
                "stream_shrank", **job.log_fields, size=size, committed_bytes=record.committed_bytes
            )
            if Watcher.head_changed(record.path, record.head):
                # Not this recording any more: the supervisor ends it and starts a new one.
                self.events.put(SourceRewritten(stream_id=record.stream_id))
                job.waiting = True
                return
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
        revision = record.min_revision
        key = self.s3.layout.chunk_key(record.stream_id, chunk.index, revision)
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
        self.s3_state(True)
        self.events.put(ChunkUploaded(stream_id=record.stream_id, end=chunk.offset + chunk.size))
        self.commit(
            job,
            ChunkRecord(
                index=chunk.index,
                offset=chunk.offset,
                size=chunk.size,
                sha256=sha256,
                etag=etag,
                uploaded_at=_utcnow(),
                revision=revision,
            ),
            data,
        )

    def find_in_s3(self, key: str, data: bytes, sha256: str) -> str | None:
        """The ETag of an object already holding exactly these bytes (a chunk whose upload
        finished just before a crash, but whose checkpoint commit did not), else None."""
        stored = self.s3.stat(key)
        if stored is not None and stored.size == len(data) and stored.sha256 == sha256:
            return stored.etag
        return None

    def commit(self, job: Job, chunk: ChunkRecord, data: bytes) -> None:
        head = data[:HEAD_SIZE] if chunk.index == 0 else None
        with metrics.CHECKPOINT_COMMIT_SECONDS.time():
            job.record = self.store.commit_chunk(job.record.stream_id, chunk, head)
        self.events.put(
            ChunkCommitted(
                stream_id=job.record.stream_id, committed_bytes=job.record.committed_bytes
            )
        )

    # Completion

    def finalise(self, job: Job) -> None:
        """Check every uploaded range against the file's final bytes, re-upload what the
        recorder rewrote, assemble the whole object, then write the manifest and mark the
        stream finished. Called off if the file changes meanwhile."""
        record, finish = job.record, job.finish
        if not self.still_idle(job, finish):
            return
        sha256 = self.reconcile(job, finish.size)
        facts = mp4.inspect_file(record.path)
        if not self.still_idle(job, finish):
            return
        state, reason = final_status(facts)
        assembled = None
        if self.config.stream.assemble:
            content_type = "video/mp4" if facts.is_mp4 else "application/octet-stream"
            assembled = self.assemble(job, finish.size, sha256, content_type)
            if not self.still_idle(job, finish):
                return
        self.conclude(
            job,
            state=state,
            status_reason=reason,
            total_size=finish.size,
            mtime_ns=finish.mtime_ns,
            sha256=sha256,
            mp4=facts,
            assembled=assembled,
        )

    def abandon(self, job: Job, reason: str, state: StreamState) -> None:
        """The file is gone, or an operator cancelled the stream: what S3 has is what the
        stream is."""
        self.log.warning(
            "stream_abandoned",
            **job.log_fields,
            reason=reason,
            uploaded_bytes=job.record.committed_bytes,
        )
        self.conclude(
            job,
            state=state,
            status_reason=reason,
            total_size=job.record.committed_bytes,
        )

    def conclude(self, job: Job, **completion) -> None:
        completion["completed_at"] = _utcnow()
        stream_id = job.record.stream_id
        done = msgspec.structs.replace(job.record, **completion)
        chunks = self.store.chunks(stream_id)
        body = manifest.encode(manifest.build(done, chunks, self.s3.layout))
        # The manifest goes first: a finished stream always has its metadata.json.
        self.s3.put(
            self.s3.layout.manifest_key(stream_id),
            body,
            hashlib.sha256(body).hexdigest(),
            "application/json",
        )
        self.store.update_stream(stream_id, lambda r: msgspec.structs.replace(r, **completion))
        del self.jobs[stream_id]
        metrics.STREAMS_FINISHED.labels(status=done.state.value).inc()
        self.events.put(
            StreamFinished(
                stream_id=stream_id,
                status=done.state.value,
                size=done.total_size if done.mtime_ns is not None else -1,
                mtime_ns=done.mtime_ns if done.mtime_ns is not None else -1,
            )
        )
        self.log.info(
            "stream_finished",
            **job.log_fields,
            status=done.state.value,
            reason=done.status_reason,
            size=done.total_size,
            chunks=len(chunks),
            reuploaded_chunks=done.reuploaded_chunks,
            sha256=done.sha256,
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
            if length != chunk.size:
                self.reupload(job, chunk, data, sha256, "file shrank")
            elif sha256 != chunk.sha256:
                self.reupload(job, chunk, data, sha256, "bytes changed after upload")
        return whole.hexdigest()

    def reupload(self, job: Job, old: ChunkRecord, data: bytes, sha256: str, reason: str) -> None:
        revision = max(old.revision + 1, job.record.min_revision)
        key = self.s3.layout.chunk_key(job.record.stream_id, old.index, revision)
        etag = self.s3.put(key, data, sha256, "application/octet-stream")
        metrics.BYTES_UPLOADED.inc(len(data))
        self.log.info(
            "chunk_reuploaded",
            **job.log_fields,
            index=old.index,
            offset=old.offset,
            size=len(data),
            revision=revision,
            reason=reason,
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
                revision=revision,
                reason=reason,
            ),
            data,
        )

    def assemble(self, job: Job, size: int, sha256: str, content_type: str) -> Assembled:
        """The whole recording as one object: joined in S3 from the chunks where S3 allows,
        else streamed from the file (checked against the sha256 just computed)."""
        record = job.record
        chunks = self.store.chunks(record.stream_id)
        key = self.s3.layout.assembled_key(record.stream_id, naming.object_name(record.name))
        method = assembly_method([c.size for c in chunks])
        if method == "compose":
            sources = [
                self.s3.layout.chunk_key(record.stream_id, c.index, c.revision) for c in chunks
            ]
            etag = self.s3.compose(key, sources, sha256, content_type)
        else:
            with open(record.path, "rb") as f:
                reader = _HashingReader(f)
                etag = self.s3.put_stream(key, reader, size, sha256, content_type)
            if reader.hexdigest() != sha256:
                raise SourceChanged(f"{record.path} changed while it was being assembled")
        self.log.info("stream_assembled", **job.log_fields, key=key, method=method, size=size)
        return Assembled(key=key, size=size, etag=etag, method=method)


class _HashingReader:
    def __init__(self, f):
        self._f = f
        self._sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._sha256.update(data)
        return data

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


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


def _classify(exc: Exception) -> str:
    """'transient' (S3 or the network or the file was away), 'rejected' (S3 said no, for a
    reason that persists), or 'failed' (anything else)."""
    if isinstance(exc, S3Error):
        status = exc.response.status if exc.response is not None else 500
        return "rejected" if is_rejection(status, exc.code) else "transient"
    if isinstance(exc, BucketMissing | NoCredentials):
        return "rejected"
    if isinstance(exc, SourceChanged | MinioException | urllib3.exceptions.HTTPError | OSError):
        return "transient"
    return "failed"


def _hint(exc: Exception, rejected: bool) -> dict:
    if "certificate verify failed" in str(exc):
        return {"hint": UNTRUSTED_HINT}
    return {"hint": REJECTED_HINT} if rejected else {}


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"
