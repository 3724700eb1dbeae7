"""The `streamer` command: run the daemon; check a setup; inspect, verify and act on its
streams. One module per command or group; `common` holds what they share."""

from __future__ import annotations

import os

import click

from streamer import __version__
from streamer.cli.common import root_config_option, root_json_option
from streamer.cli.daemon import health, run
from streamer.cli.doctor import doctor
from streamer.cli.remote import remote, restore
from streamer.cli.settings import config_group
from streamer.cli.status import status
from streamer.cli.store import checkpoint_group
from streamer.cli.streams import streams
from streamer.cli.verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="streamer")
@root_config_option
@root_json_option
@click.pass_context
def main(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Upload live video recordings to S3-compatible storage while they are being written.

    --config and --json may come before the command or after it.
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
