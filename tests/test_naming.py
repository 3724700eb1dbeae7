"""Stream names: a recording's file name made safe as an S3 key, and stream ids that are
readable and unique for each generation of a file."""

from datetime import UTC, datetime

import pytest

from streamer.naming import slug, stream_id_for


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
