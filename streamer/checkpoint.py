"""The checkpoint store: what is known to be in S3, durable in one LMDB environment.

Every process opens its own handle after fork (an LMDB handle must never cross a fork).
Three databases:
  streams  stream_id            -> StreamRecord
  chunks   stream_id \\0 index   -> ChunkRecord (big-endian index, so a cursor walks in order)
  paths    path                 -> stream_id of the newest generation at that path
  inodes   device:inode         -> stream_id of the newest stream made from that file
  active   stream_id            -> (nothing): the streams not finished yet
  meta     b"instance"          -> the name this host writes its keys under
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator

import lmdb
import msgspec

from streamer.records import ChunkRecord, StreamRecord, StreamState


class CheckpointError(Exception):
    pass


class UnknownStream(CheckpointError):
    pass


class ChunkOutOfOrder(CheckpointError):
    pass


class UnreadableStream(CheckpointError):
    """A stream's record does not decode (written by a newer version, or damaged): that
    stream is passed over, the others go on."""

    def __init__(self, stream_id: str, error: Exception):
        super().__init__(f"stream {stream_id}'s record cannot be read: {error}")
        self.stream_id = stream_id


class CheckpointUnwritable(CheckpointError):
    """The store cannot take a write now (no space left, an I/O error, a read-only
    remount): the write is tried again later; nothing already committed is lost."""


DATABASES = (b"streams", b"chunks", b"paths", b"inodes", b"active", b"meta")
# Less free space than this on the store's filesystem, and a failed write says it is full.
FULL_BELOW = 1024 * 1024

_encoder = msgspec.msgpack.Encoder()
_stream_decoder = msgspec.msgpack.Decoder(StreamRecord)
_chunk_decoder = msgspec.msgpack.Decoder(ChunkRecord)
# Starts that never reached S3 (an outage at every start): the oldest are let go.
MAX_UNCONFIRMED_STARTS = 64


def _chunk_key(stream_id: str, index: int) -> bytes:
    return stream_id.encode() + b"\0" + index.to_bytes(8, "big")


def _inode_key(device: int, inode: int) -> bytes:
    return f"{device}:{inode}".encode()


def _chunk_end(chunk: ChunkRecord) -> int:
    return chunk.offset + chunk.size


def _superseding(stored: bytes | None, chunk: ChunkRecord) -> ChunkRecord:
    """`chunk`, a later revision, carrying the revisions it replaces (their objects are
    this store's to delete)."""
    old = _chunk_decoder.decode(stored) if stored is not None else None
    if old is None or old.revision == chunk.revision:
        return chunk
    superseded = (*old.superseded, (old.revision, old.etag))
    return msgspec.structs.replace(chunk, superseded=superseded)


def _path_key(path: str) -> bytes:
    # Any name the filesystem allows (fsencode keeps undecodable bytes); LMDB keys stop at
    # 511 bytes, so a longer path is keyed by its digest.
    raw = os.fsencode(path)
    return raw if len(raw) <= 400 else b"sha256:" + hashlib.sha256(raw).digest()


LOCK_FILE = "daemon.lock"
LOCK_WAIT = 2.0  # seconds: a daemon exiting just now lets go of the store


class StoreLocked(OSError):
    """Another process holds the daemon's lock on the store."""

    def __init__(self, checkpoint_path: str, holder: str):
        super().__init__(
            f"another streamer daemon (pid {holder}) runs on the checkpoint store {checkpoint_path}"
        )


def lock_store(checkpoint_path: str) -> int:
    """One daemon per checkpoint store: two would take up the same files as two streams
    each (a cron `run --once` over a run still going, say). The lock goes with the
    supervisor's process; its uploaders close their copy of it. `checkpoint adopt` holds
    it too. Raises OSError where another holds it."""
    path = os.path.join(checkpoint_path, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreLocked(checkpoint_path, holder) from None
    with contextlib.suppress(OSError):  # the pid is for the message only: a full disk
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class CheckpointStore:
    """One process's handle on the shared environment. Open it after fork."""

    def __init__(self, path: str, map_size: int, readonly: bool = False):
        self.path = path
        if not readonly:
            os.makedirs(path, exist_ok=True)
        try:
            self._env = lmdb.open(
                path,
                map_size=map_size,
                max_dbs=8,
                readonly=readonly,
                lock=True,
                sync=True,
                metasync=True,
                subdir=True,
                create=not readonly,
            )
        except lmdb.Error as exc:
            raise CheckpointError(f"cannot open checkpoint store at {path}: {exc}") from None
        try:
            self._streams, self._chunks, self._paths, self._inodes, self._active, self._meta = (
                self._env.open_db(name, create=not readonly) for name in DATABASES
            )
        except lmdb.NotFoundError:
            self._env.close()
            raise CheckpointError(
                f"checkpoint store at {path} lacks databases this version needs; "
                "start `streamer run` once to add them"
            ) from None

    def close(self) -> None:
        self._env.close()

    def backup(self, destination: str) -> None:
        """A consistent copy taken in one read transaction, while writers go on: copying
        data.mdb with cp while streamer runs can catch a half-written page."""
        os.makedirs(destination, exist_ok=True)
        if os.listdir(destination):
            raise CheckpointError(f"backup destination {destination} is not empty")
        try:
            self._env.copy(destination, compact=True)
        except lmdb.Error as exc:
            raise CheckpointError(f"cannot back up to {destination}: {exc}") from None
        copy = CheckpointStore(destination, self._env.info()["map_size"])
        try:
            copy.forget_own_starts()
        finally:
            copy.close()

    def forget_own_starts(self) -> None:
        """A backup knows none of its store's starts: put back, it finds itself behind S3
        whatever the daemon did after it was taken (a clean stop or not), and runs only
        once adopted (`streamer checkpoint adopt`)."""

        def write(txn):
            txn.put(b"claim_starts", msgspec.json.encode([]), db=self._meta)
            txn.put(b"claim_confirmed", b"1", db=self._meta)
            txn.delete(b"start", db=self._meta)

        self._write(write)

    def claim_instance(self, wanted: str, default: str) -> str:
        """The instance name, fixed at first start: `wanted` (or `default`) then, and
        whatever was fixed ever after. A different `wanted` later is an error: the keys
        already in S3 would no longer be found."""

        def write(txn):
            if txn.get(b"store_id", db=self._meta) is None:
                # Its identity in the bucket: the claim on the instance name (.owner).
                txn.put(b"store_id", uuid.uuid4().hex.encode(), db=self._meta)
            stored = txn.get(b"instance", db=self._meta)
            if stored is None:
                txn.put(b"instance", (wanted or default).encode(), db=self._meta)
                return wanted or default
            if wanted and wanted != stored.decode():
                raise CheckpointError(
                    f"instance is {wanted!r} in the configuration, but this checkpoint store "
                    f"belongs to instance {stored.decode()!r}"
                )
            return stored.decode()

        return self._write(write)

    def release_instance(self) -> None:
        """Unfix the instance name: the first start, which fixed it, failed before it
        wrote anything under it (the name may have been the mistake)."""
        self._write(lambda txn: txn.delete(b"instance", db=self._meta))

    def clear_stale_readers(self) -> int:
        return self._env.reader_check()

    # Reading

    def get_stream(self, stream_id: str) -> StreamRecord:
        with self._read() as txn:
            return self._load(txn, stream_id)

    def find_stream(self, stream_id: str) -> StreamRecord | None:
        """The stream, or None if there is none by that id (an operator may forget one)."""
        with self._read() as txn:
            value = txn.get(stream_id.encode(), db=self._streams)
            return None if value is None else _decode_stream(stream_id, value)

    def stream_at(self, path: str) -> StreamRecord | None:
        with self._read() as txn:
            stream_id = txn.get(_path_key(path), db=self._paths)
            return None if stream_id is None else self._load(txn, stream_id.decode())

    def stream_with_inode(self, device: int, inode: int) -> StreamRecord | None:
        with self._read() as txn:
            stream_id = txn.get(_inode_key(device, inode), db=self._inodes)
            return None if stream_id is None else self._load(txn, stream_id.decode())

    def has_stream(self, stream_id: str) -> bool:
        with self._read() as txn:
            return txn.get(stream_id.encode(), db=self._streams) is not None

    def streams(self, state: StreamState | None = None) -> Iterator[StreamRecord]:
        with self._read() as txn:
            for key, value in txn.cursor(db=self._streams):
                record = _decode_stream(key.decode(), value)
                if state is None or record.state is state:
                    yield record

    def active_streams(self) -> tuple[list[StreamRecord], list[UnreadableStream]]:
        """The unfinished streams, and the errors of those whose records do not decode."""
        return self._readable(self._active)

    def every_stream(self) -> tuple[list[StreamRecord], list[UnreadableStream]]:
        """Every stream, and the errors of those whose records do not decode."""
        return self._readable(self._streams)

    def _readable(self, db) -> tuple[list[StreamRecord], list[UnreadableStream]]:
        records, unreadable = [], []
        with self._read() as txn:
            for key, _ in txn.cursor(db=db):
                try:
                    records.append(self._load(txn, key.decode()))
                except UnreadableStream as exc:
                    unreadable.append(exc)
        return records, unreadable

    def chunks(self, stream_id: str) -> list[ChunkRecord]:
        prefix = stream_id.encode() + b"\0"
        result = []
        with self._read() as txn:
            cursor = txn.cursor(db=self._chunks)
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    result.append(_chunk_decoder.decode(value))
        return result

    # Writing: each call is one durable transaction.

    def create_stream(self, record: StreamRecord) -> None:
        def write(txn):
            if txn.get(record.stream_id.encode(), db=self._streams) is not None:
                raise CheckpointError(f"stream {record.stream_id} exists already")
            self._save(txn, record)
            txn.put(_path_key(record.path), record.stream_id.encode(), db=self._paths)
            txn.put(
                _inode_key(record.device, record.inode), record.stream_id.encode(), db=self._inodes
            )

        self._write(write)

    def commit_chunk(
        self, stream_id: str, chunk: ChunkRecord, head: bytes | None = None
    ) -> StreamRecord:
        """Record a chunk S3 confirmed: the next in order, or a re-upload of an earlier one.
        `head` is the file's first bytes, given with chunk 0."""
        return self.commit_chunks(stream_id, [chunk], head)

    def commit_chunks(
        self, stream_id: str, chunks: list[ChunkRecord], head: bytes | None = None
    ) -> StreamRecord:
        """Record chunks S3 confirmed, in order, in one transaction: all of them or none
        (one that would leave a gap refuses the lot). `head` as for `commit_chunk`."""

        def write(txn):
            record = self._load(txn, stream_id)
            if head is not None:
                record.head = head
            for chunk in chunks:
                if chunk.index > record.chunk_count:
                    raise ChunkOutOfOrder(
                        f"{record.position}: chunk {chunk.index} would leave a gap"
                    )
                if chunk.index == record.chunk_count:
                    record.chunk_count += 1
                    record.committed_bytes = chunk.offset + chunk.size
                    record.first_upload_at = record.first_upload_at or chunk.uploaded_at
                else:
                    record.reuploaded_chunks += 1
                    if chunk.index == record.chunk_count - 1:
                        record.committed_bytes = chunk.offset + chunk.size
                record.last_upload_at = chunk.uploaded_at
                key = _chunk_key(stream_id, chunk.index)
                kept = _superseding(txn.get(key, db=self._chunks), chunk)
                txn.put(key, _encoder.encode(kept), db=self._chunks)
            self._save(txn, record)
            return record

        return self._write(write)

    def record_parts(
        self, stream_id: str, upload_id: str, parts: list[tuple[ChunkRecord, str]]
    ) -> int:
        """Note that each (chunk, part ETag) was copied into the upload as a part; a chunk
        uploaded again since, or dropped, is passed over. Returns how many were noted."""

        def write(txn):
            noted = 0
            for chunk, etag in parts:
                key = _chunk_key(stream_id, chunk.index)
                stored = txn.get(key, db=self._chunks)
                current = _chunk_decoder.decode(stored) if stored is not None else None
                if current is None or (current.revision, current.etag) != (
                    chunk.revision,
                    chunk.etag,
                ):
                    continue
                copied = msgspec.structs.replace(current, part_etag=etag, part_upload=upload_id)
                txn.put(key, _encoder.encode(copied), db=self._chunks)
                noted += 1
            return noted

        return self._write(write)

    def drop_chunks_from(self, stream_id: str, index: int) -> StreamRecord:
        """Forget chunks `index` and later: their bytes no longer exist in the file."""

        def write(txn):
            record = self._load(txn, stream_id)
            for i in range(index, record.chunk_count):
                dropped = _chunk_decoder.decode(txn.pop(_chunk_key(stream_id, i), db=self._chunks))
                record.min_revision = max(record.min_revision, dropped.revision + 1)
            if index < record.chunk_count:
                record.chunk_count = index
                last = txn.get(_chunk_key(stream_id, index - 1), db=self._chunks) if index else None
                record.committed_bytes = _chunk_end(_chunk_decoder.decode(last)) if last else 0
                self._save(txn, record)
            return record

        return self._write(write)

    def move_stream(self, stream_id: str, path: str, relative_path: str) -> StreamRecord:
        """The stream's file was renamed: same file, new path (and path below the watch
        directory)."""

        def write(txn):
            record = self._load(txn, stream_id)
            if txn.get(_path_key(record.path), db=self._paths) == stream_id.encode():
                txn.delete(_path_key(record.path), db=self._paths)
            record.path, record.relative_path = path, relative_path
            txn.put(_path_key(path), stream_id.encode(), db=self._paths)
            self._save(txn, record)
            return record

        return self._write(write)

    def forget_stream(
        self, stream_id: str, check: Callable[[StreamRecord], None] | None = None
    ) -> None:
        """Remove every trace of a stream: its file, if still there, is then a new stream.
        `check` sees the record in the same transaction, and may refuse by raising."""

        def write(txn):
            record = self._load(txn, stream_id)
            if check is not None:
                check(record)
            for i in range(record.chunk_count):
                txn.delete(_chunk_key(stream_id, i), db=self._chunks)
            for key, db in (
                (_path_key(record.path), self._paths),
                (_inode_key(record.device, record.inode), self._inodes),
            ):
                if txn.get(key, db=db) == stream_id.encode():
                    txn.delete(key, db=db)
            txn.delete(stream_id.encode(), db=self._active)
            txn.delete(stream_id.encode(), db=self._streams)

        self._write(write)

    def store_id(self) -> str:
        found = self.claimed()
        if found is None:
            raise CheckpointError("this checkpoint store has no id yet: it has never started")
        return found

    def claimed(self) -> str | None:
        """Its id, if it has claimed an instance name yet (at its first start)."""
        with self._read() as txn:
            found = txn.get(b"store_id", db=self._meta)
            return found.decode() if found is not None else None

    def begin_start(self) -> str:
        """A new start of the daemon on this store: its id, which the instance's claim in
        S3 is moved on to. Starts not yet seen to hold the claim are kept (a crash can
        come between the claim's write and its confirmation); one that does, replaces
        them all."""
        start = uuid.uuid4().hex

        def write(txn):
            starts = self._starts(txn)
            # The first is the last seen to hold the claim: never the one let go.
            starts = starts[:1] + starts[1:][-(MAX_UNCONFIRMED_STARTS - 2) :] + [start]
            txn.put(b"claim_starts", msgspec.json.encode(starts), db=self._meta)
            txn.put(b"start", start.encode(), db=self._meta)

        self._write(write)
        return start

    def claim_starts(self) -> tuple[str | None, list[str], bool]:
        """This start's id; every start whose claim in S3 is this store's own: the last
        one seen to hold it, and those begun since; and whether one was ever seen to."""
        with self._read() as txn:
            start = txn.get(b"start", db=self._meta)
            confirmed = txn.get(b"claim_confirmed", db=self._meta) is not None
            return (start.decode() if start is not None else None), self._starts(txn), confirmed

    def confirm_claim(self, start: str) -> None:
        """S3's claim holds `start`, of this store: earlier starts can no longer be. Starts
        begun since are kept (S3's claim may be moved on to one of them meanwhile, by
        another uploader); a confirmation that comes after a later start's changes
        nothing."""

        def write(txn):
            starts = self._starts(txn)
            if start not in starts:
                return
            kept = [start, *starts[starts.index(start) + 1 :]]
            txn.put(b"claim_starts", msgspec.json.encode(kept), db=self._meta)
            txn.put(b"claim_confirmed", b"1", db=self._meta)

        self._write(write)

    def _starts(self, txn) -> list[str]:
        stored = txn.get(b"claim_starts", db=self._meta)
        return msgspec.json.decode(stored, type=list[str]) if stored is not None else []

    def instance(self) -> str | None:
        with self._read() as txn:
            stored = txn.get(b"instance", db=self._meta)
            return stored.decode() if stored is not None else None

    def forget_superseded(self, stream_id: str) -> None:
        """The earlier revisions of the stream's chunks are deleted from S3."""

        def write(txn):
            for index in range(self._load(txn, stream_id).chunk_count):
                key = _chunk_key(stream_id, index)
                chunk = _chunk_decoder.decode(txn.get(key, db=self._chunks))
                if chunk.superseded:
                    cleared = msgspec.structs.replace(chunk, superseded=())
                    txn.put(key, _encoder.encode(cleared), db=self._chunks)

        self._write(write)

    def replace_stream(self, record: StreamRecord, chunks: list[ChunkRecord]) -> None:
        """Bring a stream up to its record in S3: its record and chunk table, whole."""

        def write(txn):
            stream_id = record.stream_id
            old = self._load(txn, stream_id)
            for index in range(max(old.chunk_count, len(chunks))):
                txn.delete(_chunk_key(stream_id, index), db=self._chunks)
            for chunk in chunks:
                txn.put(_chunk_key(stream_id, chunk.index), _encoder.encode(chunk), db=self._chunks)
            self._save(txn, record)

        self._write(write)

    def update_stream(
        self, stream_id: str, change: Callable[[StreamRecord], StreamRecord]
    ) -> StreamRecord:
        def write(txn):
            record = change(self._load(txn, stream_id))
            self._save(txn, record)
            return record

        return self._write(write)

    # Internals

    def _load(self, txn, stream_id: str) -> StreamRecord:
        value = txn.get(stream_id.encode(), db=self._streams)
        if value is None:
            raise UnknownStream(f"no stream {stream_id!r} in the checkpoint store")
        return _decode_stream(stream_id, value)

    def _save(self, txn, record: StreamRecord) -> None:
        key = record.stream_id.encode()
        txn.put(key, _encoder.encode(record), db=self._streams)
        if record.state is StreamState.ACTIVE:
            txn.put(key, b"", db=self._active)
        else:
            txn.delete(key, db=self._active)

    def _read(self):
        try:
            return self._env.begin()
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return self._env.begin()

    def _write(self, work):
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    return work(txn)
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size and try again.
                self._env.set_mapsize(0)
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
            except lmdb.Error as exc:
                error = f"cannot write the checkpoint store: {exc}{self._full()}"
                raise CheckpointUnwritable(error) from None

    def _full(self) -> str:
        """What a failed write may owe to a full filesystem, which LMDB does not always say:
        a write cut short by it is an I/O error to LMDB."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            return ""
        free = st.f_bavail * st.f_frsize
        return f" (its filesystem is full: {free} bytes free)" if free < FULL_BELOW else ""


def _decode_stream(stream_id: str, value: bytes) -> StreamRecord:
    try:
        return _stream_decoder.decode(value)
    except msgspec.DecodeError as exc:
        raise UnreadableStream(stream_id, exc) from None
