"""The decisions as pure functions of state and time: what an uploader does next, when a
stream is idle, settled or due for retirement, which uploader takes a stream, how long a
failure waits, which record of a stream wins (S3's or this store's), and what an
instance's claim says to a start."""

import msgspec
import pytest
from sample_records import LAYOUT, NOW, chunk, finished

from streamer import manifest
from streamer.policy import (
    ClaimVerdict,
    Complete,
    OtherRecording,
    Pending,
    UploadChunk,
    Wait,
    backoff_delay,
    changed_at_by_mtime,
    choose_uploader,
    claim_verdict,
    copies_ahead,
    is_idle,
    is_rejection,
    next_step,
    next_to_retire,
    old_enough,
    reconciled_record,
    retirable,
    settled,
    space_to_free,
    upload_to_finish,
)
from streamer.records import AssemblyUpload, StreamRecord, StreamState

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


# Which record of a stream wins, S3's or this store's, and what a claim says to a start.


def record_of(record: StreamRecord) -> manifest.Manifest:
    count = (record.total_size or 0) // 100
    return manifest.build(record, [chunk(i) for i in range(count)], LAYOUT)


COMPLETE = record_of(finished())
PARTIAL = record_of(finished(StreamState.PARTIAL, size=100, sha256=None))


def test_a_record_further_along_in_s3_is_never_replaced_by_a_lesser_one():
    assert reconciled_record(PARTIAL, COMPLETE) == COMPLETE
    cancelled = record_of(finished(StreamState.CANCELLED, size=200, sha256=None))
    assert reconciled_record(cancelled, COMPLETE) == COMPLETE
    assert reconciled_record(PARTIAL, cancelled) == cancelled, "more bytes over fewer"


def test_a_record_further_along_in_this_store_goes_over_s3_s():
    assert reconciled_record(COMPLETE, PARTIAL) == COMPLETE


def test_what_either_learned_after_the_end_is_kept_whichever_wins():
    deleted = record_of(finished(source_deleted_at=NOW))
    pruned = record_of(finished(chunks_deleted_at=NOW))
    merged = reconciled_record(pruned, deleted)
    assert merged.source.deleted_at == NOW and merged.chunks_deleted_at == NOW
    assert reconciled_record(PARTIAL, deleted) == deleted


def test_another_recording_is_never_written_over():
    other = record_of(finished(sha256="cd" * 32))
    with pytest.raises(OtherRecording, match="another recording"):
        reconciled_record(COMPLETE, other)
    with pytest.raises(OtherRecording):
        reconciled_record(COMPLETE, msgspec.structs.replace(COMPLETE, stream_id="cam-2"))


def test_without_the_file_s_sha256_another_recording_is_told_by_its_crc64nvme():
    ours = msgspec.structs.replace(COMPLETE, sha256=None, crc64nvme="1" * 16)
    theirs = msgspec.structs.replace(ours, crc64nvme="2" * 16)
    with pytest.raises(OtherRecording, match="crc64nvme:2222"):
        reconciled_record(ours, theirs)
    with pytest.raises(OtherRecording):
        reconciled_record(msgspec.structs.replace(ours, sha256="ab" * 32), theirs)
    assert reconciled_record(ours, msgspec.structs.replace(ours, source=COMPLETE.source)) == ours
    # A partial record holds fewer bytes: its CRC is not the whole's.
    partial = msgspec.structs.replace(PARTIAL, crc64nvme="3" * 16)
    assert reconciled_record(partial, ours) == ours
    assert reconciled_record(ours, msgspec.structs.replace(ours, total_size=200)) == ours


@pytest.mark.parametrize(
    ("store", "start", "own", "confirmed", "expected"),
    [
        (None, None, ["s2"], False, ClaimVerdict.MOVE_ON),  # unclaimed
        ("other", "x", ["s2"], True, ClaimVerdict.TAKEN),
        ("mine", "s2", ["s1", "s2"], True, ClaimVerdict.HELD),  # a sibling moved it on
        ("mine", "s1", ["s1", "s2"], True, ClaimVerdict.MOVE_ON),
        ("mine", "s0", ["s1", "s2"], True, ClaimVerdict.BEHIND),  # moved on by a copy
        ("mine", "s0", ["s1", "s2"], False, ClaimVerdict.BEHIND),
        # A claim from before starts were named: this store's until it names one.
        ("mine", None, ["s1", "s2"], False, ClaimVerdict.MOVE_ON),
        ("mine", None, ["s2"], True, ClaimVerdict.BEHIND),
    ],
)
def test_the_claim_tells_a_start_what_to_do(store, start, own, confirmed, expected):
    assert claim_verdict(store, start, "mine", "s2", own, confirmed) is expected
