import hashlib
import threading
from datetime import UTC, datetime

import msgspec
import pytest

from streamer.bandwidth import TokenBucket
from streamer.buffers import BufferPool
from streamer.config import Config
from streamer.digests import CRC64NVME, of
from streamer.messages import Finish
from streamer.naming import slug, stream_id_for
from streamer.policy import (
    Complete,
    Pending,
    UploadChunk,
    Wait,
    backoff_delay,
    changed_at_by_mtime,
    choose_uploader,
    copies_ahead,
    is_idle,
    is_rejection,
    next_step,
    next_to_retire,
    old_enough,
    retirable,
    settled,
    space_to_free,
    upload_to_finish,
)
from streamer.records import AssemblyUpload, ChunkRecord, StreamState
from streamer.supervisor.daemon import TICK, Supervisor
from streamer.uploader.file_sha256 import PrefixHash
from streamer.uploader.reports import Survey
from streamer.uploader.survey import still_holds

CS = 100


@pytest.mark.parametrize(
    ("chunks", "committed", "size", "finishing", "expected"),
    [
        (0, 0, 0, False, Wait()),
        (0, 0, 99, False, Wait()),
        (0, 0, 100, False, UploadChunk(0, 0, 100)),
        (0, 0, 250, False, UploadChunk(0, 0, 100)),
        (2, 200, 250, False, Wait()),
        (2, 200, 250, True, UploadChunk(2, 200, 50)),
        (2, 200, 350, True, UploadChunk(2, 200, 100)),
        (3, 250, 250, True, Complete()),
        (0, 0, 0, True, Complete()),
        (3, 300, 250, True, Complete()),  # shrank: completion reconciles
    ],
)
def test_next_step(chunks, committed, size, finishing, expected):
    assert next_step(chunks, committed, CS, size, finishing) == expected


@pytest.mark.parametrize(
    ("chunks", "committed", "size", "finishing", "in_flight", "expected"),
    [
        (0, 0, 350, False, {0}, UploadChunk(1, 100, 100)),
        (0, 0, 350, False, {0, 1}, UploadChunk(2, 200, 100)),
        (0, 0, 350, False, {0, 1, 2}, Pending()),  # the window is full
        (0, 0, 500, False, {1}, UploadChunk(0, 0, 100)),  # a failed chunk goes again first
        (0, 0, 150, False, {0}, Pending()),  # chunk 1 is not all there yet
        (0, 0, 150, True, {0}, UploadChunk(1, 100, 50)),  # the tail, once done
        (2, 200, 200, True, {}, Complete()),
        (2, 200, 250, False, {}, Wait()),
    ],
)
def test_next_step_with_a_window_of_three(chunks, committed, size, finishing, in_flight, expected):
    assert next_step(chunks, committed, CS, size, finishing, in_flight, window=3) == expected


def test_is_idle():
    assert not is_idle(changed_at=10.0, now=39.9, idle_timeout=30)
    assert is_idle(changed_at=10.0, now=40.0, idle_timeout=30)


def test_choose_uploader_prefers_the_least_loaded_then_the_lowest_id():
    assert choose_uploader({0: 3, 1: 1, 2: 1}) == 1
    assert choose_uploader({0: 0}) == 0


def test_backoff_grows_to_its_cap_with_full_jitter():
    assert backoff_delay(0, 0.5, 30, rand=lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 30, rand=lambda: 1.0) == 4.0
    assert backoff_delay(50, 0.5, 30, rand=lambda: 1.0) == 30
    assert backoff_delay(3, 0.5, 30, rand=lambda: 0.0) == 0.0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cam1.mp4", "cam1"),
        ("Front Door (2).MP4", "Front_Door_2"),
        ("café.mp4", "cafe"),
        ("../../etc/passwd.mp4", "etc_passwd"),
        (".hidden.mp4", "hidden"),
        ("录像.mp4", "stream"),
        ("a\nb.mp4", "a_b"),
        ("x" * 300 + ".mp4", "x" * 80),
    ],
)
def test_slug_is_key_safe(name, expected):
    assert slug(name) == expected


