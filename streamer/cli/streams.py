"""`streamer streams …`: list, show, cancel, retry and forget streams in the checkpoint
store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import click
import msgspec

from streamer.checkpoint import CheckpointError, UnknownStream
from streamer.cli import display, probe
from streamer.cli.common import (
    config_option,
    fail,
    get_or_exit,
    json_option,
    load_or_exit,
    open_store,
    summary,
)
from streamer.records import StreamRecord, StreamState


@click.group()
def streams() -> None:
    """Inspect and act on streams. Safe while the daemon runs: it reads the same
    checkpoint store, which serialises writers."""


@streams.command("list", short_help="One line per stream: id, state, uploaded, chunks, file.")
@config_option
@click.option(
    "--state",
    type=click.Choice([*(s.value for s in StreamState), *probe.WAITING]),
    help="Only streams in this state (parked and stuck: as the running daemon says).",
)
@json_option
def list_streams(config_path: str | None, state: str | None, as_json: bool) -> None:
    """One line per stream: id, state, bytes uploaded, chunks, last upload, file. An
    active stream the running daemon has parked (waiting out a backoff) or found stuck
    shows as such, with why."""
    waiting = probe.waiting(load_or_exit(config_path))
    with open_store(config_path, readonly=True) as store:
        records = [r for r in store.streams() if state in (None, probe.state_of(r, waiting))]
    if as_json:
        shown = [
            {**summary(r), "state": probe.state_of(r, waiting), **held_back(r, waiting)}
            for r in records
        ]
        click.echo(msgspec.json.encode(shown))
        return
    if not records:
        click.echo("no streams" + (f" {state}" if state else ""))
        return
    now = datetime.now(UTC)
    rows = [
        (
            r.stream_id,
            probe.state_of(r, waiting),
            display.size(r.committed_bytes),
            str(r.chunk_count),
            display.ago(r.last_upload_at, now),
            r.path,
        )
        for r in records
    ]
    headers = ("STREAM", "STATE", "UPLOADED", "CHUNKS", "LAST UPLOAD", "FILE")
    for line in display.table(headers, rows, right={2, 3}):
        click.echo(line)
    for r in records:
        if (w := waiting.get(r.stream_id)) and probe.state_of(r, waiting) == w["condition"]:
            due = f", tried again in {display.seconds(w['due_in'])}" if w["due_in"] else ""
            click.echo(f"{r.stream_id} {w['condition']}: {w['reason']}{due}")


def held_back(record: StreamRecord, waiting: dict[str, dict]) -> dict:
    """--json's view of a parked or stuck stream: its condition, why, and when."""
    w = waiting.get(record.stream_id)
    if w is None or record.state is not StreamState.ACTIVE:
        return {}
    return {
        "state": w["condition"],
        **{k: w[k] for k in ("reason", "heals", "failing_for", "due_in")},
    }


@streams.command("show", short_help="A stream's checkpoint, with its chunk table.")
@config_option
@click.argument("stream_id")
@json_option
def show_stream(config_path: str | None, stream_id: str, as_json: bool) -> None:
    """The stream's full checkpoint, with its chunk table (and, while it is active, how many
    chunks are copied into its assembled object so far)."""
    with open_store(config_path, readonly=True) as store:
        record = get_or_exit(store, stream_id)
        chunks = store.chunks(stream_id)
    if as_json:
        click.echo(msgspec.json.encode({**summary(record), "record": record, "chunks": chunks}))
        return
    now = datetime.now(UTC)
    for key, raw in summary(record).items():
        if key in ("uploaded_bytes", "total_size") and raw is not None:
            shown = f"{display.size(raw)} ({raw:,} bytes)"
        elif isinstance(raw, datetime):
            shown = f"{display.timestamp(raw)} ({display.ago(raw, now)})"
        else:
            shown = display.value(raw)
        click.echo(f"{key.replace('_', ' '):<18} {shown}")
    if record.assembly is not None:
        copied = display.counted(
            sum(1 for c in chunks if c.part_in(record.assembly.upload_id)), "chunk"
        )
        click.echo(f"{'assembly':<18} {copied} copied into {record.assembly.key}")
    if record.assembled is not None:
        click.echo(f"{'assembled':<18} {record.assembled.key} ({record.assembled.method})")
    if not chunks:
        return
    click.echo()
    rows = [
        (
            str(c.index),
            str(c.revision),
            f"{c.offset:,}",
            display.size(c.size),
            display.timestamp(c.uploaded_at),
            str(c.digest),
        )
        for c in chunks
    ]
    headers = ("INDEX", "REV", "OFFSET", "SIZE", "UPLOADED", "DIGEST")
    for line in display.table(headers, rows, right={0, 1, 2, 3}):
        click.echo(line)


