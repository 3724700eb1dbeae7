"""`streamer checkpoint backup|adopt` (streamer/cli/store.py) through click's CliRunner in
this process, on a real checkpoint store: the copy backup makes and what it refuses, and
what adopt does before it asks S3 anything (it asks first; it will not run beside a daemon)
or when S3 cannot be reached. No daemon and no S3 server."""

from __future__ import annotations

import os

import pytest
from commands import MAP_SIZE, configured, nothing_listening, stored, stream, streamer

from streamer import checkpoint
from streamer.checkpoint import CheckpointStore, lock_store
from streamer.records import StreamState


@pytest.fixture
def store_path(tmp_path, monkeypatch):
    """A store that has started: streams in it, its instance claimed, a start begun."""
    configured(tmp_path, monkeypatch)
    path = tmp_path / "checkpoint"
    stored(path, stream("cam-1"), stream("cam-2", StreamState.ACTIVE))
    store = CheckpointStore(str(path), MAP_SIZE)
    store.claim_instance("test-host", "test-host")
    store.begin_start()
    store.close()
    return path


def opened(path) -> CheckpointStore:
    return CheckpointStore(str(path), MAP_SIZE, readonly=True)


def test_backup_copies_every_stream_and_chunk_and_the_copy_knows_none_of_the_starts(
    store_path, tmp_path
):
    copy = tmp_path / "backup"
    made = streamer("checkpoint", "backup", str(copy))
    assert made.exit_code == 0, made.stderr
    assert made.stdout == f"checkpoint store copied to {copy}\n"
    original, backup = opened(store_path), opened(copy)
    try:
        assert list(backup.streams()) == list(original.streams())
        assert backup.chunks("cam-1") == original.chunks("cam-1") != []
        assert backup.instance() == "test-host"
        assert original.claim_starts()[0] is not None, "the store keeps its start"
        assert backup.claim_starts() == (None, [], True), "put back, it finds itself behind"
    finally:
        original.close()
        backup.close()


def test_backup_refuses_a_destination_that_is_not_empty_and_leaves_it_as_it_was(
    store_path, tmp_path
):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    refused = streamer("checkpoint", "backup", str(full))
    assert refused.exit_code == 1
    assert refused.stderr == f"streamer: backup destination {full} is not empty\n"
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    a_file = streamer("checkpoint", "backup", str(full / "notes.txt"))
    assert a_file.exit_code == 2 and "is a file" in a_file.stderr


def test_backup_without_a_store_says_so_and_makes_nothing(tmp_path, monkeypatch):
    configured(tmp_path, monkeypatch)
    missing = streamer("checkpoint", "backup", str(tmp_path / "backup"))
    assert missing.exit_code == 1 and "no checkpoint store at" in missing.stderr
    assert not (tmp_path / "backup").exists()


def test_adopt_asks_first_and_declined_touches_nothing(store_path):
    declined = streamer("checkpoint", "adopt", input="n\n")
    assert declined.exit_code == 1
    assert "Take over the instance's records in S3 with this store?" in declined.stdout
    assert not (store_path / checkpoint.LOCK_FILE).exists(), "the store was not even opened"


def test_adopt_will_not_run_beside_a_daemon_on_the_store(store_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "LOCK_WAIT", 0.1)
    daemon = lock_store(str(store_path))  # as a running daemon holds it
    try:
        refused = streamer("checkpoint", "adopt", "--yes")
    finally:
        os.close(daemon)
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"streamer: another streamer daemon (pid {os.getpid()}) runs on the checkpoint store "
        f"{store_path}: stop it first\n"
    )


def test_adopt_with_s3_away_exits_3_and_takes_nothing_over(store_path, monkeypatch):
    with nothing_listening() as port:
        s3 = {"endpoint": f"127.0.0.1:{port}", "access_key": "key", "secret_key": "secret"}
        configured(store_path.parent, monkeypatch, s3={**s3, "connect_timeout": 1})
        away = streamer("checkpoint", "adopt", "--yes")
    assert away.exit_code == 3, away.stderr
    assert away.stderr.startswith("streamer: S3 cannot be reached or refused: ")
    assert away.stderr.endswith("; nothing was taken over\n")
    store = opened(store_path)
    try:
        assert store.get_stream("cam-2").state is StreamState.ACTIVE
    finally:
        store.close()
