"""Every message between the supervisor and its uploaders, and the mailbox that carries them.

Each uploader has two mailboxes of its own (commands in, events out): a process killed
while writing to a pipe can only corrupt that one pipe, which dies with it.
"""

from __future__ import annotations

import multiprocessing
import select

import msgspec
from msgspec import Struct


class Message(Struct, frozen=True, tag=True):
    pass


# Supervisor -> uploader


class Assign(Message):
    """Take ownership of a stream and resume it from its checkpoint."""

    stream_id: str


class Grow(Message):
    """The file grew: at least `size` bytes now exist."""

    stream_id: str
    size: int


class Finish(Message):
    """The file has been idle with this size and mtime: finish it if it still has them."""

    stream_id: str
    size: int
    mtime_ns: int


class Moved(Message):
    """The stream's file was renamed; its record has the new path."""

    stream_id: str


class Abandon(Message):
    """Stop the stream and finish it with what S3 has, as `status`: its file is gone
    (partial), or an operator cancelled it (cancelled)."""

    stream_id: str
    reason: str
    status: str = "partial"


class Stop(Message):
    """Let the chunks in flight land, commit them, then exit."""


# Uploader -> supervisor


class ChunkUploaded(Message):
    """S3 confirmed the stream's bytes up to `end` (its checkpoint commit comes next)."""

    stream_id: str
    end: int


class ChunkCommitted(Message):
    """The checkpoint holds the stream's bytes up to `committed_bytes`."""

    stream_id: str
    committed_bytes: int


class S3State(Message):
    """Whether this uploader can reach S3 now, and the last error if it cannot; reached,
    whether the bucket is missing (what is wrong and what to do), which S3 answered."""

    reachable: bool
    error: str = ""
    bucket_missing: str = ""


class CheckpointState(Message):
    """Whether this uploader's last write to the checkpoint store succeeded, and why not."""

    writable: bool
    error: str = ""


class FinishDeclined(Message):
    """The file changed after the supervisor saw it idle; keep streaming."""

    stream_id: str


class SourceRewritten(Message):
    """The file now starts with other bytes: another recording was written over it."""

    stream_id: str


class StreamParked(Message):
    """A step of the stream failed; it is tried again in `delay` seconds. `failing_for`:
    seconds since its steps began to fail (without a success between); `heals`: the
    failure may go away by itself (S3 or the network away); `bug`: no fault explains it."""

    stream_id: str
    reason: str
    delay: float
    failing_for: float
    heals: bool
    bug: bool = False


class StreamResumed(Message):
    """A step of a parked stream succeeded again."""

    stream_id: str


class StreamFinished(Message):
    """Finished, as the file was when its size and mtime were these (-1: the file is gone)."""

    stream_id: str
    status: str
    size: int
    mtime_ns: int


class Retire(Message):
    """Delete this finished stream's local file if, and only if, it is proven in S3."""

    stream_id: str
    reason: str  # "uploaded" (retention.delete_after_upload) or "disk_pressure"


class Retired(Message):
    """What came of a Retire: the file was deleted, or kept (`kept_because` says why;
    `final`: asking again cannot change that)."""

    stream_id: str
    deleted: bool
    final: bool = False
    kept_because: str = ""
    retry_in: float = 0.0  # seconds before asking again could change that


class Prune(Message):
    """Delete this finished stream's chunk objects if, and only if, its assembled object
    is proven to hold every byte (stream.keep_chunks off)."""

    stream_id: str


class Pruned(Message):
    """What came of a Prune: `deleted` chunks, or kept (`final`: asking again cannot
    change that, e.g. the stream has no assembled object)."""

    stream_id: str
    deleted: bool
    final: bool = False


Command = Assign | Grow | Finish | Moved | Abandon | Retire | Prune | Stop
Event = (
    ChunkUploaded
    | ChunkCommitted
    | S3State
    | CheckpointState
    | FinishDeclined
    | SourceRewritten
    | StreamParked
    | StreamResumed
    | StreamFinished
    | Retired
    | Pruned
)

_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)
_event_decoder = msgspec.msgpack.Decoder(Event)


class Mailbox:
    """A one-way channel for one kind of message, between exactly two processes: a pipe,
    written straight from the calling thread (no feeder thread, so the supervisor can
    still fork replacement uploaders safely), one message per write."""

    def __init__(self, ctx: multiprocessing.context.BaseContext, decoder: msgspec.msgpack.Decoder):
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._decoder = decoder

    @classmethod
    def for_commands(cls, ctx) -> Mailbox:
        return cls(ctx, _command_decoder)

    @classmethod
    def for_events(cls, ctx) -> Mailbox:
        return cls(ctx, _event_decoder)

    def put(self, message: Message) -> None:
        self._writer.send_bytes(_encoder.encode(message))

    def put_nowait(self, message: Message) -> bool:
        """Send only if the pipe has room now (every message is far below PIPE_BUF, which a
        writable pipe always has), so a stuck reader cannot block the writer."""
        _, writable, _ = select.select([], [self.writer_fileno()], [], 0)
        if writable:
            self.put(message)
        return bool(writable)

    def writer_fileno(self) -> int:
        return self._writer.fileno()

    def get(self, timeout: float = 0.0):
        """The next message, or None if none arrives within `timeout` seconds."""
        if not self._reader.poll(timeout):
            return None
        return self._decoder.decode(self._reader.recv_bytes())

    def fileno(self) -> int:
        return self._reader.fileno()

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
