"""`streamer checkpoint …`: look after the checkpoint store."""

from __future__ import annotations

import click

from streamer.checkpoint import CheckpointError
from streamer.cli.common import config_option, fail, open_store


@click.group("checkpoint")
def checkpoint_group() -> None:
    """Look after the checkpoint store."""


@checkpoint_group.command("backup")
@config_option
@click.argument("destination", type=click.Path(file_okay=False))
def backup(config_path: str | None, destination: str) -> None:
    """Copy the checkpoint store to DESTINATION (a new or empty directory), consistently,
    while the daemon runs. Restore by pointing checkpoint.path at the copy."""
    with open_store(config_path, readonly=True) as store:
        try:
            store.backup(destination)
        except CheckpointError as exc:
            fail(str(exc))
    click.echo(f"checkpoint store copied to {destination}")
