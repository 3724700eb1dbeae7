"""Recordings in folders below the watch directory, as recorders write them (Frigate's
`recordings/<day>/<hour>/<camera>/`, MediaMTX's `recordings/<path>/`, one folder per
camera or per day): found with real inotify whenever their folder was made, each a
stream of its own whose key and metadata.json carry its path."""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from recordings import record

from integration.daemons import assert_exact
from integration.servers import manifest_of
from streamer import retention
from streamer.layout import KeyOf, Layout
from streamer.naming import stream_id_for

pytestmark = pytest.mark.integration

AT = datetime(2026, 12, 6, 22, 15, tzinfo=UTC)


def test_a_stream_id_carries_the_folders_each_key_safe():
    never = lambda candidate: False  # noqa: E731
    assert stream_id_for("late.mp4", AT, never) == "late-20261206T221500Z"
    assert stream_id_for("cam1/2026-12-06/late.mp4", AT, never) == (
        "cam1/2026-12-06/late-20261206T221500Z"
    )
    assert stream_id_for("Kamera Ö/../x y.mp4", AT, never) == "Kamera_O/folder/x_y-20261206T221500Z"
    taken = {"cam1/late-20261206T221500Z"}
    assert stream_id_for("cam1/late.mp4", AT, taken.__contains__).endswith("Z-2")
    # Folders deep and long enough to take a key past S3's 1024 bytes: a hash of the rest.
    deep = [f"{n}" * 80 for n in range(10)]
    long_id = stream_id_for("/".join([*deep, "x.mp4"]), AT, never)
    other = stream_id_for("/".join([*deep[:-1], "y" * 80, "x.mp4"]), AT, never)
    assert len(long_id) <= 400 + len("/x-20261206T221500Z") and long_id != other
    assert long_id.startswith(f"{deep[0]}/{deep[1]}/")


def test_keys_of_a_stream_in_folders_read_back_as_that_stream():
    layout = Layout("rec", "cam")
    stream = "cam1/2026-12-06/late-20261206T221500Z"
    assert layout.parse(layout.chunk_key(stream, 3, 1)) == KeyOf("cam", stream, "chunk", 3, 1)
    assert layout.parse(layout.manifest_key(stream)) == KeyOf("cam", stream, "manifest")
    assert layout.parse(layout.assembled_key(stream, "late.mp4")) == KeyOf("cam", stream, "object")
    # A folder called `chunks` is a folder, never a chunk of the stream above it.
    inside = "chunks/000001-20261206T221500Z"
    assert layout.parse(layout.manifest_key(inside)) == KeyOf("cam", inside, "manifest")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, ffmpeg) -> list[Path]:
    """Three short ffmpeg recordings, made once, to be put where a test wants them."""
    made = tmp_path_factory.mktemp("made")
    paths = [made / f"{n}.mp4" for n in range(3)]
    for path in paths:
        assert record(ffmpeg, path, 1 + paths.index(path), "plain", live=False).wait(60) == 0
    return paths


