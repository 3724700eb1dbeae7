"""Where a stream's objects go in the bucket: every key the layout spells (a chunk and its
revisions, the assembled object, metadata.json, the instance's claim, doctor's scratch
objects), under a prefix or none, and each stream's key read back as the same place.
tests/test_bucket.py reads a few keys back as `remote list` meets them."""

from __future__ import annotations

import pytest

from streamer.layout import CHUNK_TAGS, KeyOf, Layout

LAYOUT = Layout("rec", "cam")
DEEP = "cam2/2026-12-06/late-20261206T221500Z"  # a stream of a file below folders


def test_a_stream_s_keys_are_spelled_below_prefix_instance_and_stream_id():
    assert LAYOUT.stream_prefix("s1") == "rec/cam/s1/"
    assert LAYOUT.chunk_key("s1", 41) == "rec/cam/s1/chunks/000041"
    assert LAYOUT.chunk_key("s1", 0, revision=2) == "rec/cam/s1/chunks/000000.r2"
    assert LAYOUT.chunk_key("s1", 1234567) == "rec/cam/s1/chunks/1234567"
    assert LAYOUT.assembled_key("s1", "cam one.mp4") == "rec/cam/s1/cam one.mp4"
    assert LAYOUT.manifest_key(DEEP) == f"rec/cam/{DEEP}/metadata.json"
    assert CHUNK_TAGS == {"streamer": "chunk"}


def test_the_instance_s_own_objects_sit_beside_its_streams():
    assert LAYOUT.owner_key() == "rec/cam/.owner"
    assert LAYOUT.scratch_key("probe-1") == "rec/cam/.doctor/probe-1"
    assert LAYOUT.instances_prefix() == "rec/"


def test_slashes_around_the_prefix_are_dropped_and_no_prefix_starts_at_the_instance():
    assert Layout("/rec/", "cam").chunk_key("s1", 3) == "rec/cam/s1/chunks/000003"
    assert Layout("/rec/", "cam").instances_prefix() == "rec/"
    bare = Layout("", "cam")
    assert bare.manifest_key("s1") == "cam/s1/metadata.json"
    assert bare.owner_key() == "cam/.owner" and bare.instances_prefix() == ""


@pytest.mark.parametrize("stream_id", ["s1", DEEP])
@pytest.mark.parametrize("prefix", ["rec", "", "a/b"])
def test_every_key_of_a_stream_reads_back_as_its_place(prefix, stream_id):
    layout = Layout(prefix, "cam")
    for index, revision in ((0, 0), (41, 0), (3, 2), (1234567, 11)):
        key = layout.chunk_key(stream_id, index, revision)
        assert layout.parse(key) == KeyOf("cam", stream_id, "chunk", index, revision), key
    assert layout.parse(layout.manifest_key(stream_id)) == KeyOf("cam", stream_id, "manifest")
    assembled = layout.assembled_key(stream_id, "late.mp4")
    assert layout.parse(assembled) == KeyOf("cam", stream_id, "object")


def test_a_key_of_another_instance_under_the_prefix_is_read_as_that_instance_s():
    other = Layout("rec", "other").chunk_key(DEEP, 5, 1)
    assert LAYOUT.parse(other) == KeyOf("other", DEEP, "chunk", 5, 1)


def test_what_is_not_a_stream_s_object_is_no_place_in_the_layout():
    for key in (
        LAYOUT.owner_key(),
        LAYOUT.scratch_key("probe"),
        "recordings/cam/s1/metadata.json",  # another prefix that starts alike
        "rec/cam/metadata.json",  # under the instance, in no stream
        "rec//s1/metadata.json",  # no instance
        "rec/cam/.hidden/chunks/000001",
        "rec/cam/s1//chunks/000001",
        "rec/cam//s1/metadata.json",
    ):
        assert LAYOUT.parse(key) is None, key


def test_a_folder_marker_is_no_object_of_a_stream():
    assert LAYOUT.parse("rec/cam/s1/chunks/") is None
    assert LAYOUT.parse("rec/cam/s1/") is None
