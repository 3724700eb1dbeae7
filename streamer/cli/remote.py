"""`streamer remote list` and `streamer restore`: the recordings in the bucket, from S3
alone (only the s3.* settings and the instance name; no checkpoint store, no watch
directory), and one of them rebuilt into a file, checked."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import click
import msgspec

from streamer import naming
from streamer.cli import display
from streamer.cli.common import (
    EXIT_UNCHECKED,
    EXIT_USAGE,
    config_option,
    fail,
    json_option,
    load_or_exit,
    s3_errors,
)
from streamer.config import Config
from streamer.logs import describe

EXIT_MISSING = 1  # a chunk missing or not its bytes; no such stream
EXIT_REFUSED = 1  # a file on the disk in the way: it is left as it is
EXIT_NOT_PLAYABLE = 4

instance_option = click.option(
    "--instance",
    metavar="NAME",
    help="The instance (host) the stream was uploaded under; default: the configured "
    "instance or this host's name (restore: whichever instance has the stream).",
)


@click.group()
def remote() -> None:
    """What is in the bucket, from S3 alone: for when the checkpoint store is gone."""


@remote.command("list")
@config_option
@instance_option
@click.option("--all-instances", is_flag=True, help="The streams of every instance.")
@json_option
def list_remote(
    config_path: str | None, instance: str | None, all_instances: bool, as_json: bool
) -> None:
    """One line per stream in the bucket: id, instance, status (complete, partial,
    invalid, cancelled from its metadata.json, or unfinished: chunks and no
    metadata.json), size, chunks, first and last upload, whether the whole recording is
    there as one object.

    Exit status: 0, or 3 when S3 cannot be read.
    """
    if instance and all_instances:
        raise click.UsageError("give --instance or --all-instances, not both")
    from streamer.remote import streams_in

    cfg = load_or_exit(config_path)
    instances = None if all_instances else [instance or cfg.instance or naming.host_instance()]
    s3 = s3_of(cfg)
    try:
        found = streams_in(s3, instances)
    except s3_errors() as exc:
        fail(f"cannot read s3://{cfg.s3.bucket}: {describe(exc)}", EXIT_UNCHECKED)
    if as_json:
        click.echo(msgspec.json.encode([s.summary() for s in found]))
        return
    if not found:
        where = "any instance" if instances is None else f"instance {instances[0]}"
        click.echo(f"no streams of {where} in s3://{cfg.s3.bucket}/{s3.layout.instances_prefix()}")
        return
    now = datetime.now(UTC)
    rows = []
    for s in found:
        first, last = s.upload_times()
        rows.append(
            (
                s.stream_id,
                s.instance,
                s.status,
                display.size(s.size),
                str(s.chunk_count),
                display.timestamp(first),
                display.ago(last, now),
                "yes" if s.assembled_key else "no",
            )
        )
    headers = ("STREAM", "INSTANCE", "STATUS", "SIZE", "CHUNKS", "FIRST UPLOAD", "LAST UPLOAD",
               "WHOLE")  # fmt: skip
    for line in display.table(headers, rows, right={3, 4}):
        click.echo(line)


@click.command()
@config_option
@click.argument("stream_id")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="The file to write."
)
@instance_option
@click.option(
    "--playable",
    is_flag=True,
    help="Cut a fragmented MP4 after its last whole fragment so that it plays; exit 4 "
    "when no prefix can play (a plain MP4 whose moov never reached S3).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace OUTPUT if it is there; without it, an OUTPUT there is refused (exit 1) "
    "before anything is downloaded.",
)
def restore(
    config_path: str | None,
    stream_id: str,
    output: str,
    instance: str | None,
    playable: bool,
    force: bool,
) -> None:
    """Rebuild a recording from S3 alone into OUTPUT: a finished stream from the chunks
    its metadata.json lists (or its whole object), an unfinished one from its chunks in
    order up to the first missing. metadata.json is checked first (this stream's chunks,
    in order, adding up to its size), every chunk against its digest as it arrives, and
    a finished stream's whole file against metadata.json. It writes OUTPUT.part, marked
    as restore's by OUTPUT.part.streamer, and renames it only when whole, never over a
    file there unless --force; a re-run goes on from what OUTPUT.part holds, checked. An
    OUTPUT.part that is not restore's, for this stream, is refused and left as it is.

    Exit status: 0 restored (an unfinished stream: as far as its chunks go, said on
    stderr), 1 a chunk missing or not its bytes (named), a metadata.json not to be
    trusted, no such stream, or a file in the way (OUTPUT without --force, an OUTPUT.part
    not restore's), 2 a wrong argument, 3 S3 cannot be read, 4 --playable and no prefix
    can play.
    """
    from streamer.remote import find
    from streamer.restore import NotPlayable, Refused, RestoreError
    from streamer.restore import restore as rebuild

    cfg = load_or_exit(config_path)
    if os.path.lexists(output) and not force:
        fail(f"{output} is there already: give --force to replace it", EXIT_REFUSED)
    s3 = s3_of(cfg)
    try:
        found = find(s3, stream_id, instance)
    except s3_errors() as exc:
        fail(f"cannot read s3://{cfg.s3.bucket}: {describe(exc)}", EXIT_UNCHECKED)
    if not found:
        where = f"instance {instance}" if instance else "any instance"
        fail(f"no stream {stream_id!r} of {where} in s3://{cfg.s3.bucket}", EXIT_MISSING)
    if len(found) > 1:
        names = ", ".join(s.instance for s in found)
        fail(
            f"stream {stream_id!r} is under several instances ({names}): give --instance",
            EXIT_USAGE,
        )
    [stream] = found
    try:
        with display.progress(stream.size, "restoring", shown=True) as bar:
            restored, stopped = rebuild(s3, stream, output, playable, force, bar.update)
    except RestoreError as exc:
        fail(f"{stream_id}: {exc}; {output} is not written", EXIT_MISSING)
    except Refused as exc:
        fail(f"{stream_id}: {exc}", EXIT_REFUSED)
    except NotPlayable as exc:
        fail(f"{stream_id}: {exc}", EXIT_NOT_PLAYABLE)
    except s3_errors() as exc:
        # S3 away or refusing, or the output's disk: what is written so far is kept.
        fail(f"{stream_id}: stopped: {describe(exc)}; run again to go on", EXIT_UNCHECKED)
    reused = f", {restored.reused} already there" if restored.reused else ""
    click.echo(
        f"{stream_id}: {stream.status}, {display.size(restored.size)} in {restored.pieces} "
        f"pieces{reused}, sha256 {restored.sha256} -> {output}"
    )
    if restored.cut:
        click.echo(f"cut {display.size(restored.cut)} after the last whole fragment: it plays")
    if stopped:
        click.echo(f"{stopped}, {display.size(restored.size)}", err=True)


def s3_of(cfg: Config):
    from streamer.chunkstore import ChunkStore
    from streamer.restore import CONNECTIONS

    return ChunkStore(cfg.s3, cfg.instance, connections=CONNECTIONS)
