import pytest

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
from streamer.records import AssemblyUpload, StreamState

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
