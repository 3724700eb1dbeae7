"""`streamer streams list|show|cancel|retry|forget` (streamer/cli/streams.py) on a real
checkpoint store, through click's CliRunner in this process: what each shows, what it
changes in the store, and what it refuses, leaving the store as it was. No daemon (metrics
are off, or the daemon's word is given by hand) and no S3."""

from __future__ import annotations

import contextlib
import importlib
import json

import click
import msgspec
import pytest
from commands import MAP_SIZE, configured, stored, stream, streamer
from sample_records import NOW

from streamer.checkpoint import CheckpointStore
from streamer.cli import probe
from streamer.records import StreamRecord, StreamState

# The module, not the group of the same name that streamer.cli holds.
streams_command = importlib.import_module("streamer.cli.streams")


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    configured(tmp_path, monkeypatch)
    return tmp_path / "checkpoint"


def in_store(checkpoint, stream_id: str) -> StreamRecord | None:
    store = CheckpointStore(str(checkpoint), MAP_SIZE, readonly=True)
    try:
        return store.find_stream(stream_id)
    finally:
        store.close()


def test_list_shows_one_aligned_line_per_stream_and_filters_by_state(checkpoint):
    stored(checkpoint, stream("cam-1"), stream("cam-2", StreamState.CANCELLED, total_size=None))
    lines = streamer("streams", "list").stdout.splitlines()
    assert lines[0].split() == ["STREAM", "STATE", "UPLOADED", "CHUNKS", "LAST", "UPLOAD", "FILE"]
    assert lines[1].split()[:5] == ["cam-1", "complete", "300", "B", "3"]
    assert lines[2].split()[:2] == ["cam-2", "cancelled"] and lines[2].endswith("/in/cam-2.mp4")
    assert lines[1].index("/in/") == lines[2].index("/in/") == lines[0].index("FILE"), "aligned"
    only = streamer("streams", "list", "--state", "cancelled").stdout.splitlines()
    assert [line.split()[0] for line in only[1:]] == ["cam-2"]
    assert streamer("streams", "list", "--state", "partial").stdout == "no streams partial\n"
    listed = json.loads(streamer("streams", "list", "--json").stdout)
    assert [(s["stream_id"], s["state"], s["uploaded_bytes"]) for s in listed] == [
        ("cam-1", "complete", 300),
        ("cam-2", "cancelled", 300),
    ]


def test_an_active_stream_the_daemon_parked_is_listed_as_parked_with_why(checkpoint, monkeypatch):
    stored(checkpoint, stream("cam-1", StreamState.ACTIVE), stream("cam-2", StreamState.ACTIVE))
    parked = {
        "stream_id": "cam-1",
        "reason": "S3 away",
        "heals": True,
        "failing_for": 12.0,
        "due_in": 30.0,
        "condition": "parked",
    }
    monkeypatch.setattr(probe, "waiting", lambda config: {"cam-1": parked})
    shown = streamer("streams", "list")
    assert [line.split()[1] for line in shown.stdout.splitlines()[1:3]] == ["parked", "active"]
    assert shown.stdout.endswith("cam-1 parked: S3 away, tried again in 30 s\n")
    listed = json.loads(streamer("streams", "list", "--json", "--state", "parked").stdout)
    assert len(listed) == 1
    assert {k: listed[0][k] for k in ("stream_id", "state", "reason", "heals", "due_in")} == {
        "stream_id": "cam-1",
        "state": "parked",
        "reason": "S3 away",
        "heals": True,
        "due_in": 30.0,
    }


def test_show_gives_the_checkpoint_readably_and_its_chunk_table(checkpoint):
    stored(checkpoint, stream("cam-1"))
    shown = streamer("streams", "show", "cam-1").stdout
    assert "total size         300 B (300 bytes)\n" in shown
    assert "completed at       2026-12-06T00:00:30Z (" in shown
    assert "cancel requested   no\n" in shown and "None" not in shown
    table = shown.split("\n\n")[1].splitlines()
    assert table[0].split() == ["INDEX", "REV", "OFFSET", "SIZE", "UPLOADED", "DIGEST"]
    assert [row.split()[:4] for row in table[1:]] == [
        ["0", "0", "0", "100"],
        ["1", "0", "100", "100"],
        ["2", "0", "200", "100"],
    ]
    said = json.loads(streamer("streams", "show", "cam-1", "--json").stdout)
    assert said["state"] == "complete" and said["record"]["stream_id"] == "cam-1"
    assert [c["offset"] for c in said["chunks"]] == [0, 100, 200]
    unknown = streamer("streams", "show", "nope")
    assert unknown.exit_code == 1 and "no stream 'nope'" in unknown.stderr