def test_stream_ids_are_readable_and_unique_per_generation():
    seen = datetime(2026, 11, 25, 3, 4, 5, tzinfo=UTC)
    taken = {"cam-20261125T030405Z", "cam-20261125T030405Z-2"}
    assert stream_id_for("cam.mp4", seen, lambda s: False) == "cam-20261125T030405Z"
    assert stream_id_for("cam.mp4", seen, taken.__contains__) == "cam-20261125T030405Z-3"


S = 1_000_000_000


@pytest.mark.parametrize(
    ("read_at", "read_mtime", "final_mtime", "expected"),
    [
        (100 * S, 90 * S, 90 * S, True),  # read well after the last write, none since
        (100 * S, 90 * S, 95 * S, False),  # written after the read
        (int(90.5 * S), 90 * S, 90 * S, False),  # read too soon after a write to be sure
        (None, None, 90 * S, False),  # recorded before reads were timed: read it again
    ],
)
def test_a_chunk_is_settled_only_if_read_well_after_the_last_write(
    read_at, read_mtime, final_mtime, expected
):
    assert settled(read_at, read_mtime, final_mtime) is expected


@pytest.mark.parametrize(
    ("read_after", "expected"),
    [(1.5, False), (2.9, False), (3.0, True)],
)
def test_on_fat_a_chunk_is_settled_only_past_its_2_s_timestamps(read_after, expected):
    """FAT keeps mtimes to 2 s: a write 1.9 s after the last one may leave the mtime as
    it was, so a read must come a second past the granularity."""
    mtime = 90 * S
    assert settled(mtime + int(read_after * S), mtime, mtime, 2 * S) is expected


SECOND = 1_000_000_000


def fed(prefix: PrefixHash, index: int, offset: int, part: bytes) -> str:
    """Feed chunk `index` as a sender thread does, in its turn; return its crc64nvme."""
    whole = prefix.take_turn(index, offset)
    whole.update(part)
    crc = of(CRC64NVME, part).value
    prefix.fed(index, len(part), crc)
    return crc


def test_the_prefix_hash_is_fed_in_turn_and_holds_for_the_digests_it_was_fed():
    data = bytes(range(256)) * 40
    parts = [(0, 0, data[:4000]), (1, 4000, data[4000:8000]), (2, 8000, data[8000:])]
    prefix = PrefixHash()
    order, crcs = [], {}

    def send(index: int, offset: int, part: bytes) -> None:
        crcs[offset] = fed(prefix, index, offset, part)
        order.append(offset)

    later = [threading.Thread(target=send, args=part) for part in reversed(parts[1:])]
    for thread in later:
        thread.start()
    send(*parts[0])
    for thread in later:
        thread.join()
    assert order == [0, 4000, 8000]  # each waited for the bytes before its own
    chunks = [chunk_record(o, len(p), crc64nvme=crcs[o]) for _, o, p in parts]
    state = prefix.state(chunks)
    assert state.hexdigest() == hashlib.sha256(data).hexdigest()
    state.update(b"tail")  # a copy: going on with it leaves the prefix as it was
    assert prefix.state(chunks).hexdigest() == hashlib.sha256(data).hexdigest()
    assert prefix.state(chunks[:2]) is None  # it holds more than those
    other = chunk_record(4000, 4000, crc64nvme=of(CRC64NVME, b"other bytes").value)
    assert prefix.state([chunks[0], other, chunks[2]]) is None  # S3 holds other bytes
    prefix.seen(4000, of(CRC64NVME, parts[1][2]).value)  # read again, the same bytes
    assert prefix.state(chunks) is not None
    prefix.seen(4000, of(CRC64NVME, b"rewritten").value)  # read again, other bytes
    assert prefix.state(chunks) is None


