"""`streamer status`: one screen of the streams (from the checkpoint store) and, when its
metrics endpoint answers, of the daemon itself."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import click
import msgspec

from streamer.cli import display, probe
from streamer.cli.common import config_option, json_option, load_or_exit, open_store, summary
from streamer.config import Config
from streamer.records import StreamState

RATE_SAMPLE = 1.0  # seconds between the two readings an upload rate is taken from
INTERNAL = ("at", "uploaded")  # what a reading keeps for the next rate, not for --json


@click.command(short_help="The daemon, streams by state, and the active streams' progress.")
@config_option
@json_option
@click.option(
    "--watch",
    "interval",
    type=click.FloatRange(min=0.5),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh in place every SECONDS (2 by default) until Ctrl-C.",
)
def status(config_path: str | None, as_json: bool, interval: float | None) -> None:
    """One screen: the daemon (running, S3, upload rate, how far behind), the instance
    its keys are under, streams by state, and how far each active stream has got."""
    cfg = load_or_exit(config_path)
    if interval is None:
        show(cfg, config_path, as_json, view_daemon(cfg, previous=None))
        return
    previous = None
    try:
        while True:
            daemon = view_daemon(cfg, previous)
            click.clear()
            show(cfg, config_path, as_json, daemon)
            click.echo(f"\nevery {interval:g} s; Ctrl-C to stop", err=True)
            previous = daemon
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


def show(cfg: Config, config_path: str | None, as_json: bool, daemon: dict) -> None:
    with open_store(config_path, readonly=True) as store:
        records = list(store.streams())
        instance = store.instance()
    waiting = daemon.get("waiting", {})
    states = [probe.state_of(r, waiting) for r in records]
    counts = {s: states.count(s) for s in (*(s.value for s in StreamState), *probe.WAITING)}
    active = [
        {**summary(r), "state": state, "on_disk": size_on_disk(r.path)}
        for r, state in zip(records, states, strict=True)
        if r.state is StreamState.ACTIVE
    ]
    if as_json:
        shown = {k: v for k, v in daemon.items() if k not in INTERNAL}
        click.echo(
            msgspec.json.encode(
                {"daemon": shown, "instance": instance, "streams": counts, "active": active}
            )
        )
        return
    for line in daemon_lines(daemon):
        click.echo(line)
    click.echo(labelled("instance", display.value(instance)))
    click.echo(labelled("streams", ", ".join(f"{n} {state}" for state, n in counts.items())))
    if not active:
        return
    now = datetime.now(UTC)
    rows = []
    for a in active:
        uploaded, on_disk = a["uploaded_bytes"], a["on_disk"]
        rows.append(
            (
                a["stream_id"],
                display.bar(uploaded, on_disk if on_disk is not None else uploaded),
                display.size(uploaded),
                display.size(on_disk) if on_disk is not None else "gone",
                display.ago(a["last_upload_at"], now),
            )
        )
    click.echo()
    headers = ("STREAM", "PROGRESS", "UPLOADED", "ON DISK", "LAST UPLOAD")
    for line in display.table(headers, rows, right={2, 3}):
        click.echo(line)
    for a in active:
        if (w := waiting.get(a["stream_id"])) is not None:
            due = f", tried again in {display.seconds(w['due_in'])}" if w["due_in"] else ""
            click.echo(f"{a['stream_id']} {w['condition']}: {w['reason']}{due}")


def size_on_disk(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def view_daemon(cfg: Config, previous: dict | None) -> dict:
    """What the daemon says of itself, raw numbers; `running` False with the reason when
    it does not answer. The upload rate is taken over RATE_SAMPLE seconds, or since
    `previous` (a refresh)."""
    if not cfg.metrics.enabled:
        return {"running": None, "error": "metrics.enabled is false: the daemon cannot be asked"}
    try:
        healthy = probe.healthy(cfg)
        checks = probe.readiness(cfg)
        if previous is None or not previous.get("running"):
            previous = {"at": time.monotonic(), **readings(probe.samples(cfg))}
            time.sleep(RATE_SAMPLE)
        now = {"at": time.monotonic(), **readings(probe.samples(cfg))}
    except probe.NotReachable as exc:
        return {"running": False, "error": str(exc)}
    elapsed = max(1e-3, now["at"] - previous["at"])
    return {
        **now,
        "running": True,
        "healthy": healthy,
        "s3_reachable": checks["s3"]["ok"],
        "s3_error": checks["s3"].get("error") or None,
        "checkpoint_writable": checks["checkpoint"]["ok"],
        "uploaders_alive": checks["uploaders"].get("alive"),
        "uploaders_expected": checks["uploaders"].get("expected"),
        "waiting": probe.by_stream(checks["streams"]),
        "upload_rate": max(0.0, now["uploaded"] - previous["uploaded"]) / elapsed,
    }


def readings(samples: dict[str, float]) -> dict:
    on_disk = samples.get("streamer_delivery_bytes_on_disk", 0)
    committed = samples.get("streamer_delivery_bytes_committed", 0)
    return {
        "uploaded": samples.get("streamer_bytes_uploaded_total", 0),
        "bytes_behind": max(0, int(on_disk - committed)),
        "oldest_uncommitted_seconds": samples.get(
            "streamer_delivery_oldest_uncommitted_age_seconds", 0
        ),
        "seconds_since_last_upload": samples.get("streamer_seconds_since_last_upload"),
    }


def daemon_lines(daemon: dict) -> list[str]:
    if not daemon["running"]:
        state = "unknown" if daemon["running"] is None else "not running"
        return [labelled("daemon", f"{state} ({daemon['error']})")]
    s3 = "reachable" if daemon["s3_reachable"] else f"UNREACHABLE ({daemon['s3_error']})"
    loop = "running" if daemon["healthy"] else "STALLED (its loop has not turned for 10 s)"
    alive, expected = daemon["uploaders_alive"], daemon["uploaders_expected"]
    return [
        labelled("daemon", f"{loop}, {alive} of {expected} uploaders"),
        labelled("s3", s3),
        labelled("checkpoint", "writable" if daemon["checkpoint_writable"] else "NOT WRITABLE"),
        labelled(
            "upload",
            f"{display.rate(daemon['upload_rate'])}, "
            f"{display.size(daemon['bytes_behind'])} on disk not yet committed, "
            f"the oldest for {display.seconds(daemon['oldest_uncommitted_seconds'])}",
        ),
    ]


def labelled(label: str, text: str) -> str:
    return f"{label + ':':<12}{text}"
