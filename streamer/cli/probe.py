"""Asking the running daemon how it is, over its metrics endpoint (/healthz, /readyz,
/metrics): for `status` and `health`."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request

from streamer.config import Config

TIMEOUT = 3.0


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


def healthy(config: Config) -> tuple[bool, str]:
    """Does the daemon's loop turn? (/healthz)"""
    status, body = get(config, "/healthz")
    try:
        said = json.loads(body)["status"]
    except (ValueError, KeyError, TypeError):
        raise NotReachable(f"{base_url(config)}/healthz: not the daemon's answer") from None
    return status == 200 and said == "ok", body.decode(errors="replace").strip()


def readiness(config: Config) -> dict:
    """/readyz's checks: s3, checkpoint, uploaders, running."""
    _, body = get(config, "/readyz")
    try:
        checks = json.loads(body)["checks"]
        return {name: checks[name] for name in ("s3", "checkpoint", "uploaders")}
    except (ValueError, KeyError, TypeError):
        raise NotReachable(f"{base_url(config)}/readyz: not the daemon's answer") from None


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