def test_a_turn_given_up_or_never_taken_breaks_the_prefix_hash_and_frees_who_waits():
    prefix = PrefixHash()
    waiting = []
    thread = threading.Thread(target=lambda: waiting.append(prefix.take_turn(1, 100)))
    thread.start()
    assert prefix.take_turn(0, 0) is not None
    assert prefix.state([]) is None  # part way through a chunk
    prefix.give_up()  # the chunk's first pass failed part way
    thread.join()
    assert waiting == [None] and prefix.state([]) is None
    lonely = PrefixHash(wait_s=0.01)
    assert lonely.take_turn(1, 100) is None  # the chunk before it never came
    assert lonely.broken
    gap = PrefixHash()
    fed(gap, 0, 0, b"a short tail")  # sent as the tail, then the file grew
    assert gap.take_turn(1, 100) is None and gap.broken  # not where the bytes fed end


def test_the_buffer_pool_reuses_what_is_given_back_and_lets_it_go_when_told():
    pool = BufferPool()
    one, two = pool.take(10), pool.take(10)
    assert one is not two and len(one) == 10
    pool.give(one)
    assert pool.take(8) is one  # large enough
    pool.give(one)
    assert pool.take(11) is not one  # too small: a new one
    pool.give(two)
    pool.give(pool.take(4))  # a tail's buffer, given back last
    assert pool.take(10) is two  # a buffer large enough is found behind it
    pool.give(two)
    pool.release()
    assert pool.take(10) is not two


def test_only_complete_streams_are_retirable_unless_partial_ones_are_allowed():
    assert retirable(StreamState.COMPLETE, delete_partial=False)
    assert not retirable(StreamState.PARTIAL, delete_partial=False)
    assert retirable(StreamState.PARTIAL, delete_partial=True)
    for state in (StreamState.ACTIVE, StreamState.INVALID, StreamState.CANCELLED):
        assert not retirable(state, delete_partial=True)


def test_space_to_free_meets_both_thresholds():
    assert space_to_free(free=100, total=1000, min_free_bytes=150, min_free_percent=0) == 50
    assert space_to_free(free=100, total=1000, min_free_bytes=0, min_free_percent=20) == 100
    assert space_to_free(free=100, total=1000, min_free_bytes=150, min_free_percent=20) == 100
    assert space_to_free(free=300, total=1000, min_free_bytes=150, min_free_percent=20) == 0
    assert space_to_free(free=300, total=1000, min_free_bytes=0, min_free_percent=0) == 0


def test_the_oldest_file_that_may_go_is_deleted_next_and_only_when_asked_for():
    candidates = [(30, "c"), (10, "a"), (20, "b")]
    assert next_to_retire(candidates, need=5, delete_after_upload=False) == ("a", "disk_pressure")
    assert next_to_retire(candidates, need=5, delete_after_upload=True) == ("a", "disk_pressure")
    assert next_to_retire(candidates, need=0, delete_after_upload=True) == ("a", "uploaded")
    assert next_to_retire(candidates, need=0, delete_after_upload=False) is None
    assert next_to_retire([], need=5, delete_after_upload=True) is None


def test_a_file_may_go_only_once_it_is_old_enough():
    second = 10**9
    assert old_enough(mtime_ns=100 * second, wall_ns=160 * second, min_age=60)
    assert not old_enough(mtime_ns=100 * second, wall_ns=159 * second, min_age=60)
    assert old_enough(mtime_ns=100 * second, wall_ns=100 * second, min_age=0)


def test_a_body_damaged_on_the_way_is_sent_again_soon():
    assert not is_rejection(400, "XAmzContentSHA256Mismatch")
    assert not is_rejection(400, "BadDigest")
    assert is_rejection(403, "AccessDenied")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_token_bucket_grants_its_rate_after_a_short_burst():
    clock = FakeClock()
    bucket = TokenBucket(640 * 1024, clock=clock)  # a tenth of a second: one 64 KiB piece
    piece = bucket.piece
    assert piece == 64 * 1024
    assert bucket.take(piece) == 0  # the burst
    assert bucket.take(piece) == pytest.approx(0.1)  # each next piece waits its turn
    assert bucket.take(piece) == pytest.approx(0.2)
    clock.now += 0.2  # the debt is paid
    assert bucket.take(piece) == pytest.approx(0.1)
    clock.now += 60  # idle for a minute: the burst is still one piece, not a minute's worth
    assert bucket.take(piece) == 0
    assert bucket.take(piece) == pytest.approx(0.1)


