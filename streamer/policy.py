"""Decisions, as pure functions of state and time: what to upload next, is a stream done,
which uploader owns it, how long to wait before trying again. Tested without processes."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from streamer.manifest import Manifest
from streamer.mp4 import Mp4Facts
from streamer.records import AssemblyUpload, StreamRecord, StreamState

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000


@dataclass(frozen=True)
class UploadChunk:
    index: int
    offset: int
    size: int


@dataclass(frozen=True)
class Complete:
    pass


@dataclass(frozen=True)
class Wait:
    """Nothing to do until the file changes."""


@dataclass(frozen=True)
class Pending:
    """Nothing to send until a chunk in flight comes back."""


Step = UploadChunk | Complete | Wait | Pending


def next_step(
    chunk_count: int,
    committed_bytes: int,
    chunk_size: int,
    size_on_disk: int,
    finishing: bool,
    in_flight: Collection[int] = (),
    window: int = 1,
) -> Step:
    """Full chunks go as soon as their bytes exist, up to `window` chunks past the last
    committed one at a time; the short tail only once the stream is done. Every chunk
    before the tail is full, so a chunk's offset follows from its index."""
    for ahead in range(window):
        index = chunk_count + ahead
        if index in in_flight:
            continue
        offset = committed_bytes + ahead * chunk_size
        available = size_on_disk - offset
        if available >= chunk_size:
            return UploadChunk(index, offset, chunk_size)
        if finishing and available > 0:
            return UploadChunk(index, offset, available)
        break
    if in_flight:
        return Pending()
    return Complete() if finishing else Wait()


# Coarser than any local filesystem's timestamp granularity.
SETTLED_NS = 1_000_000_000


def settled(
    read_at_ns: int | None,
    read_mtime_ns: int | None,
    final_mtime_ns: int,
    granularity_ns: int = 0,
) -> bool:
    """Are a chunk's bytes, as read at `read_at_ns` when the file's mtime was
    `read_mtime_ns`, still the file's bytes, now that its mtime is `final_mtime_ns`? Yes if
    no write came after the read: any write after it would carry a timestamp later than
    the read, so the mtime would have moved; the read must come well after the last write,
    so that a write within the timestamps' granularity cannot hide (`granularity_ns`: how
    much coarser than a second the filesystem keeps them, 2 s on FAT)."""
    if read_at_ns is None or read_mtime_ns != final_mtime_ns:
        return False
    return read_at_ns - final_mtime_ns >= SETTLED_NS + granularity_ns


def prunable(record: StreamRecord) -> bool:
    """May a stream's chunk objects go (stream.keep_chunks off)? Only once it finished
    with its whole object assembled and a digest of the whole known to prove that object
    by (its sha256, or the crc64nvme of its chunks together)."""
    return (
        record.state.finished
        and record.assembled is not None
        and record.whole is not None
        and record.chunks_deleted_at is None
        and record.chunks_kept_because is None
    )


class OtherRecording(Exception):
    """metadata.json in S3 describes another recording than this stream: never written
    over."""


def reconciled_record(ours: Manifest, theirs: Manifest) -> Manifest:
    """What a stream's metadata.json must say, given the one this store would write and
    the one S3 holds: whichever is further along (a complete recording with its sha256
    over a partial or cancelled one, more bytes over fewer), with what either learned
    after the stream ended (its file deleted, its chunks pruned). Never less than S3's.
    Raises OtherRecording where the two are not one recording."""
    if _other_recording(ours, theirs):
        raise OtherRecording(
            f"metadata.json in S3 is of another recording (stream {theirs.stream_id}, "
            f"{theirs.whole}, {theirs.total_size} bytes)"
        )
    base = theirs if _progress(theirs) > _progress(ours) else ours
    deleted_at = ours.source.deleted_at or theirs.source.deleted_at
    return msgspec.structs.replace(
        base,
        source=msgspec.structs.replace(base.source, deleted_at=deleted_at),
        chunks_deleted_at=ours.chunks_deleted_at or theirs.chunks_deleted_at,
    )


