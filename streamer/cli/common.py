"""What the commands share: the global options, loading the configuration, opening the
checkpoint store, and failing with a clear message."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import click

from streamer import config
from streamer.checkpoint import CheckpointError, CheckpointStore, UnknownStream
from streamer.childproc import EXIT_CONFIG
from streamer.records import StreamRecord

EXIT_MISMATCH = 1  # verify: something in S3 is not what the checkpoint says
EXIT_USAGE = 2  # as click exits for a wrong option
EXIT_UNCHECKED = 3  # verify: S3 or the store could not be read, so nothing can be said


def _or_before_the_command(ctx: click.Context, param: click.Parameter, value):
    """An option given before the subcommand (`streamer --config x.json status`) counts
    as if given after it; after it, it wins."""
    if value is None or value is False:
        given = ctx.find_root().params.get(param.name)
        return value if given is None else given
    return value


CONFIG_HELP = (
    "JSON config file. Without it: the one $STREAMER_CONFIG names, else the first there "
    "of $XDG_CONFIG_HOME/streamer/config.json (~/.config/streamer/config.json) and "
    f"{config.SYSTEM_CONFIG}; `streamer config show` says which. "
    "STREAMER_<SECTION>_<KEY> environment variables win over the file."
)
JSON_HELP = "Print JSON, for scripts (raw numbers)."
root_config_option = click.option(
    "--config",
    "config_path",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    help=CONFIG_HELP,
)
root_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON, for the commands that can."
)
config_option = click.option(
    "--config",
    "config_path",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    callback=_or_before_the_command,
    help=CONFIG_HELP,
)
json_option = click.option(
    "--json", "as_json", is_flag=True, callback=_or_before_the_command, help=JSON_HELP
)


def load_or_exit(config_path: str | None) -> config.Config:
    """The configuration of the file every command finds the same way (see
    `config.locate`), or exit 2 saying what is wrong."""
    try:
        return config.load(config.locate(config_path).path)
    except config.ConfigError as exc:
        click.echo(f"streamer: invalid configuration: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


@contextlib.contextmanager
def open_store(
    config_path: str | None, readonly: bool = False, code: int = 1
) -> Iterator[CheckpointStore]:
    """The checkpoint store, or exit with `code` saying why not."""
    cfg = load_or_exit(config_path)
    path = cfg.checkpoint.path
    if not os.path.exists(os.path.join(path, "data.mdb")):
        fail(
            f"no checkpoint store at {path} (checkpoint.path): has streamer run here? "
            f"config: {config.locate(config_path)}",
            code,
        )
    try:
        store = CheckpointStore(path, cfg.checkpoint.map_size, readonly=readonly)
    except CheckpointError as exc:
        fail(str(exc), code)
    try:
        yield store
    finally:
        store.close()


def get_or_exit(store: CheckpointStore, stream_id: str, code: int = 1) -> StreamRecord:
    try:
        return store.get_stream(stream_id)
    except UnknownStream:
        fail(f"no stream {stream_id!r}; `streamer streams list` shows them", code)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"streamer: {message}", err=True)
    sys.exit(code)


def summary(r: StreamRecord) -> dict:
    """A stream as `--json` gives it: raw numbers, RFC 3339 times."""
    return {
        "stream_id": r.stream_id,
        "state": r.state.value,
        "reason": r.status_reason,
        "path": r.path,
        "uploaded_bytes": r.committed_bytes,
        "total_size": r.total_size,
        "chunks": r.chunk_count,
        "reuploaded_chunks": r.reuploaded_chunks,
        "first_seen_at": r.first_seen_at,
        "last_upload_at": r.last_upload_at,
        "completed_at": r.completed_at,
        "cancel_requested": r.cancel_requested,
        "source_deleted_at": r.source_deleted_at,
        "deleted_because": r.deleted_because,
    }


def s3_errors() -> tuple[type[Exception], ...]:
    """The errors that say S3 could not be asked (away, refusing, no credentials), not
    that what it holds is wrong. Imported when asked: the S3 client is heavy."""
    from streamer.failures import S3_TROUBLE

    return (*S3_TROUBLE, OSError)
