"""The checks `run` and `doctor` share before streamer works: the watch directory is one,
the checkpoint directory is one (or can be made), no daemon holds the store (asked without
keeping the lock), the store is the configured instance's, and the bucket is there (or
made, with s3.create_bucket). Each failure is one `Unmet`: what is wrong, and what to do.
On real directories, a real checkpoint store and the directory-backed S3 store
(tests/dirstore.py)."""

from __future__ import annotations

import os

import pytest
from dirstore import DirectoryStore

from streamer import checkpoint, preflight
from streamer.checkpoint import CheckpointStore
from streamer.failures import hint
from streamer.objectstore import BucketMissing
from streamer.preflight import Unmet

MAP_SIZE = 64 * 1024 * 1024


def test_the_watch_directory_must_be_a_directory(tmp_path):
    preflight.watch_directory(str(tmp_path))
    a_file = tmp_path / "cam.mp4"
    a_file.write_bytes(b"")
    for path in (tmp_path / "missing", a_file):
        with pytest.raises(Unmet) as caught:
            preflight.watch_directory(str(path))
        assert caught.value.detail == f"watch.directory {path} is not a directory"
        assert caught.value.hint == "create it, or set watch.directory"
        assert str(caught.value) == f"{caught.value.detail}: {caught.value.hint}"


def test_a_checkpoint_directory_exists_with_its_store_or_can_be_made(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"), MAP_SIZE)
    store.close()
    assert preflight.checkpoint_directory(str(tmp_path / "store")) is True
    later = tmp_path / "not" / "yet"
    assert preflight.checkpoint_directory(str(later)) is False, "made by `run` at its start"
    assert not (tmp_path / "not").exists(), "a check makes nothing"


def test_a_checkpoint_directory_that_cannot_be_one_is_unmet_and_says_where(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_bytes(b"")
    with pytest.raises(Unmet, match=r"checkpoint\.path .*taken is not a directory writable"):
        preflight.checkpoint_directory(str(a_file))
    below = a_file / "store"
    with pytest.raises(Unmet) as caught:
        preflight.checkpoint_directory(str(below))
    assert caught.value.detail == (
        f"checkpoint.path {below} does not exist and cannot be created in {a_file}"
    )
    assert "set checkpoint.path" in caught.value.hint


def test_a_store_a_daemon_holds_is_unmet_and_asking_never_keeps_the_lock(tmp_path):
    path = str(tmp_path / "store")
    CheckpointStore(path, MAP_SIZE).close()
    preflight.store_unheld(path)  # no daemon ever ran on it: no lock file
    held = checkpoint.lock_store(path)
    try:
        with pytest.raises(Unmet) as caught:
            preflight.store_unheld(path)
        assert f"(pid {os.getpid()})" in caught.value.detail
        assert caught.value.hint == preflight.STORE_HELD_HINT
    finally:
        os.close(held)
    preflight.store_unheld(path)
    os.close(checkpoint.lock_store(path))  # a daemon starting after the check is not held up


def test_the_configured_instance_must_be_the_store_s(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"), MAP_SIZE)
    try:
        preflight.same_instance("cam-host", store.instance())  # a new store: any name
        store.claim_instance("cam-host", "default-host")
        preflight.same_instance("cam-host", store.instance())
        preflight.same_instance("", store.instance())  # none configured: the store's
        with pytest.raises(Unmet) as caught:
            preflight.same_instance("other-host", store.instance())
    finally:
        store.close()
    assert "'other-host' in the configuration" in caught.value.detail
    assert "belongs to instance 'cam-host'" in caught.value.detail


def test_a_missing_bucket_is_made_only_with_create_bucket_and_its_hint_says_so(tmp_path):
    s3 = DirectoryStore(tmp_path / "s3", bucket="recordings")
    with pytest.raises(BucketMissing, match="'recordings' does not exist") as caught:
        preflight.bucket(s3, create=False)
    assert hint(caught.value, True) == {"hint": preflight.BUCKET_HINT}
    assert "s3.create_bucket=true" in preflight.BUCKET_HINT
    assert not (tmp_path / "s3" / "recordings").exists()
    assert preflight.bucket(s3, create=True) == "created"
    assert preflight.bucket(s3, create=False) == "present"
    assert preflight.bucket(s3, create=True) == "present"
