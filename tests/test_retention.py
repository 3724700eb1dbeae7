"""Retention's last step on real files: what is unlinked is the file that was checked, and
neither renaming it aside nor putting back a file a writer swapped in ever replaces
another file. With renameat2(RENAME_NOREPLACE), and without it (old glibc, or a filesystem
that lacks it)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from recordings import record_of

from streamer import fileio, retention


@pytest.fixture(params=["renameat2", "without renameat2"])
def watch(request, tmp_path, monkeypatch):
    if request.param == "without renameat2":
        monkeypatch.setattr(fileio, "_renameat2", None)
    directory = tmp_path / "input"
    directory.mkdir()
    return directory


def names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_file_at_an_earlier_deletion_s_aside_name_survives(watch):
    """Where an earlier version left a file it could not put back (its one fixed aside
    name), deleting another file of that name leaves it alone."""
    recorded = watch / "cam.mp4"
    recorded.write_bytes(b"the recording, proven in S3")
    left = watch / ".cam.mp4.streamer-deleting"
    left.write_bytes(b"another recording, kept aside")
    retention.unlink_same_file(record_of(recorded), str(watch))
    assert names(watch) == [left.name]
    assert left.read_bytes() == b"another recording, kept aside"


def test_a_file_renamed_over_the_name_is_put_back(watch, monkeypatch):
    recorded = watch / "cam.mp4"
    recorded.write_bytes(b"the recording, proven in S3")
    record = record_of(recorded)
    monkeypatch.setattr(retention, "_lease", lambda fd, st: swap(watch, b"a new recording", fd, st))
    with pytest.raises(retention.Kept, match="another file was put at its name during"):
        retention.unlink_same_file(record, str(watch))
    assert names(watch) == ["cam.mp4"] and recorded.read_bytes() == b"a new recording"


def test_a_file_that_cannot_be_put_back_is_kept_aside_and_survives_the_next_deletion(
    watch, tmp_path, monkeypatch
):
    """A writer renames a new file over the name after the last check (the lease is
    taken then), and another writer puts a third at the name just after the deletion
    renamed the second aside: the second stays aside, and the reason says where. Then
    the recording is back at its name and deleted again: the file kept aside stays."""
    recorded = watch / "cam.mp4"
    recorded.write_bytes(b"the recording, proven in S3")
    record = record_of(recorded)
    os.link(recorded, tmp_path / "recording")  # to put it back later
    with monkeypatch.context() as racing:
        racing.setattr(
            retention, "_lease", lambda fd, st: swap(watch, b"a second recording", fd, st)
        )
        racing.setattr(retention, "os", ThirdWriter(recorded, b"a third recording"))
        with pytest.raises(retention.Kept, match="taken again before it could be put back") as why:
            retention.unlink_same_file(record, str(watch))
    kept = Path(re.fullmatch(r".*: it is kept as (\S+)", str(why.value))[1])
    assert kept.parent == watch and kept.read_bytes() == b"a second recording"
    assert recorded.read_bytes() == b"a third recording"

    recorded.unlink()
    os.link(tmp_path / "recording", recorded)
    retention.unlink_same_file(record, str(watch))
    assert names(watch) == [kept.name] and kept.read_bytes() == b"a second recording"


LEASE = retention._lease


def swap(directory, data: bytes, fd: int, st: os.stat_result) -> str | None:
    """A writer renames a new file over cam.mp4 as the lease is taken."""
    (directory / ".new").write_bytes(data)
    os.rename(directory / ".new", directory / "cam.mp4")
    return LEASE(fd, st)


class ThirdWriter:
    """retention's `os`, with a writer that puts a file at `target` the moment the deletion
    looks at what it renamed aside."""

    def __init__(self, target, data: bytes):
        self.target, self.data = target, data

    def __getattr__(self, name: str):
        return getattr(os, name)

    def stat(self, path, *args, **kwargs):
        if ".streamer-deleting" in str(path) and not self.target.exists():
            self.target.write_bytes(self.data)
        return os.stat(path, *args, **kwargs)
