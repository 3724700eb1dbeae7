"""What `run` says as it starts (what is watched, where it goes) and as it stops (where
each unfinished stream stands), in text and in JSON."""

from __future__ import annotations

import json

import pytest
from conftest import parse_logfmt, wait_until
from harness import cli

KiB = 1024


def run_lines(daemon) -> list[dict]:
    """This run's text lines, parsed."""
    return [parse_logfmt(e["text"]) for e in daemon.read_events()[daemon.runs[-1].first_event :]]


@pytest.mark.integration
def test_a_text_log_says_what_is_watched_where_it_goes_and_where_unfinished_streams_stand(
    make_daemon,
):
    # A tail shorter than a chunk waits for the idle timeout: the stream stays unfinished.
    daemon = make_daemon(log={"format": "text"}, stream={"idle_timeout": 60})
    (daemon.watch / "cam1.mp4").write_bytes(b"c" * 200 * KiB)
    daemon.start(wait=False)
    wait_until(lambda: any(e["event"] == "started" for e in daemon.read_events()), 30)
    first, second = run_lines(daemon)[:2]
    assert (first["event"], first["watching"], first["pattern"]) == (
        "starting",
        str(daemon.watch),
        "*.mp4",
    )
    assert first["destination"] == f"s3://{daemon.bucket}/rec/test-host/"
    assert "config" not in first
    assert second["event"] == "settings"
    assert (second["s3.bucket"], second["s3.secret_key"], second["stream.chunk_size"]) == (
        daemon.bucket,
        "***",
        str(64 * KiB),
    )
    assert "{" not in daemon.read_events()[daemon.runs[-1].first_event + 1]["text"], "no JSON"
    assert "s3.session_token" not in second, "a setting with nothing in it is left out"

    def committed():
        shown = json.loads(cli(daemon, "streams", "list", "--json").stdout)
        return shown if shown and shown[0]["uploaded_bytes"] == 3 * 64 * KiB else None

    [stream] = wait_until(committed, 30, what="three chunks committed")
    assert daemon.stop() == 0
    texts = [e["text"] for e in daemon.read_events()[daemon.runs[-1].first_event :]]
    assert not [text for text in texts if '=""' in text], "no field with nothing in it"
    lines = run_lines(daemon)
    [unfinished] = [line for line in lines if line["event"] == "stream_still_active"]
    assert unfinished == {
        **{k: unfinished[k] for k in ("ts", "level", "role", "pid")},
        "event": "stream_still_active",
        "stream_id": stream["stream_id"],
        "path": str(daemon.watch / "cam1.mp4"),
        "phase": "streaming",
        "uploaded_bytes": str(3 * 64 * KiB),
        "size": str(200 * KiB),
    }
    assert lines[-1]["event"] == "stopped" and lines[-1]["active"] == "1"


@pytest.mark.integration
def test_a_json_log_keeps_every_event_and_names_the_store_s_instance(make_daemon):
    daemon = make_daemon(instance="cam-host").start()
    assert daemon.stop() == 0
    # No instance configured: the store keeps the one of its first start, not the host's.
    again = make_daemon(instance="").start()
    starting = again.find("starting", this_run=True)
    assert again.read_events()[again.runs[-1].first_event]["event"] == "starting"
    assert starting[0]["destination"] == f"s3://{again.bucket}/rec/cam-host/"
    assert starting[0]["config"]["s3"]["secret_key"] == "***"
    assert starting[0]["credentials"].startswith("static:")
    assert not again.find("settings"), "the settings are in `starting`'s config"
    assert again.stop() == 0
    stopped = again.find("stopped", this_run=True)[0]
    assert (stopped["exit_code"], stopped["active"]) == (0, 0)
    assert not again.find("stream_still_active")
