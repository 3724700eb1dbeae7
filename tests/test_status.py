"""`streamer status` (streamer/cli/status.py) through click's CliRunner in this process, on
a real checkpoint store: what it says when no daemon answers or none can be asked, the
active streams' progress against their files on disk, the daemon's own view as a tiny local
server gives its canned answers (tests/test_probe.py), and --watch."""

from __future__ import annotations

import importlib
import json
import time

import pytest
from commands import READINESS, answering, configured, nothing_listening, stored, stream, streamer

from streamer.records import StreamState

status_command = importlib.import_module("streamer.cli.status")  # not the command itself


@pytest.fixture
def streams(tmp_path):
    """An active stream whose file has 600 bytes (300 uploaded), an active one whose file
    is gone, and a finished one."""
    on_disk = tmp_path / "cam-2.mp4"
    on_disk.write_bytes(b"x" * 600)
    return [
        stream("cam-1", StreamState.ACTIVE),
        stream("cam-2", StreamState.ACTIVE, path=str(on_disk)),
        stream("cam-3"),
    ]


def test_with_no_daemon_answering_it_says_not_running_and_shows_the_store(
    tmp_path, monkeypatch, streams
):
    with nothing_listening() as port:
        configured(tmp_path, monkeypatch, metrics={"enabled": True, "port": port})
        stored(tmp_path / "checkpoint", *streams)
        shown = streamer("status")
        said = json.loads(streamer("status", "--json").stdout)
    assert shown.exit_code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"daemon:     not running (no answer at http://127.0.0.1:{port}: ")
    assert lines[1] == "instance:   -"
    assert lines[2] == (
        "streams:    2 active, 1 complete, 0 partial, 0 invalid, 0 cancelled, 0 parked, 0 stuck"
    )
    assert said["daemon"]["running"] is False and "Connection refused" in said["daemon"]["error"]
    assert said["streams"]["active"] == 2 and said["streams"]["complete"] == 1


def test_the_active_streams_show_how_far_they_have_got_against_their_files(
    tmp_path, monkeypatch, streams
):
    configured(tmp_path, monkeypatch)
    stored(tmp_path / "checkpoint", *streams)
    shown = streamer("status")
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.startswith(
        "daemon:     unknown (metrics.enabled is false: the daemon cannot be asked)\n"
    )
    table = shown.stdout.split("\n\n")[1].splitlines()
    assert table[0].split() == ["STREAM", "PROGRESS", "UPLOADED", "ON", "DISK", "LAST", "UPLOAD"]
    rows = {row.split()[0]: row.split() for row in table[1:]}
    assert sorted(rows) == ["cam-1", "cam-2"], "the active ones only"
    assert rows["cam-2"][1:6] == ["[" + "#" * 12 + "." * 12 + "]", "300", "B", "600", "B"]
    assert rows["cam-1"][1:5] == ["[" + "#" * 24 + "]", "300", "B", "gone"]
    said = json.loads(streamer("status", "--json").stdout)
    assert said["daemon"] == {
        "running": None,
        "error": "metrics.enabled is false: the daemon cannot be asked",
    }
    on_disk = {a["stream_id"]: (a["uploaded_bytes"], a["on_disk"]) for a in said["active"]}
    assert on_disk == {"cam-1": (300, None), "cam-2": (300, 600)}


def test_the_daemon_s_own_view_its_upload_rate_and_a_parked_stream(tmp_path, monkeypatch, streams):
    monkeypatch.setattr(status_command, "RATE_SAMPLE", 0.2)

    def metrics(uploaded: int) -> tuple[int, bytes]:
        return 200, (
            f"streamer_bytes_uploaded_total {uploaded}\n"
            "streamer_delivery_bytes_on_disk 1500\n"
            "streamer_delivery_bytes_committed 1300\n"
            "streamer_delivery_oldest_uncommitted_age_seconds 5\n"
        ).encode()

    answers = {
        "/healthz": (200, {"status": "ok"}),
        "/readyz": (503, {"ready": False, "checks": READINESS}),
    }
    with answering(answers) as port:
        configured(tmp_path, monkeypatch, metrics={"enabled": True, "port": port})
        stored(tmp_path / "checkpoint", *streams)
        answers["/metrics"] = [metrics(1000), metrics(3048)]
        said = json.loads(streamer("status", "--json").stdout)
        answers["/metrics"] = [metrics(0)]
        shown = streamer("status")
    daemon = said["daemon"]
    assert 0 < daemon["upload_rate"] <= 2048 / 0.2, "over the sample, not since the start"
    assert (daemon["bytes_behind"], daemon["oldest_uncommitted_seconds"]) == (200, 5)
    assert (daemon["s3_reachable"], daemon["s3_error"]) == (False, "timeout")
    assert "uploaded" not in daemon and "at" not in daemon, "kept for the next rate only"
    assert said["active"][0]["state"] == "parked" and said["streams"]["parked"] == 1
    assert shown.stdout.startswith(
        "daemon:     running, 2 of 2 uploaders\n"
        "s3:         UNREACHABLE (timeout)\n"
        "checkpoint: writable\n"
        "upload:     0 B/s, 200 B on disk not yet committed, the oldest for 5 s\n"
    )
    assert shown.stdout.endswith("cam-1 parked: S3 away, tried again in 30 s\n")


def test_watch_refreshes_every_interval_until_ctrl_c(tmp_path, monkeypatch, streams):
    configured(tmp_path, monkeypatch)
    stored(tmp_path / "checkpoint", *streams)
    slept = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    watched = streamer("status", "--watch")
    assert watched.exit_code == 0
    assert slept == [2.0, 2.0]
    assert watched.stdout.count("daemon:     unknown") == 2
    assert watched.stderr == "\nevery 2 s; Ctrl-C to stop\n" * 2
    slept.clear()
    assert streamer("status", "--watch", "0.5").exit_code == 0 and slept == [0.5, 0.5]
    too_often = streamer("status", "--watch", "0.1")
    assert too_often.exit_code == 2 and "0.1 is not in the range x>=0.5" in too_often.stderr
