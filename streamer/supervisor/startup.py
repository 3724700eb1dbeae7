"""Before the supervisor's loop: the directories it needs are there, the checkpoint store
is ready for the uploaders and this host's instance name settled, and whether retention
can tell that a recording is still being written."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

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


LOCK_FILE = "daemon.lock"
LOCK_WAIT = 2.0  # seconds: a daemon exiting just now lets go of the store


def lock_store(config: Config) -> int:
    """One daemon per checkpoint store: two would take up the same files as two streams
    each (a cron `run --once` over a run still going, say). The lock goes with the
    supervisor's process; its uploaders close their copy of it."""
    path = os.path.join(config.checkpoint.path, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OSError(
                f"another streamer daemon (pid {holder}) runs on the checkpoint store "
                f"{config.checkpoint.path}"
            ) from None
    with contextlib.suppress(OSError):  # the pid is for the message only: a full disk
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


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