def test_on_a_thin_link_pieces_are_small_so_no_request_waits_long():
    bucket = TokenBucket(8 * 1024, clock=FakeClock())
    assert bucket.piece == 4 * 1024
    waits = [bucket.take(bucket.piece) for _ in range(6)]  # six senders at once
    assert max(waits) <= 3.0


def test_the_supervisor_wakes_when_a_stream_falls_idle_and_not_a_tick_later():
    clock = FakeClock()
    supervisor = Supervisor(Config(), clock=clock)
    supervisor.discovery.next_idle_at = clock.now + 0.2
    assert supervisor.sleep_time() == pytest.approx(0.2)
    supervisor.discovery.next_idle_at = clock.now + 60
    assert supervisor.sleep_time() == TICK
    supervisor.discovery.next_idle_at = clock.now - 0.1  # passed while it slept: finish it now
    assert supervisor.sleep_time() == 0
    supervisor.stop_deadline = clock.now + 10  # stopping: nothing is finished any more
    assert supervisor.sleep_time() == TICK


MiB = 1024 * 1024


def test_full_chunks_of_5_mib_or_more_are_copied_while_live():
    assert copies_ahead(True, 10 * MiB, 0, 10 * MiB)
    assert copies_ahead(True, 5 * MiB, 9_999, 5 * MiB)
    assert not copies_ahead(False, 10 * MiB, 0, 10 * MiB), "assembly is off"
    assert not copies_ahead(True, 4 * MiB, 0, 4 * MiB), "below S3's part minimum"
    assert not copies_ahead(True, 10 * MiB, 3, 2 * MiB), "a short chunk is the tail"
    assert not copies_ahead(True, 10 * MiB, 10_000, 10 * MiB), "past S3's 10,000 parts"


def test_the_live_upload_is_finished_only_if_name_type_and_method_still_fit():
    upload = AssemblyUpload(key="p/s/cam.mp4", upload_id="u", content_type="video/mp4")
    assert upload_to_finish(upload, "p/s/cam.mp4", "video/mp4", "compose") is upload
    assert upload_to_finish(None, "p/s/cam.mp4", "video/mp4", "compose") is None
    assert upload_to_finish(upload, "p/s/renamed.mp4", "video/mp4", "compose") is None
    assert upload_to_finish(upload, "p/s/cam.mp4", "application/octet-stream", "compose") is None
    assert upload_to_finish(upload, "p/s/cam.mp4", "video/mp4", "upload") is None


def test_a_survey_made_ahead_is_used_only_while_it_holds_and_its_sha256_is_known():
    data = b"x" * 300
    sent = PrefixHash()
    first = fed(sent, 0, 0, data[:200])
    mtime = 7 * SECOND
    head = chunk_record(
        0, 200, crc64nvme=first, read_at_ns=mtime - SECOND, read_mtime_ns=mtime - SECOND
    )
    ahead = Survey(size=300, mtime_ns=mtime, sha256=None, stale=[], drop_from=None, checked=1)
    finish = Finish(stream_id="s", size=300, mtime_ns=mtime)
    assert still_holds(None, finish, [head], sent) is None
    assert (
        still_holds(ahead, Finish(stream_id="s", size=300, mtime_ns=mtime + 1), [head], sent)
        is None
    )
    # The tail not sent yet: its sha256 is not known.
    assert still_holds(ahead, finish, [head], sent) is None
    last = fed(sent, 1, 200, data[200:])
    tail = chunk_record(
        200, 100, crc64nvme=last, read_at_ns=mtime + 2 * SECOND, read_mtime_ns=mtime
    )
    used = still_holds(ahead, finish, [head, tail], sent)
    assert used.sha256 == hashlib.sha256(data).hexdigest() and used.stale == ahead.stale
    assert still_holds(used, finish, [head, tail], None) is used
    # A chunk the survey did not compare, read before the file's last write: its bytes
    # may have been rewritten since (a recorder that went on after the survey was planned).
    early = chunk_record(
        200, 100, crc64nvme=last, read_at_ns=mtime - SECOND, read_mtime_ns=mtime - SECOND
    )
    assert still_holds(used, finish, [head, early], None) is None
    sent.seen(
        200, of(CRC64NVME, b"y" * 100).value
    )  # the tail read again, rewritten: not the file's
    assert still_holds(ahead, finish, [head, tail], sent) is None
    assert still_holds(ahead, finish, [head, tail], None) is None


