"""What `streamer run` needs before it can work, checked the same way by `run` as it
starts and by `doctor`: each check says what is wrong in one wording, with one hint of what
to do. `run` stops at the first that fails (`start_failed`, exit 3), or for S3, which its
uploaders ask, says so and tries again; `doctor` tries them all and lists them."""

from __future__ import annotations

import fcntl
import os

from streamer import checkpoint

# What to do when S3 does not answer; a refusal's hint is failures.REJECTED_HINT.
S3_HINT = "check s3.endpoint and s3.secure, and that the server runs and is reachable from here"
BUCKET_HINT = (
    "create the bucket (`mc mb ALIAS/BUCKET`, or in the provider's console), or set "
    "s3.create_bucket=true for streamer to create it"
)
STORE_HELD_HINT = (
    "a store takes one daemon: stop that one first (`streamer status` shows how it does), or "
    "give this one a checkpoint store of its own (checkpoint.path, STREAMER_CHECKPOINT_PATH)"
)
LEASE_HINT = (
    "grant CAP_LEASE (docker: cap_add LEASE; systemd: AmbientCapabilities) or run as the "
    "recorders' user"
)
# The store's files, which `run` opens for reading and writing.
STORE_FILES = ("data.mdb", "lock.mdb", checkpoint.LOCK_FILE)


class Unmet(Exception):
    """A check found what `run` needs missing: what is wrong, and what to do."""

    def __init__(self, detail: str, hint: str):
        super().__init__(f"{detail}: {hint}")
        self.detail, self.hint = detail, hint


def watch_directory(path: str) -> None:
    """watch.directory is a directory streamer may read."""
    if not os.path.isdir(path):
        raise Unmet(
            f"watch.directory {path} is not a directory", "create it, or set watch.directory"
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise Unmet(
            f"watch.directory {path} is not readable by uid {os.geteuid()}",
            "give this user read access to it, or set watch.directory",
        )


def checkpoint_directory(path: str) -> bool:
    """checkpoint.path is a directory streamer may write, its store's files too, or one it
    can create; returns whether it exists."""
    uid = os.geteuid()
    if not os.path.exists(path):
        parent = nearest_existing(path)
        if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
            return False
        raise Unmet(
            f"checkpoint.path {path} does not exist and cannot be created in {parent}",
            f"create it, writable by uid {uid}, or set checkpoint.path",
        )
    files = [os.path.join(path, name) for name in STORE_FILES]
    usable = os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)
    if not usable or not all(os.access(f, os.R_OK | os.W_OK) for f in files if os.path.exists(f)):
        raise Unmet(
            f"checkpoint.path {path} is not a directory writable by uid {uid}, its files too",
            f"make it and its files writable by uid {uid}, or set checkpoint.path",
        )
    return True


def store_unheld(path: str) -> None:
    """No daemon runs on the checkpoint store. Asked of its lock (checkpoint.lock_store),
    held only while asking: a daemon starting meanwhile waits that long, no longer."""
    try:
        fd = os.open(os.path.join(path, checkpoint.LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # no daemon ever ran on it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        raise Unmet(str(checkpoint.StoreLocked(path, holder)), STORE_HELD_HINT) from None
    finally:
        os.close(fd)


def same_instance(configured: str, stored: str | None) -> None:
    """The configured instance name is the store's, fixed at its first start: the keys it
    recorded in S3 are under that one."""
    if configured and stored and configured != stored:
        raise Unmet(
            f"instance is {configured!r} in the configuration, but this checkpoint store "
            f"belongs to instance {stored!r}",
            "set instance to the store's, or point checkpoint.path at another store",
        )


def bucket(s3, create: bool) -> str:
    """The bucket is there: `present`, or `created` now (s3.create_bucket). Raises
    chunkstore.BucketMissing, whose hint is BUCKET_HINT, or S3's error."""
    return "created" if s3.ensure_bucket(create) else "present"


def nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path