def put(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def test_recordings_in_folders_made_before_and_after_start_are_each_uploaded_exact(
    make_daemon, server, recordings, tmp_path
):
    """No periodic scan helps (an hour apart): folders made before the start, one made
    while the daemon runs and written at once, one moved in with its recording already
    in it, a deep one, and two cameras writing files of one name. A folder too deep, a
    hidden one and a link to a folder elsewhere are left alone."""
    daemon = make_daemon(watch={"rescan_interval": 3600, "max_depth": 4})
    watch = daemon.watch
    expected = {
        "cam1/2026-12-06/late.mp4": put(recordings[0], watch / "cam1/2026-12-06/late.mp4"),
    }
    elsewhere = put(recordings[1], tmp_path / "elsewhere/linked.mp4").parent
    os.symlink(elsewhere, watch / "linked")
    daemon.start()
    expected["cam2/2026-12-06/late.mp4"] = put(recordings[1], watch / "cam2/2026-12-06/late.mp4")
    moved = put(recordings[2], tmp_path / "outside/cam3/moved.mp4").parent
    os.rename(moved.parent, watch / "outside")
    expected["outside/cam3/moved.mp4"] = watch / "outside/cam3/moved.mp4"
    expected["a/b/c/d/deep.mp4"] = put(recordings[0], watch / "a/b/c/d/deep.mp4")
    put(recordings[0], watch / "a/b/c/d/e/too-deep.mp4")
    put(recordings[0], watch / ".Trash-1000/files/deleted.mp4")

    daemon.wait_for("stream_finished", count=len(expected), timeout=90)
    discovered = daemon.find("stream_discovered")
    by_path = {os.path.relpath(e["path"], watch): e["stream_id"] for e in discovered}
    assert by_path.keys() == expected.keys()
    for relative, path in expected.items():
        stream_id = by_path[relative]
        assert stream_id.startswith(relative.removesuffix(".mp4") + "-"), stream_id
        assert_exact(server, daemon, stream_id, path)
        source = manifest_of(server.client, daemon.bucket, stream_id)["source"]
        assert source["relative_path"] == relative and source["path"] == str(path)
    daemon.stop()
    assert len(daemon.find("stream_discovered")) == len(expected)


def test_a_folder_moved_within_keeps_its_streams_and_one_moved_out_ends_them(
    make_daemon, server, recordings, tmp_path
):
    daemon = make_daemon(watch={"rescan_interval": 3600}, stream={"idle_timeout": 30})
    daemon.start()
    put(recordings[0], daemon.watch / "day1/cam/kept.mp4")
    gone = put(recordings[1], daemon.watch / "day2/cam/gone.mp4")
    daemon.wait_for("stream_discovered", count=2)
    for stream in daemon.wait_for("stream_discovered", count=2):
        daemon.wait_for("chunk_uploaded", stream_id=stream["stream_id"])
    os.rename(daemon.watch / "day1", daemon.watch / "archive")
    os.rename(daemon.watch / "day2", tmp_path / "day2")
    renamed = daemon.wait_for("stream_renamed")[0]
    assert renamed["path"] == str(daemon.watch / "archive/cam/kept.mp4")
    abandoned = daemon.wait_for("stream_lost")[0]
    assert abandoned["path"] == str(gone)
    assert abandoned["reason"] == "deleted before it finished"
    finished = daemon.wait_for("stream_finished", stream_id=renamed["stream_id"], timeout=60)[0]
    assert finished["status"] == "complete"
    source = manifest_of(server.client, daemon.bucket, renamed["stream_id"])["source"]
    assert source["relative_path"] == "archive/cam/kept.mp4"


@pytest.mark.skipif(os.geteuid() != 0, reason="the inotify sysctl needs root")
def test_out_of_inotify_watches_the_folder_is_found_by_the_scan(
    make_daemon, server, recordings, tmp_path
):
    """The kernel refuses the daemon a watch for a folder moved in with a recording in it:
    that is said once, with the sysctl to raise, and the recording is found by the scan.
    The limit is host-wide, so it is lowered only until then."""
    sysctl = Path("/proc/sys/fs/inotify/max_user_watches")
    daemon = make_daemon(watch={"rescan_interval": 1}).start()
    path = put(recordings[0], tmp_path / "cam9/unwatched.mp4")
    before = sysctl.read_text()
    sysctl.write_text("1")  # fewer than root's processes hold: none more for now
    try:
        os.rename(path.parent, daemon.watch / "cam9")
        warned = daemon.wait_for("inotify_watches_exhausted")[0]
        discovered = daemon.wait_for("stream_discovered")[0]
    finally:
        sysctl.write_text(before)
    assert "fs.inotify.max_user_watches" in warned["hint"]
    assert discovered["path"] == str(daemon.watch / "cam9/unwatched.mp4")
    daemon.wait_for("stream_finished", timeout=60)
    assert_exact(server, daemon, discovered["stream_id"], daemon.watch / "cam9/unwatched.mp4")


def test_a_folder_that_cannot_be_read_is_said_once_and_the_others_are_scanned(
    make_daemon, server, recordings
):
    """A folder whose path is longer than the kernel takes (ENAMETOOLONG, as a failing card
    gives EIO): it is passed over, said once, and every other recording is found."""
    daemon = make_daemon(watch={"rescan_interval": 1, "max_depth": 20})
    fd = os.open(daemon.watch, os.O_RDONLY)
    for _ in range(18):  # 18 names of 255 bytes: past PATH_MAX (4096)
        os.mkdir("d" * 255, dir_fd=fd)
        below = os.open("d" * 255, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(fd)
    daemon.expect("file_failed").start()
    path = put(recordings[0], daemon.watch / "cam/ok.mp4")
    finished = daemon.wait_for("stream_finished", timeout=60)[0]
    assert_exact(server, daemon, finished["stream_id"], path)
    time.sleep(3)  # three more scans: the folder is said once, at error level
    failed = daemon.find("file_failed")
    assert len(failed) == 1 and "name too long" in failed[0]["error"].lower(), failed
    assert not daemon.find("scan_failed")


def test_a_watch_directory_that_is_a_link_is_followed(make_daemon, server, recordings, tmp_path):
    """Only links inside the watch directory are passed over: the directory itself may be
    a link to where the recordings are."""
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    daemon = make_daemon(watch={"directory": str(link), "rescan_interval": 3600}).start()
    path = put(recordings[0], link / "cam/in.mp4")
    finished = daemon.wait_for("stream_finished", timeout=60)[0]
    assert_exact(server, daemon, finished["stream_id"], path)


def test_retention_deletes_a_proven_recording_in_a_folder_and_never_through_a_link(
    make_daemon, minio, recordings, tmp_path
):
    daemon = make_daemon(retention={"delete_after_upload": True, "min_age": 0}).start()
    path = put(recordings[0], daemon.watch / "cam1/2026-12-06/a.mp4")
    deleted = daemon.wait_for("source_deleted", timeout=60)[0]
    assert deleted["path"] == str(path) and not path.exists()
    assert_exact(minio, daemon, deleted["stream_id"], recordings[0])

    # A folder swapped for a link after the checks leads nowhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, daemon.watch / "cam2")
    with pytest.raises(OSError):
        os.close(retention.open_folder(str(daemon.watch), str(daemon.watch / "cam2")))
    os.close(retention.open_folder(str(daemon.watch), str(path.parent)))


def test_once_takes_the_recordings_in_every_folder_and_none_made_after_its_scan(
    make_daemon, minio, recordings
):
    daemon = make_daemon()
    paths = [put(recordings[n], daemon.watch / f"cam{n}/day/same.mp4") for n in range(2)]
    daemon.start(args=["--once"])
    put(recordings[2], daemon.watch / "cam9/later.mp4")  # after the first scan
    assert daemon.process.wait(120) == 0
    finished = {e["stream_id"] for e in daemon.find("stream_finished")}
    assert sorted(finished) == sorted(
        daemon.find("stream_discovered", path=str(path))[0]["stream_id"] for path in paths
    )
    for n, path in enumerate(paths):
        stream_id = daemon.find("stream_discovered", path=str(path))[0]["stream_id"]
        assert stream_id.startswith(f"cam{n}/day/same-")
        assert_exact(minio, daemon, stream_id, path)