@streams.command("cancel", short_help="Stop uploading a stream; what is in S3 stays.")
@config_option
@click.argument("stream_id")
def cancel_stream(config_path: str | None, stream_id: str) -> None:
    """Stop uploading a stream; what is in S3 stays, and it is finished as cancelled.
    It is not picked up again unless retried."""

    def cancel(record: StreamRecord) -> StreamRecord:
        if record.state is not StreamState.ACTIVE:
            raise Forbidden(
                f"stream {stream_id} is {record.state.value} already: nothing to cancel"
            )
        return msgspec.structs.replace(record, cancel_requested=True)

    with open_store(config_path) as store:
        in_one_write(stream_id, store.update_stream, cancel)
    click.echo(f"{stream_id}: cancel requested; the daemon finishes it as cancelled")


@streams.command("retry", short_help="Put a cancelled or partial stream back to work.")
@config_option
@click.argument("stream_id")
def retry_stream(config_path: str | None, stream_id: str) -> None:
    """Put a cancelled or partial stream back to work: the daemon resumes it where it was,
    if its file is still there. Not one whose chunks were deleted from S3
    (stream.keep_chunks off): there is nothing left to resume it from."""

    def retry(record: StreamRecord) -> StreamRecord:
        if record.state not in (StreamState.CANCELLED, StreamState.PARTIAL):
            raise Forbidden(
                f"stream {stream_id} is {record.state.value}: only cancelled or partial "
                "streams can be retried"
            )
        if record.chunks_deleted_at is not None:
            raise Forbidden(
                f"stream {stream_id} cannot be retried: its chunks were deleted from S3 at "
                f"{display.timestamp(record.chunks_deleted_at)} (stream.keep_chunks off), and "
                "a retry resumes from them; what was uploaded is in its assembled object"
            )
        return msgspec.structs.replace(
            record,
            state=StreamState.ACTIVE,
            cancel_requested=False,
            status_reason=None,
            completed_at=None,
        )

    with open_store(config_path) as store:
        in_one_write(stream_id, store.update_stream, retry)
    click.echo(f"{stream_id}: back to active; the daemon resumes it at its next scan")


@streams.command("forget")
@config_option
@click.argument("stream_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def forget_stream(config_path: str | None, stream_id: str, yes: bool) -> None:
    """Remove a finished stream from the checkpoint store. Its objects stay in S3; its file,
    if still in the directory, is uploaded again as a new stream after the next restart.
    Nothing is forgotten if the stream's state changes while you are asked."""
    with open_store(config_path) as store:
        asked = get_or_exit(store, stream_id)
        if asked.state is StreamState.ACTIVE:
            fail(f"stream {stream_id} is active: cancel it first")
        if not yes:
            click.confirm(f"Forget stream {stream_id} ({asked.path})?", abort=True)

        def unchanged(record: StreamRecord) -> None:
            if record.state is not asked.state:
                raise Forbidden(
                    f"stream {stream_id} changed meanwhile: it is {record.state.value} now, "
                    f"no longer {asked.state.value}; nothing was forgotten"
                )

        in_one_write(stream_id, store.forget_stream, unchanged)
    click.echo(f"{stream_id}: forgotten")


class Forbidden(Exception):
    """The stream, as it is when the command acts, forbids it."""


def in_one_write(stream_id: str, write: Callable, check: Callable) -> None:
    """`write`, a store method, with `check`, which sees the stream in the very transaction
    that changes it: the daemon or another command may have changed it since it was read.
    A refusal leaves the store as it was."""
    try:
        write(stream_id, check)
    except UnknownStream:
        fail(f"no stream {stream_id!r}; `streamer streams list` shows them")
    except (Forbidden, CheckpointError) as exc:
        fail(str(exc))
