"""Before the supervisor's loop: the directories it needs are there, the checkpoint store
is ready for the uploaders and this host's instance name settled, and whether retention
can tell that a recording is still being written."""

from __future__ import annotations

import os

import msgspec

from streamer import metrics, naming
from streamer.config import Config
from streamer.fileio import CAP_LEASE, lease_blindness, raise_capability
from streamer.supervisor.context import Context


def check_directories(config: Config) -> None:
    if not os.path.isdir(config.watch.directory):
        raise OSError(f"watch.directory {config.watch.directory} is not a directory")
    path = config.checkpoint.path
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK):
        raise OSError(f"checkpoint.path {path} is not writable")


def check_leases(ctx: Context) -> None:
    raise_capability(CAP_LEASE)  # where the image and the container grant it
    blind = lease_blindness(ctx.config.watch.directory)
    metrics.RETENTION_BLIND.set(1 if blind else 0)
    if blind:
        ctx.log.warning(
            "retention_blind",
            reason=blind,
            min_age=ctx.config.retention.min_age,
            message="whether a recording is still open for writing cannot be known: "
            "retention.min_age is the only guard; set it above your recorders' "
            "longest pause",
        )


def prepare_store(ctx: Context) -> None:
    """Before any uploader opens it: clear what killed processes left, settle this
    host's instance name, which every uploader then writes its keys under, and begin a
    start, which the first uploader moves the instance's claim in S3 on to."""
    ctx.open_store()
    try:
        cleared = ctx.store.clear_stale_readers()
        if cleared:
            ctx.log.info("stale_readers_cleared", count=cleared)
        instance = ctx.store.claim_instance(ctx.config.instance, naming.host_instance())
        ctx.store.begin_start()
    finally:
        ctx.close_store()
    ctx.config = msgspec.structs.replace(ctx.config, instance=instance)
    ctx.log.info("instance", instance=instance)
