from datetime import UTC, datetime

import pytest

from streamer.naming import slug, stream_id_for
from streamer.policy import (
    Finalise,
    UploadChunk,
    Wait,
    backoff_delay,
    choose_uploader,
    is_idle,
    next_step,
)

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
        (3, 250, 250, True, Finalise()),
        (0, 0, 0, True, Finalise()),
        (3, 300, 250, True, Finalise()),  # shrank: finalisation reconciles
    ],
)
def test_next_step(chunks, committed, size, finishing, expected):
    assert next_step(chunks, committed, CS, size, finishing) == expected


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