def chunk_record(offset: int, size: int, crc64nvme: str = "", **read) -> ChunkRecord:
    return ChunkRecord(
        index=offset // 200,
        offset=offset,
        size=size,
        crc64nvme=crc64nvme,
        etag="",
        uploaded_at=datetime.now(UTC),
        **read,
    )


def test_a_file_found_quiet_is_dated_by_its_mtime_and_a_future_mtime_counts_as_now():
    wall = 1_800_000_000 * 10**9
    assert changed_at_by_mtime(100.0, wall, wall - 45 * 10**9) == 55.0
    assert is_idle(changed_at_by_mtime(100.0, wall, wall - 45 * 10**9), 100.0, 30)
    assert not is_idle(changed_at_by_mtime(100.0, wall, wall - 10 * 10**9), 100.0, 30)
    assert changed_at_by_mtime(100.0, wall, wall + 5 * 10**9) == 100.0


def test_a_failing_stream_is_parked_until_due_and_stuck_after_a_while_or_at_once_for_a_bug():
    from streamer.policy import stream_condition

    assert stream_condition(None, 0.0, False, now=100.0, stuck_after=60.0) is None
    assert stream_condition(90.0, 105.0, False, now=100.0, stuck_after=60.0) == "parked"
    # Due again: being tried, neither parked nor stuck yet.
    assert stream_condition(90.0, 99.0, False, now=100.0, stuck_after=60.0) is None
    assert stream_condition(40.0, 99.0, False, now=100.0, stuck_after=60.0) == "stuck"
    assert stream_condition(40.0, 105.0, False, now=100.0, stuck_after=60.0) == "stuck"
    assert stream_condition(99.0, 130.0, True, now=100.0, stuck_after=60.0) == "stuck"


def test_without_the_file_s_sha256_a_survey_made_ahead_holds_without_one():
    from streamer.config import Config, IntegrityConfig
    from streamer.uploader.file_sha256 import wanted

    mtime = 7 * SECOND
    head = chunk_record(
        0, 200, crc64nvme="0" * 16, read_at_ns=mtime - SECOND, read_mtime_ns=mtime - SECOND
    )
    tail = chunk_record(
        200, 100, crc64nvme="1" * 16, read_at_ns=mtime + 2 * SECOND, read_mtime_ns=mtime
    )
    ahead = Survey(size=300, mtime_ns=mtime, sha256=None, stale=[], drop_from=None, checked=1)
    finish = Finish(stream_id="s", size=300, mtime_ns=mtime)
    assert still_holds(ahead, finish, [head, tail], None) is None, "a sha256 is wanted"
    assert still_holds(ahead, finish, [head, tail], None, sha256=False) is ahead
    off = Config(integrity=IntegrityConfig(file_sha256=False))
    assert not wanted(off, [head, tail])
    # A chunk from before crc64nvme: the whole cannot be combined, so its sha256 is taken.
    older = chunk_record(200, 100, read_at_ns=mtime + 2 * SECOND, read_mtime_ns=mtime)
    assert wanted(off, [head, msgspec.structs.replace(older, crc64nvme=None)])
    assert wanted(Config(), [head, tail])