def _other_recording(ours: Manifest, theirs: Manifest) -> bool:
    """Are these two records of other bytes? By the whole file's sha256 where both took
    it; else, of two complete recordings of one size, by their crc64nvme (a partial one
    holds fewer bytes, and its CRC differs from the whole's)."""
    if theirs.stream_id != ours.stream_id:
        return True
    if ours.sha256 and theirs.sha256:
        return ours.sha256 != theirs.sha256
    complete = StreamState.COMPLETE.value
    whole = ours.status == theirs.status == complete and ours.total_size == theirs.total_size
    return bool(
        whole and ours.crc64nvme and theirs.crc64nvme and ours.crc64nvme != theirs.crc64nvme
    )


def _progress(record: Manifest) -> tuple:
    """How far along a stream's record is, in the order that outranks."""
    return (
        record.sha256 is not None,
        record.status == StreamState.COMPLETE.value,
        record.total_size,
        len(record.chunks),
        record.assembled is not None,
    )


class ClaimVerdict(enum.Enum):
    HELD = "held"  # this start holds the claim already
    MOVE_ON = "move on"  # this store's, from an earlier start: moved on to this one
    TAKEN = "taken"  # another checkpoint store's
    BEHIND = "behind"  # this store's id, moved on by a start it never made: a copy's


def claim_verdict(
    store: str | None,
    start: str | None,
    mine: str,
    this_start: str,
    own_starts: Sequence[str],
    confirmed: bool,
) -> ClaimVerdict:
    """What to do with the instance's claim in S3, by the store and start it names (None,
    None: no claim; a start of None: a claim from before starts were named), given this
    store's id, this start, the starts whose claim is this store's own, and whether this
    store has ever seen a claim of its own named by a start."""
    if store is None:
        return ClaimVerdict.MOVE_ON
    if store != mine:
        return ClaimVerdict.TAKEN
    if start == this_start:
        return ClaimVerdict.HELD
    if start in own_starts or (start is None and not confirmed):
        return ClaimVerdict.MOVE_ON
    return ClaimVerdict.BEHIND


def is_idle(changed_at: float, now: float, idle_timeout: float) -> bool:
    return now - changed_at >= idle_timeout


def changed_at_by_mtime(now: float, wall_now_ns: int, mtime_ns: int) -> float:
    """When, on the clock `now` reads, a file last changed, by its mtime (a file found at
    start has no change observed yet): a file quiet for a while is idle that much sooner.
    An mtime in the future counts as now."""
    return now - max(0, wall_now_ns - mtime_ns) / 1e9


def choose_uploader(loads: Mapping[int, int]) -> int:
    """The uploader with the fewest streams (lowest id on a tie)."""
    return min(loads, key=lambda worker_id: (loads[worker_id], worker_id))


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt))."""
    return rand() * min(cap, base * 2 ** min(attempt, 32))


# S3 error codes worth retrying at once: the server is busy, restarting or timed out, or
# the bytes were damaged on the way (S3 checks every body against its digest).
TRANSIENT_CODES = frozenset(
    {
        "XAmzContentSHA256Mismatch",
        "XAmzContentChecksumMismatch",
        "BadDigest",
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "XMinioServerNotInitialized",
        "XMinioStorageFull",
    }
)


def is_rejection(status: int, code: str | None) -> bool:
    """Did S3 refuse the request for a reason retrying soon cannot fix (credentials, access,
    a missing bucket)? Such errors are still retried, but slowly."""
    return status < 500 and code not in TRANSIENT_CODES


def retry_delay(
    attempt: int, rejected: bool, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Backoff with full jitter; a rejection waits the whole cap, never in a hot loop."""
    return cap if rejected else backoff_delay(attempt, base, cap, rand)


