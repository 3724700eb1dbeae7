"""`streamer run` and `streamer health`: the daemon, and whether it is alive."""

from __future__ import annotations

import glob
import os
import sys
import tempfile

import click
import msgspec

from streamer import logs
from streamer.cli import probe
from streamer.cli.common import config_option, fail, json_option, load_or_exit


@click.command(short_help="Watch the directory and upload every recording in it.")
@config_option
@click.option(
    "--once",
    is_flag=True,
    help="Upload the files already in the directory, finish each, let retention and "
    "pruning delete what is due (files, chunks), then exit (backfill, cron). A file quiet "
    "for stream.idle_timeout is finished at once; one still growing is waited for; files "
    "that appear meanwhile are left for the next run.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="With --once: stop after SECONDS even if not every stream has finished, or not "
    "every deletion is done (exit 1); by default it waits as long as S3 and the recorders "
    "take.",
)
def run(config_path: str | None, once: bool, timeout: float | None) -> None:
    """Watch the directory and upload every recording in it, until SIGTERM or SIGINT.

    Exit status: 0 after a graceful stop (with --once: every stream finished, and every
    deletion retention and pruning had due done), 1 after a forced stop, too many uploader
    crashes, or, with --once, a stop or a timeout before that, or a file or chunks kept
    (the summary names them); 2 for an invalid configuration, 3 when it cannot start
    (directories, checkpoint store, another daemon on the same store, the metrics port in
    use, the instance name claimed by another checkpoint store).
    """
    if timeout is not None and not once:
        raise click.UsageError("--timeout goes with --once")
    cfg = load_or_exit(config_path)
    logs.configure(cfg.log.level, cfg.log.format)
    prepare_metrics_dir()
    from streamer.supervisor.daemon import Supervisor  # after prepare_metrics_dir: see there

    supervisor = Supervisor(cfg, once=once, timeout=timeout)
    code = supervisor.run()
    if supervisor.one_shot is not None:
        click.echo(supervisor.one_shot.describe())
    sys.exit(code)


@click.command(short_help="Is the daemon alive: has its loop turned in the last 10 s?")
@config_option
@json_option
def health(config_path: str | None, as_json: bool) -> None:
    """Is the daemon of this configuration alive: has its loop turned in the last 10 s?
    Asks its /healthz on the configured metrics port (giving up on a daemon silent for
    2 s) or, with metrics off, reads its heartbeat file in the checkpoint directory. For
    container health checks. --json prints status (ok, stalled, not running, unknown),
    http_status (/healthz's), seconds_since_loop (where known) and error.

    Exit status: 0 alive, 1 not (the reason on stderr, or in the JSON), 2 an invalid
    configuration.
    """
    said = probe.liveness(load_or_exit(config_path))
    if as_json:
        click.echo(msgspec.json.encode(said))
        sys.exit(0 if said.status == probe.OK else 1)
    if said.status != probe.OK:
        fail(said.error)
    click.echo("ok")


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
