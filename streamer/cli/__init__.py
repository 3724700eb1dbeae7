"""The `streamer` command: run the daemon; check a setup; inspect, verify and act on its
streams. One module per command or group; `common` holds what they share."""

from __future__ import annotations

import os

import click

from streamer import __version__
from streamer.cli.common import root_config_option, root_json_option
from streamer.cli.doctor import doctor
from streamer.cli.remote import remote, restore
from streamer.cli.run import health, run
from streamer.cli.settings import config_group
from streamer.cli.status import status
from streamer.cli.store import checkpoint_group
from streamer.cli.streams import streams
from streamer.cli.verify import verify

HELP_OPTIONS = ["-h", "--help"]


class Streamer(click.Group):
    """The top command. Its --json, which a command without a --json of its own would
    ignore, that command refuses instead, before it does anything."""

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if ctx.params.get("as_json") and not ctx.resilient_parsing:
            refuse_json_unless_taken(ctx, [name], command, rest)
        return name, command, rest


def refuse_json_unless_taken(
    ctx: click.Context, path: list[str], command: click.Command, args: list[str]
) -> None:
    """Exit 2 if the command `args` name, below `command`, has no --json of its own;
    not for a group (click says what is missing), nor for --help."""
    while isinstance(command, click.Group) and args:
        sub = command.get_command(ctx, args[0])
        if sub is None:
            return
        path, command, args = [*path, args[0]], sub, args[1:]
    if isinstance(command, click.Group) or set(args) & set(HELP_OPTIONS):
        return
    if not any(p.name == "as_json" for p in command.params):
        raise click.UsageError(f"`streamer {' '.join(path)}` has no --json: leave it out", ctx)


@click.group(cls=Streamer, context_settings={"help_option_names": HELP_OPTIONS})
@click.version_option(__version__, prog_name="streamer")
@root_config_option
@root_json_option
@click.pass_context
def main(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Upload live video recordings to S3-compatible storage while they are being written.

    --config and --json may come before the command or after it (`config init` takes the
    file as its PATH); a command without a --json of its own refuses it.
    """
    if ctx.invoked_subcommand != "run":
        # An admin command that loads the S3 client loads the metrics too: in the daemon's
        # metrics directory they would write files of their own, counted as the daemon's.
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


for command in (
    run,
    doctor,
    health,
    status,
    streams,
    verify,
    remote,
    restore,
    checkpoint_group,
    config_group,
):
    main.add_command(command)
