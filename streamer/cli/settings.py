"""`streamer config …`: write a starting file; check or show the effective configuration."""

from __future__ import annotations

import os

import click
import msgspec

from streamer import config
from streamer.childproc import EXIT_CONFIG
from streamer.cli.common import config_option, fail, load_or_exit


@click.group("config", short_help="Write a starting config file; check or show the configuration.")
def config_group() -> None:
    """Write a starting config file; check or show the effective configuration (the file,
    then STREAMER_* variables)."""


@config_group.command("init", short_help="Write a commented starting config file.")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "values",
    multiple=True,
    metavar="KEY=VALUE",
    help="A setting's value in the file, e.g. --set watch.directory=./input (a relative "
    "path is written absolute); again for another.",
)
@click.option("--force", is_flag=True, help="Write over a file already at PATH.")
@click.pass_context
def config_init(ctx: click.Context, path: str | None, values: tuple[str, ...], force: bool) -> None:
    """Write a starting config file, commented: the settings a new host looks at first,
    with their defaults or --set values. Into PATH, else the file --config or
    $STREAMER_CONFIG names, else the user's file ($XDG_CONFIG_HOME/streamer/config.json,
    by default ~/.config/streamer/config.json), where every command finds it. Its keys
    that start with // are comments.

    Exit status: 0 written, 1 a file is already there (unless --force) or it cannot be
    written, 2 a --set value is not valid.
    """
    target = (
        path
        or ctx.find_root().params.get("config_path")
        or os.environ.get(config.CONFIG_VARIABLE)
        or config.user_config()
    )
    given = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        given[key] = value
    try:
        content = config.starting_file(given)
    except config.ConfigError as exc:
        fail(f"invalid configuration: {exc}", EXIT_CONFIG)
    write(target, content, force)
    click.echo(f"wrote {target}")
    found = config.locate(None)
    if found.path is None or os.path.realpath(found.path) != os.path.realpath(target):
        click.echo(f"the commands read {found}; this file with --config {target}")


def write(path: str, content: bytes, force: bool) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        fail(f"cannot make the folder {folder}: {exc.strerror}")
    try:
        with open(path, "wb" if force else "xb", opener=owner_only) as f:
            f.write(content)
    except FileExistsError:
        fail(f"{path} exists: edit it, or write over it with --force")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")


def owner_only(path: str, flags: int) -> int:
    """A new file only its owner can read: it may hold the S3 secret key."""
    return os.open(path, flags, 0o600)


@config_group.command("check", short_help="Exit 0 if the configuration is valid, else 2.")
@config_option
def config_check(config_path: str | None) -> None:
    """Exit 0 if the configuration is valid, else 2 with a message naming the setting:
    the checks `streamer run` makes before it starts. (That it also works, directories,
    store and S3: `streamer doctor`.) On stderr, which config file it is."""
    load_or_exit(config_path)
    click.echo("configuration ok")
    click.echo(f"config: {config.locate(config_path)}", err=True)


@config_group.command("show", short_help="The effective configuration, and its file.")
@config_option
def config_show(config_path: str | None) -> None:
    """The effective configuration as JSON, secrets shown as ***; on stderr, which config
    file it is and where the S3 credentials come from."""
    cfg = load_or_exit(config_path)
    click.echo(msgspec.json.format(msgspec.json.encode(config.redacted(cfg))))
    click.echo(f"config: {config.locate(config_path)}", err=True)
    click.echo(f"credentials: {config.credential_source(cfg)}", err=True)
