"""The checkpoint store: what is known to be in S3, durable in one LMDB environment.

Every process opens its own handle after fork (an LMDB handle must never cross a fork).
Three databases:
  streams  stream_id            -> StreamRecord
  chunks   stream_id \\0 index   -> ChunkRecord (big-endian index, so a cursor walks in order)
  paths    path                 -> stream_id of the newest generation at that path
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated

import lmdb
import msgspec
from msgspec import Meta, Struct

UTC = Annotated[datetime, Meta(tz=True)]


class StreamState(enum.Enum):
    ACTIVE = "active"
    COMPLETE = "complete"


class ChunkRecord(Struct, frozen=True, kw_only=True):
    index: int
    offset: int
    size: int
    sha256: str
    etag: str
    uploaded_at: UTC


class StreamRecord(Struct, kw_only=True):
    stream_id: str
    path: str
    inode: int
    device: int
    chunk_size: int
    first_seen_at: UTC
    state: StreamState = StreamState.ACTIVE
    committed_bytes: int = 0
    chunk_count: int = 0
    reuploaded_chunks: int = 0
    first_upload_at: UTC | None = None
    last_upload_at: UTC | None = None
    total_size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    completed_at: UTC | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def position(self) -> Position:
        return Position(self.stream_id, self.chunk_count, self.committed_bytes)


class Position(Struct, frozen=True):
    """Where a stream's upload stands: the next chunk index and the byte offset it starts at."""

    stream_id: str
    index: int
    offset: int

    def __str__(self) -> str:
        return f"{self.stream_id}#{self.index:06d}@{self.offset}"


class CheckpointError(Exception):
    pass


class UnknownStream(CheckpointError):
    pass


class ChunkOutOfOrder(CheckpointError):
    pass


_encoder = msgspec.msgpack.Encoder()
_stream_decoder = msgspec.msgpack.Decoder(StreamRecord)
_chunk_decoder = msgspec.msgpack.Decoder(ChunkRecord)


def _chunk_key(stream_id: str, index: int) -> bytes:
    return stream_id.encode() + b"\0" + index.to_bytes(8, "big")


class CheckpointStore:
    """One process's handle on the shared environment. Open it after fork."""

    def __init__(self, path: str, map_size: int, readonly: bool = False):
        if not readonly:
            os.makedirs(path, exist_ok=True)
        try:
            self._env = lmdb.open(
                path,
                map_size=map_size,
                max_dbs=4,
                readonly=readonly,
                lock=True,
                sync=True,
                metasync=True,
                subdir=True,
                create=not readonly,
            )
        except lmdb.Error as exc:
            raise CheckpointError(f"cannot open checkpoint store at {path}: {exc}") from None
        self._streams = self._env.open_db(b"streams", create=not readonly)
        self._chunks = self._env.open_db(b"chunks", create=not readonly)
        self._paths = self._env.open_db(b"paths", create=not readonly)

    def close(self) -> None:
        self._env.close()

    def clear_stale_readers(self) -> int:
        return self._env.reader_check()

    # Reading

    def get_stream(self, stream_id: str) -> StreamRecord:
        with self._read() as txn:
            return self._load(txn, stream_id)

    def stream_at(self, path: str) -> StreamRecord | None:
        with self._read() as txn:
            stream_id = txn.get(path.encode(), db=self._paths)
            return None if stream_id is None else self._load(txn, stream_id.decode())

    def has_stream(self, stream_id: str) -> bool:
        with self._read() as txn:
            return txn.get(stream_id.encode(), db=self._streams) is not None

    def streams(self, state: StreamState | None = None) -> Iterator[StreamRecord]:
        with self._read() as txn:
            for _, value in txn.cursor(db=self._streams):
                record = _stream_decoder.decode(value)
                if state is None or record.state is state:
                    yield record

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
            if not txn.put(
                record.stream_id.encode(),
                _encoder.encode(record),
                db=self._streams,
                overwrite=False,
            ):
                raise CheckpointError(f"stream {record.stream_id} exists already")
            txn.put(record.path.encode(), record.stream_id.encode(), db=self._paths)

        self._write(write)

    def commit_chunk(self, stream_id: str, chunk: ChunkRecord) -> StreamRecord:
        """Record a chunk S3 confirmed: the next in order, or a re-upload of an earlier one."""

        def write(txn):
            record = self._load(txn, stream_id)
            if chunk.index > record.chunk_count:
                raise ChunkOutOfOrder(f"{record.position}: chunk {chunk.index} would leave a gap")
            if chunk.index == record.chunk_count:
                record.chunk_count += 1
                record.committed_bytes = chunk.offset + chunk.size
                record.first_upload_at = record.first_upload_at or chunk.uploaded_at
            else:
                record.reuploaded_chunks += 1
                if chunk.index == record.chunk_count - 1:
                    record.committed_bytes = chunk.offset + chunk.size
            record.last_upload_at = chunk.uploaded_at
            txn.put(_chunk_key(stream_id, chunk.index), _encoder.encode(chunk), db=self._chunks)
            self._save(txn, record)
            return record

        return self._write(write)

    def drop_chunks_from(self, stream_id: str, index: int) -> StreamRecord:
        """Forget chunks `index` and later: their bytes no longer exist in the file."""

        def write(txn):
            record = self._load(txn, stream_id)
            for i in range(index, record.chunk_count):
                txn.delete(_chunk_key(stream_id, i), db=self._chunks)
            if index < record.chunk_count:
                record.chunk_count = index
                record.committed_bytes = index * record.chunk_size
                self._save(txn, record)
            return record

        return self._write(write)

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
        return _stream_decoder.decode(value)

    def _save(self, txn, record: StreamRecord) -> None:
        txn.put(record.stream_id.encode(), _encoder.encode(record), db=self._streams)

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
