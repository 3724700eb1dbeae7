"""The watch directory, through real inotify on a temporary folder: a file created, written,
renamed or deleted shows in the next read's `Changes`; a folder that comes is watched from
the scan its event brings, down to `max_depth`, and one moved away is watched no longer; a
scan finds what no event told (files there before, only those matching the pattern, never
through a link); a file is known by its identity (`FileStat`) whatever its name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from recordings import record_of

from streamer.watcher import FileStat, Watcher


@pytest.fixture
def watch(tmp_path):
    directory = tmp_path / "input"
    directory.mkdir()
    return directory


def watching(directory: Path, max_depth: int = 0) -> Watcher:
    watcher = Watcher(str(directory), "*.mp4", max_depth=max_depth)
    watcher.open()
    return watcher


@pytest.fixture
def watcher(watch):
    made = watching(watch, max_depth=1)
    yield made
    made.close()


def test_a_file_created_written_and_deleted_shows_in_the_next_read(watch, watcher):
    path = watch / "cam.mp4"
    path.write_bytes(b"first bytes")
    changes = watcher.read()
    assert changes.paths == {str(path)} and not changes.deleted
    assert not changes.overflow and not changes.folders_changed
    assert watcher.read().paths == set(), "each event is read once"
    with open(path, "ab") as f:
        f.write(b"more")
    assert watcher.read().paths == {str(path)}
    path.unlink()
    changes = watcher.read()
    assert changes.paths == {str(path)} and changes.deleted == {str(path)}


def test_a_renamed_file_shows_at_both_names_and_neither_is_deleted(watch, watcher):
    before = watch / "cam.mp4"
    before.write_bytes(b"a recording")
    watcher.read()
    after = watch / "renamed.any"  # a stream's file may be renamed to anything
    before.rename(after)
    changes = watcher.read()
    assert changes.paths == {str(before), str(after)} and changes.deleted == set()


def test_a_folder_that_comes_is_watched_from_the_scan_its_event_brings(watch, watcher):
    folder = watch / "cam1"
    folder.mkdir()
    (folder / "early.mp4").write_bytes(b"written before the folder was watched")
    changes = watcher.read()
    assert changes.folders_changed and changes.paths == set()
    found = watcher.scan()
    assert set(found) == {str(folder / "early.mp4")}, "what no event told"
    late = folder / "late.mp4"
    late.write_bytes(b"written once it was watched")
    assert str(late) in watcher.read().paths
    assert watcher.relative(str(late)) == os.path.join("cam1", "late.mp4")


def test_a_folder_moved_out_of_the_watch_directory_is_watched_no_longer(watch, watcher, tmp_path):
    folder = watch / "cam1"
    folder.mkdir()
    watcher.read()
    watcher.scan()
    gone = tmp_path / "elsewhere"
    folder.rename(gone)
    assert watcher.read().folders_changed
    (gone / "cam.mp4").write_bytes(b"outside the watch directory now")
    changes = watcher.read()
    assert changes.paths == set(), "not under the path it had in the watch directory"
    assert watcher.scan() == {}


def test_a_scan_finds_matching_regular_files_down_to_max_depth_only(watch, tmp_path):
    (watch / "CAM.MP4").write_bytes(b"a")  # the pattern is matched whatever the case
    (watch / "notes.txt").write_bytes(b"b")
    (watch / "cam1" / "deeper").mkdir(parents=True)
    (watch / "cam1" / "one.mp4").write_bytes(b"c")
    (watch / "cam1" / "deeper" / "two.mp4").write_bytes(b"d")
    (watch / ".Trash-1000").mkdir()
    (watch / ".Trash-1000" / "old.mp4").write_bytes(b"e")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "far.mp4").write_bytes(b"f")
    (watch / "linked").symlink_to(outside)
    (watch / "link.mp4").symlink_to(outside / "far.mp4")
    watcher = watching(watch, max_depth=1)
    try:
        assert set(watcher.scan()) == {str(watch / "CAM.MP4"), str(watch / "cam1" / "one.mp4")}
    finally:
        watcher.close()
    flat = Watcher(str(watch), "*.mp4")  # max_depth 0: the watch directory alone
    assert set(flat.scan()) == {str(watch / "CAM.MP4")}


def test_a_file_is_known_by_its_identity_whatever_its_name(watch, watcher):
    path = watch / "cam.mp4"
    path.write_bytes(b"a recording")
    seen, st = watcher.stat(str(path)), path.stat()
    assert seen == FileStat(str(path), st.st_ino, st.st_dev, 11, st.st_mtime_ns)
    assert seen.is_of(record_of(path))
    moved = watch / "cam1" / "kept.mp4"
    moved.parent.mkdir()
    path.rename(moved)
    found = watcher.find(seen.inode, seen.device)
    assert found is not None and found.path == str(moved) and found.same_file(seen)
    assert not found.changed_since(seen)
    with open(moved, "ab") as f:
        f.write(b"more")
    grown = watcher.stat(str(moved))
    assert grown.changed_since(seen) and grown.same_file(seen)
    os.truncate(moved, seen.size)  # its size again, but written since: not what was seen
    os.utime(moved, ns=(seen.mtime_ns + 10**9, seen.mtime_ns + 10**9))
    assert watcher.stat(str(moved)).changed_since(seen)
    assert watcher.stat(str(path)) is None and watcher.stat(str(watch / "cam1")) is None
    assert watcher.find(seen.inode + 1_000_000, seen.device) is None
