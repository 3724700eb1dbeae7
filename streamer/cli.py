"""The `streamer` command: run the daemon."""

from __future__ import annotations

import glob
import os
import sys
import tempfile

import click

from streamer import __version__, config, logs

EXIT_CONFIG = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="streamer")
def main() -> None:
    """Upload live video recordings to S3-compatible storage while they are being written."""


@main.command()
@click.option(
    "--config",
    "config_path",
    envvar="STREAMER_CONFIG",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    help="JSON config file (env STREAMER_CONFIG). Without it: defaults and "
    "STREAMER_<SECTION>_<KEY> environment variables.",
)
def run(config_path: str | None) -> None:
    """Watch the directory and upload every recording in it, until SIGTERM or SIGINT.

    Exit status: 0 after a graceful stop, 1 after a forced stop or too many uploader
    crashes, 2 for an invalid configuration, 3 when it cannot start (directories, checkpoint
    store).
    """
    cfg = load_or_exit(config_path)
    logs.configure(cfg.log.level, cfg.log.format)
    prepare_metrics_dir()
    from streamer.supervisor import Supervisor  # after prepare_metrics_dir: see there

    sys.exit(Supervisor(cfg).run())


def load_or_exit(config_path: str | None) -> config.Config:
    try:
        return config.load(config_path)
    except config.ConfigError as exc:
        click.echo(f"streamer: invalid configuration: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def prepare_metrics_dir() -> None:
    """prometheus_client picks multiprocess mode when first imported, from this variable;
    values left from an earlier run would be counted again, so the directory starts empty."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="streamer-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
