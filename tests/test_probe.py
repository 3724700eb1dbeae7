"""Asking the running daemon how it is (streamer/cli/probe.py): /healthz, /readyz and
/metrics as a tiny local HTTP server in a thread answers them (canned answers, the daemon's
and others'; tests/commands.py), a port where nothing listens, one that never answers, and,
with metrics off, the heartbeat file."""

from __future__ import annotations

import os
import socket
import time

import pytest
from commands import PARKED, READINESS, answering, nothing_listening, stream

from streamer.cli import probe
from streamer.config import CheckpointConfig, Config, MetricsConfig
from streamer.records import StreamState


def metrics_at(port: int, checkpoint: str = "/nonexistent") -> Config:
    return Config(metrics=MetricsConfig(port=port), checkpoint=CheckpointConfig(path=checkpoint))


METRICS = b"""# HELP streamer_bytes_uploaded_total Bytes uploaded
# TYPE streamer_bytes_uploaded_total counter
streamer_bytes_uploaded_total 1000.0
# HELP streamer_streams_finished_total Finished streams
# TYPE streamer_streams_finished_total counter
streamer_streams_finished_total{status="complete"} 3.0
"""


def test_a_wildcard_listen_address_is_asked_on_loopback_and_ipv6_in_brackets():
    def url(host: str) -> str:
        return probe.base_url(Config(metrics=MetricsConfig(host=host, port=9108)))

    assert [url(h) for h in ("0.0.0.0", "", "10.0.0.7")] == [
        "http://127.0.0.1:9108",
        "http://127.0.0.1:9108",
        "http://10.0.0.7:9108",
    ]
    assert url("::") == "http://[::1]:9108"
    assert url("fe80::1%eth0") == "http://[fe80::1%25eth0]:9108"


def test_healthz_tells_a_turning_loop_from_a_stalled_one_and_from_another_program():
    answers = {"/healthz": (200, {"status": "ok"})}
    with answering(answers) as port:
        config = metrics_at(port)
        assert probe.healthy(config)
        assert probe.liveness(config) == probe.Liveness(probe.OK, 200, None)
        answers["/healthz"] = (503, {"status": "stalled", "seconds_since_loop": 42.4})
        assert not probe.healthy(config)
        assert probe.liveness(config) == probe.Liveness(
            probe.STALLED, 503, 42.4, "unhealthy: the daemon's loop last turned 42 s ago"
        )
        for other in [(200, b"hello"), (503, {"status": "ok"}), (200, {"state": "ok"})]:
            answers["/healthz"] = other
            said = probe.liveness(config)
            assert said.status == probe.NOT_RUNNING, other
            assert said.error == f"http://127.0.0.1:{port}/healthz: not the daemon's answer"


def test_with_nothing_listening_the_daemon_is_not_running_and_nothing_waits():
    with nothing_listening() as port:
        config = metrics_at(port)
        with pytest.raises(probe.NotReachable, match=f"^no answer at http://127.0.0.1:{port}: "):
            probe.get(config, "/healthz")
        said = probe.liveness(config)
        assert (said.status, said.http_status) == (probe.NOT_RUNNING, None)
        assert "Connection refused" in said.error
        assert probe.waiting(config) == {}, "shown by their state in the store alone"


def test_a_daemon_that_never_answers_is_given_up_on_after_the_timeout(monkeypatch):
    monkeypatch.setattr(probe, "TIMEOUT", 0.3)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        config = metrics_at(silent.getsockname()[1])
        with pytest.raises(probe.NotReachable, match="timed out"):
            probe.get(config, "/healthz")


def test_readyz_gives_the_parked_and_stuck_streams_by_id_even_when_not_ready():
    stuck = {**PARKED, "stream_id": "cam-2", "heals": False}
    checks = {**READINESS, "streams": {"ok": False, "parked": [PARKED], "stuck": [stuck]}}
    answers = {"/readyz": (503, {"ready": False, "checks": checks})}
    with answering(answers) as port:
        config = metrics_at(port)
        assert probe.readiness(config)["uploaders"] == {"ok": True, "alive": 2, "expected": 2}
        waiting = probe.waiting(config)
        assert waiting == {
            "cam-1": {**PARKED, "condition": "parked"},
            "cam-2": {**stuck, "condition": "stuck"},
        }
        active, done = stream("cam-1", StreamState.ACTIVE), stream("cam-2")
        assert (probe.state_of(active, waiting), probe.state_of(done, waiting)) == (
            "parked",
            "complete",
        ), "a finished stream is what the store says"
        answers["/readyz"] = (200, {"ready": True, "checks": {"s3": {"ok": True}}})
        with pytest.raises(probe.NotReachable, match="/readyz: not the daemon's answer"):
            probe.readiness(config)
        assert probe.waiting(config) == {}
    off = Config(metrics=MetricsConfig(enabled=False, port=port))
    assert probe.waiting(off) == {}, "metrics off: not asked"


def test_metrics_gives_the_samples_without_labels_and_refuses_what_is_not_them():
    answers = {"/metrics": (200, METRICS)}
    with answering(answers) as port:
        config = metrics_at(port)
        assert probe.samples(config) == {"streamer_bytes_uploaded_total": 1000.0}
        answers["/metrics"] = (500, b"oops")
        with pytest.raises(probe.NotReachable, match=r"/metrics answered 500$"):
            probe.samples(config)
        answers["/metrics"] = (200, b"hello, not Prometheus {{\n")
        with pytest.raises(probe.NotReachable, match="/metrics: not the daemon's answer"):
            probe.samples(config)


def heartbeat_in(checkpoint) -> Config:
    return Config(
        metrics=MetricsConfig(enabled=False), checkpoint=CheckpointConfig(path=str(checkpoint))
    )


def test_with_metrics_off_liveness_reads_the_heartbeat_file(tmp_path):
    config = heartbeat_in(tmp_path)
    never = probe.liveness(config)
    assert (never.status, never.error) == (
        probe.NOT_RUNNING,
        f"no heartbeat in {tmp_path}: the daemon has not run there",
    )
    (tmp_path / "heartbeat").touch()
    fresh = probe.liveness(config)
    assert (fresh.status, fresh.http_status, fresh.error) == (probe.OK, None, None)
    assert 0 <= fresh.seconds_since_loop < 1
    old = time.time() - 60
    os.utime(tmp_path / "heartbeat", (old, old))
    stale = probe.liveness(config)
    assert stale.status == probe.STALLED and stale.seconds_since_loop >= 60
    assert stale.error == "unhealthy: the daemon's loop last turned 60 s ago"
    not_a_directory = tmp_path / "file"
    not_a_directory.touch()
    error = f"cannot read the heartbeat in {not_a_directory}: Not a directory"
    blind = probe.liveness(heartbeat_in(not_a_directory))
    assert blind == probe.Liveness(probe.UNKNOWN, None, None, error)
