"""Asking the running daemon how it is, over its metrics endpoint (/healthz, /readyz,
/metrics), or, with metrics off, by its heartbeat file: for `status` and `health`."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from streamer.config import Config
from streamer.health import HEALTHY_WITHIN, heartbeat_path, since_beat
from streamer.records import StreamRecord, StreamState

# Per connect and per read. The daemon answers at once however many other clients are
# connected; this is for one that does not, and stays well within the 5 s a container
# health check waits, so `health` says why rather than being cut off.
TIMEOUT = 2.0


class NotReachable(Exception):
    """No answer, or not one the daemon gives, from the daemon's endpoint (not running,
    metrics elsewhere, or another program on the port)."""


def base_url(config: Config) -> str:
    """Where this host's daemon answers: a wildcard listen address is asked on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(
        config.metrics.host, config.metrics.host
    )
    if ":" in host:
        host = f"[{urllib.parse.quote(host, safe=':')}]"  # an IPv6 zone's % too
    return f"http://{host}:{config.metrics.port}"


def get(config: Config, path: str) -> tuple[int, bytes]:
    """The status and body of GET `path`; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(base_url(config) + path, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotReachable(f"no answer at {base_url(config)}: {reason}") from None


def healthz(config: Config) -> float | None:
    """/healthz's answer: None while the daemon's loop turns (200), else the seconds since
    it last turned (503)."""
    status, body = get(config, "/healthz")
    try:
        said = json.loads(body)
        if (status, said["status"]) == (200, OK):
            return None
        since = said["seconds_since_loop"]
        if (status, said["status"]) == (503, STALLED) and isinstance(since, int | float):
            return float(since)
    except (ValueError, KeyError, TypeError):
        pass
    raise NotReachable(f"{base_url(config)}/healthz: not the daemon's answer")


def healthy(config: Config) -> bool:
    """Does the daemon's loop turn?"""
    return healthz(config) is None


OK, STALLED, NOT_RUNNING, UNKNOWN = "ok", "stalled", "not running", "unknown"


@dataclass(frozen=True)
class Liveness:
    """What `health` says: `status` ok, stalled (the loop has not turned for
    HEALTHY_WITHIN seconds), not running (no answer, or no heartbeat ever), or unknown
    (the heartbeat cannot be read); `error` says why it is not ok."""

    status: str
    http_status: int | None  # /healthz's; None with metrics off, or without an answer
    seconds_since_loop: float | None  # where known: /healthz gives it only when stalled
    error: str | None = None


def liveness(config: Config) -> Liveness:
    """Is the daemon of this configuration alive: /healthz, or with metrics off its
    heartbeat file in the checkpoint directory."""
    if config.metrics.enabled:
        try:
            since = healthz(config)
        except NotReachable as exc:
            return Liveness(NOT_RUNNING, None, None, str(exc))
        if since is None:
            return Liveness(OK, 200, None)
        return Liveness(STALLED, 503, since, f"unhealthy: {turned(since)}")
    directory = config.checkpoint.path
    try:
        since = since_beat(heartbeat_path(directory))
    except OSError as exc:
        error = f"cannot read the heartbeat in {directory}: {exc.strerror}"
        return Liveness(UNKNOWN, None, None, error)
    if since is None:
        error = f"no heartbeat in {directory}: the daemon has not run there"
        return Liveness(NOT_RUNNING, None, None, error)
    if since >= HEALTHY_WITHIN:
        return Liveness(STALLED, None, round(since, 1), f"unhealthy: {turned(since)}")
    return Liveness(OK, None, round(since, 1))


def turned(since: float) -> str:
    return f"the daemon's loop last turned {since:.0f} s ago"


def readiness(config: Config) -> dict:
    """/readyz's checks: s3, checkpoint, uploaders, streams (parked and stuck)."""
    _, body = get(config, "/readyz")
    try:
        checks = json.loads(body)["checks"]
        return {name: checks[name] for name in ("s3", "checkpoint", "uploaders", "streams")}
    except (ValueError, KeyError, TypeError):
        raise NotReachable(f"{base_url(config)}/readyz: not the daemon's answer") from None


WAITING = ("parked", "stuck")  # an active stream as the running daemon sees it


def waiting(config: Config) -> dict[str, dict]:
    """The streams the running daemon has parked or found stuck, by id, each with its
    `condition`, reason and times; none when the daemon cannot be asked (they are then
    shown by their state in the store alone)."""
    if not config.metrics.enabled:
        return {}
    try:
        return by_stream(readiness(config)["streams"])
    except NotReachable:
        return {}


def by_stream(streams: dict) -> dict[str, dict]:
    """/readyz's parked and stuck streams, by id, each with its `condition`."""
    return {
        s["stream_id"]: {**s, "condition": condition}
        for condition in WAITING
        for s in streams.get(condition, [])
    }


def samples(config: Config) -> dict[str, float]:
    """The daemon's metrics without labels (all processes aggregated), by sample name."""
    # Not at the top: prometheus_client fixes its mode when first imported, and `run`
    # must set PROMETHEUS_MULTIPROC_DIR before that.
    from prometheus_client.parser import text_string_to_metric_families

    status, body = get(config, "/metrics")
    if status != 200:
        raise NotReachable(f"{base_url(config)}/metrics answered {status}")
    found = {}
    try:
        for family in text_string_to_metric_families(body.decode(errors="replace")):
            for sample in family.samples:
                if not sample.labels:
                    found[sample.name] = sample.value
    except ValueError:
        raise NotReachable(f"{base_url(config)}/metrics: not the daemon's answer") from None
    return found


def state_of(record: StreamRecord, waiting: dict[str, dict]) -> str:
    """Its state in the store, or, while active, `parked` or `stuck` as the daemon says."""
    if record.state is StreamState.ACTIVE and record.stream_id in waiting:
        return waiting[record.stream_id]["condition"]
    return record.state.value