def test_cancel_marks_an_active_stream_and_refuses_a_finished_one(checkpoint):
    stored(checkpoint, stream("live", StreamState.ACTIVE), stream("done"))
    cancelled = streamer("streams", "cancel", "live")
    assert cancelled.exit_code == 0
    assert cancelled.stdout == "live: cancel requested; the daemon finishes it as cancelled\n"
    assert in_store(checkpoint, "live").cancel_requested
    assert in_store(checkpoint, "live").state is StreamState.ACTIVE, "the daemon finishes it"
    refused = streamer("streams", "cancel", "done")
    assert refused.exit_code == 1
    assert refused.stderr == "streamer: stream done is complete already: nothing to cancel\n"
    assert not in_store(checkpoint, "done").cancel_requested
    unknown = streamer("streams", "cancel", "nope")
    assert unknown.exit_code == 1 and "no stream 'nope'" in unknown.stderr


def test_retry_puts_a_cancelled_stream_back_to_work_and_refuses_what_cannot_resume(checkpoint):
    stored(
        checkpoint,
        stream("stopped", StreamState.CANCELLED, cancel_requested=True, status_reason="asked"),
        stream("done"),
        stream("pruned", StreamState.PARTIAL, chunks_deleted_at=NOW),
    )
    retried = streamer("streams", "retry", "stopped")
    assert retried.exit_code == 0
    assert retried.stdout == "stopped: back to active; the daemon resumes it at its next scan\n"
    back = in_store(checkpoint, "stopped")
    assert back.state is StreamState.ACTIVE and not back.cancel_requested
    assert back.status_reason is None and back.completed_at is None
    assert back.committed_bytes == 300, "resumed where it was"
    refused = streamer("streams", "retry", "done")
    assert refused.exit_code == 1
    assert "stream done is complete: only cancelled or partial streams" in refused.stderr
    gone = streamer("streams", "retry", "pruned")
    assert gone.exit_code == 1
    assert "stream pruned cannot be retried: its chunks were deleted from S3 at " in gone.stderr
    assert in_store(checkpoint, "pruned").state is StreamState.PARTIAL


def test_forget_asks_first_removes_the_stream_and_its_chunks_and_refuses_an_active_one(
    checkpoint,
):
    stored(checkpoint, stream("done"), stream("live", StreamState.ACTIVE))
    declined = streamer("streams", "forget", "done", input="n\n")
    assert declined.exit_code == 1 and "Forget stream done (/in/done.mp4)?" in declined.stdout
    assert in_store(checkpoint, "done") is not None
    assert streamer("streams", "forget", "done", input="y\n").stdout.endswith("done: forgotten\n")
    store = CheckpointStore(str(checkpoint), MAP_SIZE, readonly=True)
    try:
        assert store.find_stream("done") is None and store.chunks("done") == []
        assert store.stream_at("/in/done.mp4") is None, "its file is a new stream again"
    finally:
        store.close()
    refused = streamer("streams", "forget", "live", "--yes")
    assert refused.exit_code == 1
    assert refused.stderr == "streamer: stream live is active: cancel it first\n"
    assert in_store(checkpoint, "live") is not None


def test_forget_checks_again_as_it_writes_and_keeps_a_stream_retried_while_asking(
    checkpoint, monkeypatch
):
    stored(checkpoint, stream("cam-1", StreamState.CANCELLED))
    opened = []
    real_open_store = streams_command.open_store

    @contextlib.contextmanager
    def keeping(*args, **kwargs):
        with real_open_store(*args, **kwargs) as store:
            opened.append(store)
            yield store

    def retried_meanwhile(*args, **kwargs):
        back = {"state": StreamState.ACTIVE, "cancel_requested": False}
        opened[0].update_stream("cam-1", lambda r: msgspec.structs.replace(r, **back))
        return True

    monkeypatch.setattr(streams_command, "open_store", keeping)
    monkeypatch.setattr(click, "confirm", retried_meanwhile)
    refused = streamer("streams", "forget", "cam-1")
    assert refused.exit_code == 1
    assert refused.stderr == (
        "streamer: stream cam-1 changed meanwhile: it is active now, no longer cancelled; "
        "nothing was forgotten\n"
    )
    assert in_store(checkpoint, "cam-1").state is StreamState.ACTIVE
