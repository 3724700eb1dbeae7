"""Before the supervisor's loop: the directories it needs are there, the checkpoint store
locked for this daemon, the metrics port bound, the store ready for the uploaders and this
host's instance name settled, and whether retention can tell that a recording is still
being written. What can fail on the host fails before the store is written: a start that
fails leaves a fresh store free to take another instance name."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import msgspec

from streamer import checkpoint, metrics, naming, preflight
from streamer.config import Config
from streamer.fileio import BLIND_MIN_AGE, CAP_LEASE, lease_blindness, raise_capability
from streamer.layout import Layout
from streamer.supervisor.context import SupervisorContext


def check_directories(config: Config) -> None:
    """As `doctor` checks them (preflight); raises preflight.Unmet."""
    preflight.watch_directory(config.watch.directory)
    if not preflight.checkpoint_directory(config.checkpoint.path):
        os.makedirs(config.checkpoint.path, exist_ok=True)


def lock_store(config: Config) -> int:
    path = config.checkpoint.path
    try:
        return checkpoint.lock_store(path)
    except checkpoint.StoreLocked as exc:
        raise preflight.Unmet(str(exc), preflight.STORE_HELD_HINT) from None


def destination(config: Config) -> str:
    """Where the recordings go, `s3://<bucket>/<prefix>/<instance>/`, with the instance
    name prepare_store settles: a store keeps the one of its first start. Asked once the
    store is locked for this daemon."""
    instance = config.instance
    if not instance and os.path.exists(os.path.join(config.checkpoint.path, "data.mdb")):
        store = checkpoint.CheckpointStore(config.checkpoint.path, config.checkpoint.map_size)
        try:
            instance = store.instance()
        finally:
            store.close()
    layout = Layout(config.s3.prefix, instance or naming.host_instance())
    return f"s3://{config.s3.bucket}/{layout.stream_prefix('')}"


def bind_metrics(
    config: Config, readiness: Callable[[], tuple[bool, dict]], since_loop: Callable[[], float]
) -> metrics.MetricsServer:
    """The metrics endpoint's port, bound (served once the loop runs)."""
    host, port = config.metrics.host, config.metrics.port
    try:
        return metrics.MetricsServer(host, port, readiness, since_loop)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why = "another process listens there, another streamer daemon perhaps"
        raise OSError(
            f"cannot serve metrics on {host}:{port} (metrics.host, metrics.port): {why}. "
            "Give this daemon a port of its own (metrics.port, STREAMER_METRICS_PORT; 0 takes "
            "any free port) or turn its metrics off (metrics.enabled false, "
            "STREAMER_METRICS_ENABLED=false)"
        ) from None


def check_leases(ctx: SupervisorContext) -> None:
    raise_capability(CAP_LEASE)  # where the image and the container grant it
    blind = lease_blindness(ctx.config.watch.directory)
    metrics.RETENTION_BLIND.set(1 if blind else 0)
    if blind:
        ctx.log.warning(
            "retention_blind",
            reason=blind,
            min_age=ctx.config.retention.min_age,
            blind_min_age=BLIND_MIN_AGE,
            message="whether a recording is still open for writing cannot be known: a file "
            f"no lease can be taken on is kept until its last write is {BLIND_MIN_AGE / 60:g} "
            "minutes old (or retention.min_age, if longer), and each such deletion is "
            "logged (source_deleted_blind)",
            hint=preflight.LEASE_HINT,
        )


def prepare_store(ctx: SupervisorContext) -> bool:
    """Before any uploader opens it: clear what killed processes left, settle this
    host's instance name, which every uploader then writes its keys under, and begin a
    start, which the first uploader moves the instance's claim in S3 on to. Returns
    whether this start fixed the name (a fresh store)."""
    ctx.open_store()
    try:
        cleared = ctx.store.clear_stale_readers()
        if cleared:
            ctx.log.info("stale_readers_cleared", count=cleared)
        stored = ctx.store.instance()
        preflight.same_instance(ctx.config.instance, stored)
        fresh = stored is None
        instance = ctx.store.claim_instance(ctx.config.instance, naming.host_instance())
        ctx.store.begin_start()
    finally:
        ctx.close_store()
    ctx.config = msgspec.structs.replace(ctx.config, instance=instance)
    ctx.log.info("instance", instance=instance)
    metrics.INSTANCE_INFO.labels(instance_name=instance).set(1)
    return fresh


def release_instance(ctx: SupervisorContext) -> None:
    """A start that fixed a fresh store's instance name and failed before any uploader
    reached S3 (the name claimed by another store, say): unless an uploader held the
    claim meanwhile, nothing was written under the name, and the store is left free to
    take another."""
    opened = ctx.store is None
    if opened:
        ctx.open_store()
    try:
        _, _, held = ctx.store.claim_starts()
        if not held:
            ctx.store.release_instance()
            ctx.log.info("instance_released", instance=ctx.config.instance)
    finally:
        if opened:
            ctx.close_store()