def stream_condition(
    failing_since: float | None, due: float, bug: bool, now: float, stuck_after: float
) -> str | None:
    """Is a stream `parked` (waiting out the backoff of a failed step, due again at
    `due`) or `stuck` (failing since longer than `stuck_after`, or for a reason no fault
    explains)? None: neither, its steps go through or are being tried again."""
    if failing_since is None:
        return None
    if bug or now - failing_since >= stuck_after:
        return "stuck"
    return "parked" if due > now else None


def oldest_uncommitted_age(
    arrivals: Sequence[tuple[int, float]], committed: int, now: float
) -> float:
    """Seconds the oldest byte on disk but not in the checkpoint has waited. `arrivals`
    are (file size, when first seen), oldest first: the byte at offset `committed` arrived
    with the first size beyond it."""
    for size, seen_at in arrivals:
        if size > committed:
            return now - seen_at
    return 0.0


def final_status(facts: Mp4Facts) -> tuple[StreamState, str | None]:
    """What a stream that ended with these bytes is: complete, partial, or invalid."""
    if not facts.is_mp4:
        return StreamState.INVALID, "not an MP4 file"
    if not facts.has_moov:
        return StreamState.PARTIAL, "no moov box: the recorder stopped before finishing the file"
    if facts.truncated:
        return StreamState.PARTIAL, "the file ends inside a box"
    if not facts.playable:
        return StreamState.PARTIAL, "no audio or video track"
    return StreamState.COMPLETE, None


def assembly_method(chunk_sizes: list[int]) -> str:
    """'compose' (server-side multipart copy of the chunks) when S3 allows it: at most
    10,000 parts, each but the last at least 5 MiB; else 'upload' (stream the file)."""
    if not chunk_sizes or len(chunk_sizes) > MAX_PARTS:
        return "upload"
    if any(size < MIN_PART_SIZE for size in chunk_sizes[:-1]):
        return "upload"
    return "compose"


def copies_ahead(assemble: bool, chunk_size: int, index: int, size: int) -> bool:
    """Is a chunk committed while its stream is live copied into the assembly upload at
    once? Yes when the stream is assembled by copy, and it is a full chunk: a part S3
    takes. (The short tail, committed at completion, is copied then.)"""
    return assemble and size == chunk_size >= MIN_PART_SIZE and index < MAX_PARTS


def upload_to_finish(
    upload: AssemblyUpload | None, key: str, content_type: str, method: str
) -> AssemblyUpload | None:
    """The assembly upload begun while the stream was live, if completion may finish it:
    the object is still to be composed, under the same name (the file was not renamed
    since) and with the content type it began with."""
    if upload is None or method != "compose":
        return None
    return upload if (upload.key, upload.content_type) == (key, content_type) else None


def retirable(state: StreamState, delete_partial: bool) -> bool:
    """May retention delete the file of a stream that finished so? Only if it is a whole
    recording (or, if the user says so, a partial one); never cancelled or invalid."""
    return state is StreamState.COMPLETE or (delete_partial and state is StreamState.PARTIAL)


def space_to_free(free: int, total: int, min_free_bytes: int, min_free_percent: float) -> int:
    """Bytes to delete to bring the free space back to both thresholds (0: none)."""
    wanted = max(min_free_bytes, math.ceil(total * min_free_percent / 100))
    return max(0, wanted - free)


def old_enough(mtime_ns: int, wall_ns: int, min_age: float) -> bool:
    """Was the file last written at least `min_age` seconds ago? A recorder that paused
    past the idle timeout may still come back to it."""
    return wall_ns - mtime_ns >= min_age * 1e9


def next_to_retire(
    candidates: Iterable[tuple[int, str]], need: int, delete_after_upload: bool
) -> tuple[str, str] | None:
    """Of (mtime_ns, stream_id) files that may be deleted, the one to delete next and why:
    the oldest, when the disk is `need` bytes short of its threshold or when every proven
    file is to go; else none."""
    oldest = min(candidates, default=None)
    if oldest is None:
        return None
    if need > 0:
        return oldest[1], "disk_pressure"
    return (oldest[1], "uploaded") if delete_after_upload else None
