"""`streamer checkpoint …`: look after the checkpoint store."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import click

from streamer.checkpoint import CheckpointError, lock_store
from streamer.cli import display
from streamer.cli.common import config_option, fail, load_or_exit, open_store, s3_errors
from streamer.logs import describe


@click.group("checkpoint")
def checkpoint_group() -> None:
    """Look after the checkpoint store."""


@checkpoint_group.command("backup", short_help="Copy the checkpoint store while the daemon runs.")
@config_option
@click.argument("destination", type=click.Path(file_okay=False))
def backup(config_path: str | None, destination: str) -> None:
    """Copy the checkpoint store to DESTINATION (a new or empty directory), consistently,
    while the daemon runs. The copy knows it is a backup: to restore, put it in place of
    checkpoint.path and run `streamer checkpoint adopt`, which brings it up to S3's
    records first (the daemon refuses to start on it until then)."""
    with open_store(config_path, readonly=True) as store:
        try:
            store.backup(destination)
        except CheckpointError as exc:
            fail(str(exc))
    click.echo(f"checkpoint store copied to {destination}")


@checkpoint_group.command("adopt", short_help="Carry on with a store that S3 has moved on past.")
@config_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def adopt(config_path: str | None, yes: bool) -> None:
    """Carry on with this checkpoint store where S3 has moved on past it: a restored
    backup, or the store of a host that is gone for good, copied here. The daemon refuses
    to start on such a store (exit 3, `store_behind`). Every stream the store holds is
    first brought up to its metadata.json in S3 (S3's record wins where it is further
    along), then the instance's claim is moved on to this store, so that any other copy
    of it is refused in turn. Run it with the daemon stopped, and never while another
    host still runs with a copy of this store."""
    from streamer.adoption import adopt as take_over
    from streamer.chunkstore import ChunkStore
    from streamer.claim import InstanceTaken, NotMoved

    if not yes:
        click.confirm("Take over the instance's records in S3 with this store?", abort=True)
    cfg = load_or_exit(config_path)
    with open_store(config_path) as store, held_alone(cfg.checkpoint.path):
        s3 = ChunkStore(cfg.s3, store.instance() or cfg.instance)
        try:
            done = take_over(s3, store)
        except InstanceTaken as exc:
            fail(str(exc))
        except NotMoved as exc:
            fail(f"{exc}: the streams were brought up to S3's records; run it again", 3)
        except s3_errors() as exc:
            fail(f"S3 cannot be reached or refused: {describe(exc)}; nothing was taken over", 3)
    click.echo(
        f"{display.counted(len(done.brought_up), 'stream')} brought up to S3's records, "
        f"{len(done.written)} written to S3, {done.unchanged} unchanged"
    )
    for stream_id in done.unreadable:
        click.echo(f"{stream_id}: its metadata.json in S3 does not read; left as it is")
    click.echo(f"instance claimed by this store (generation {done.claim.generation})")


@contextlib.contextmanager
def held_alone(checkpoint_path: str) -> Iterator[None]:
    """The daemon's lock on the store, held while the command acts: no daemon starts on it
    meanwhile, and none runs on it now."""
    try:
        fd = lock_store(checkpoint_path)
    except OSError as exc:
        fail(f"{exc}: stop it first")
    try:
        yield
    finally:
        os.close(fd)
