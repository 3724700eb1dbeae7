"""`streamer config …`: check or show the effective configuration."""

from __future__ import annotations

import click
import msgspec

from streamer import config
from streamer.cli.common import config_option, load_or_exit


@click.group("config")
def config_group() -> None:
    """Check or show the effective configuration (file, then STREAMER_* variables)."""


@config_group.command("check")
@config_option
def config_check(config_path: str | None) -> None:
    """Exit 0 if the configuration is valid, else 2 with a message naming the setting:
    the checks `streamer run` makes before it starts. (That it also works, directories,
    store and S3: `streamer doctor`.)"""
    load_or_exit(config_path)
    click.echo("configuration ok")


@config_group.command("show")
@config_option
def config_show(config_path: str | None) -> None:
    """The effective configuration as JSON, secrets shown as ***; on stderr, where the S3
    credentials come from."""
    cfg = load_or_exit(config_path)
    click.echo(msgspec.json.format(msgspec.json.encode(config.redacted(cfg))))
    click.echo(f"credentials: {config.credential_source(cfg)}", err=True)
