"""Is it still the stream's file, and its bytes: on real files."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from awscrt.checksums import crc32c, crc64nvme
from recordings import record_of

from streamer import fileio
from streamer.bodies import Checked, digest, feed
from streamer.buffers import BufferPool
from streamer.digests import CRC32C, CRC64NVME, SHA256
from streamer.fileio import (
    CAP_LEASE,
    PIECE,
    SourceChanged,
    SourceUnreadable,
    Span,
    file_granularity_ns,
    filesystem_type,
    is_finished_file,
    lease_blindness,
    open_regular,
    raise_capability,
    size_of,
    timestamp_granularity_ns,
)


def test_a_finished_file_is_the_same_inode_size_and_mtime_and_a_regular_file(tmp_path):
    path = tmp_path / "cam.mp4"
    path.write_bytes(b"0123456789")
    record = record_of(path)
    assert is_finished_file(os.stat(path), record)
    assert not is_finished_file(os.stat(path), record_of(path, total_size=9))
    assert not is_finished_file(os.stat(path), record_of(path, mtime_ns=1))
    assert not is_finished_file(os.stat(path), record_of(path, device=record.device + 1))
    path.write_bytes(b"0123456789")  # same size, written again: a new mtime
    os.utime(path, ns=(record.mtime_ns + 10**9, record.mtime_ns + 10**9))
    assert not is_finished_file(os.stat(path), record)
    (tmp_path / "dir.mp4").mkdir()
    assert not is_finished_file(os.stat(tmp_path / "dir.mp4"), record_of(tmp_path / "dir.mp4"))


def test_bytes_are_read_from_the_stream_s_file_only_and_whole(tmp_path):
    path = tmp_path / "cam.mp4"
    path.write_bytes(b"0123456789")
    record = record_of(path)
    span = Span(record, 3, 4)
    assert b"".join(bytes(piece) for piece in span.pieces()) == b"3456"
    assert span.read_mtime_ns == os.stat(path).st_mtime_ns and size_of(record) == 10
    assert digest(SHA256, span).value == hashlib.sha256(b"3456").hexdigest()
    assert str(digest(CRC32C, span)) == f"crc32c:{crc32c(b'3456'):08x}"
    assert str(digest(CRC64NVME, span)) == f"crc64nvme:{crc64nvme(b'3456'):016x}"
    with pytest.raises(SourceChanged, match="ends before byte 12"):
        digest(SHA256, Span(record, 8, 4))
    replacement = tmp_path / "new.mp4"
    replacement.write_bytes(b"another recording")
    os.replace(replacement, path)
    with pytest.raises(SourceChanged, match="is now another file"):
        digest(SHA256, span)
    feed(span)  # nothing to feed: nothing is read
    with pytest.raises(SourceChanged, match="is now another file"):
        size_of(record)


def test_a_checked_body_reads_as_its_first_pass_did_or_stops_before_its_last_piece(tmp_path):
    path = tmp_path / "cam.mp4"
    path.write_bytes(os.urandom(2 * PIECE + 5))
    span = Span(record_of(path), 0, 2 * PIECE + 5)
    body = Checked(span, digest(CRC32C, span))
    assert b"".join(bytes(piece) for piece in body.pieces()) == path.read_bytes()
    with path.open("r+b") as f:
        f.write(b"rewritten")
    pieces = body.pieces()
    assert len(next(pieces)) == PIECE and len(next(pieces)) == PIECE
    with pytest.raises(SourceChanged, match="changed since they were digested"):
        next(pieces)


def test_a_span_is_read_in_pieces_into_one_buffer_of_the_pool(tmp_path):
    path = tmp_path / "long.mp4"
    data = os.urandom(2 * PIECE + 123)
    path.write_bytes(data)
    pool = BufferPool()
    pieces = []
    for piece in Span(record_of(path), 5, len(data) - 5, pool).pieces():
        pieces.append(bytes(piece))
        assert len(piece) <= PIECE
    assert b"".join(pieces) == data[5:] and len(pieces) == 3
    buffer = pool.take(PIECE)  # given back when the pass ended, and the only one made
    assert len(buffer) == PIECE and pool.take(PIECE) is not buffer


def special_files(tmp_path):
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    link = tmp_path / "link.mp4"
    link.symlink_to(tmp_path / "fifo.mp4")
    made = [fifo, link]
    if os.geteuid() == 0:
        device = tmp_path / "device.mp4"
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
        made.append(device)
    return made


def test_a_fifo_a_device_or_a_link_is_refused_without_blocking(tmp_path):
    outcomes = {}

    def try_open(path):
        try:
            open_regular(str(path)).close()
            outcomes[path] = "opened"
        except (SourceChanged, SourceUnreadable) as exc:
            outcomes[path] = type(exc).__name__

    for path in special_files(tmp_path):
        opener = threading.Thread(target=try_open, args=(path,), daemon=True)
        opener.start()
        opener.join(5)
        assert not opener.is_alive(), f"opening {path.name} blocked"
    # ELOOP: links are not followed; what the file refuses is the file's fault.
    assert outcomes.pop(tmp_path / "link.mp4") == "SourceUnreadable"
    assert set(outcomes.values()) == {"SourceChanged"}


def test_a_fifo_renamed_over_a_stream_s_file_is_another_file(tmp_path):
    path = tmp_path / "rec.mp4"
    path.write_bytes(b"0123456789")
    record = record_of(path)
    os.unlink(path)
    os.mkfifo(path)
    with pytest.raises(SourceChanged, match="not a regular file"):
        digest(SHA256, Span(record, 0, 4))


@pytest.mark.skipif(os.geteuid() != 0, reason="compares root with an unprivileged user")
def test_whether_the_kernel_can_tell_a_file_is_open_for_writing():
    """Root has CAP_LEASE; `nobody` can lease only its own files, and says why not."""
    shared = tempfile.TemporaryDirectory(prefix="lease-")  # where `nobody` may write
    tmp_path = Path(shared.name)
    tmp_path.chmod(0o777)
    assert raise_capability(CAP_LEASE) and lease_blindness(str(tmp_path)) is None
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # as `nobody`, without CAP_LEASE
        try:
            os.setgid(65534)
            os.setuid(65534)
            raised = raise_capability(CAP_LEASE)  # not permitted: not raised
            os.write(write, f"{raised} {lease_blindness(str(tmp_path))}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        said = answer.read()
    os.waitpid(child, 0)
    assert said.startswith("False no CAP_LEASE: only files owned by uid 65534"), said
    assert os.listdir(tmp_path) == [], "the probe file is gone"
    shared.cleanup()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a filesystem needs root")
@pytest.mark.parametrize("name", ["a mount", "Kamera-Ö"])
def test_the_filesystem_of_a_directory_is_the_one_mounted_deepest_above_it(tmp_path, name):
    """A space is escaped in /proc/self/mountinfo; a non-ASCII name is there as its bytes."""
    mount = tmp_path / name
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        (mount / "below").mkdir()
        assert filesystem_type(str(mount / "below")) == "tmpfs"
        assert timestamp_granularity_ns(str(mount)) == 0
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a filesystem needs root")
def test_a_card_mounted_in_a_folder_below_the_watch_directory_has_its_own_timestamps(
    tmp_path, monkeypatch
):
    """The rule for coarse timestamps goes by the filesystem of each file's folder, not of
    the watch directory (here tmpfs stands in for FAT, which this kernel may not have)."""
    card = tmp_path / "Kamera-Ö"
    card.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(card)], check=True)
    try:
        assert filesystem_type(str(tmp_path)) != "tmpfs", "the watch directory is not the card"
        monkeypatch.setattr(fileio, "COARSE_TIMESTAMPS", frozenset({"tmpfs"}))
        known: dict[int, int] = {}
        assert file_granularity_ns(str(card / "clip.mp4"), known) == fileio.COARSE_NS
        assert file_granularity_ns(str(tmp_path / "clip.mp4"), known) == 0
        assert len(known) == 2
        assert file_granularity_ns(str(tmp_path / "gone/clip.mp4"), known) == fileio.COARSE_NS
    finally:
        subprocess.run(["umount", "-l", str(card)], check=False)
