"""`streamer remote list` and `streamer restore`: the recordings in the bucket, from S3
alone (only the s3.* settings and the instance name; no checkpoint store, no watch
directory), and one of them rebuilt into a file, checked."""

from __future__ import annotations

import os
import re
import shlex
import sys
from datetime import UTC, datetime, timedelta

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
from streamer.digests import CRC64NVME, SHA256
from streamer.logs import describe

EXIT_MISSING = 1  # a chunk missing or not its bytes; no such stream
EXIT_REFUSED = 1  # a file on the disk in the way: it is left as it is
EXIT_NOT_PLAYABLE = 4
STDOUT = "-"
SPAN = re.compile(r"^(\d{1,15})\s*(s|m|min|h|d|w)$")
SPAN_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Moment(click.ParamType):
    """A point in time: ISO 8601 (a date, or a date and time; local time without a
    zone), or a span back from now (`30m`, `2h`, `3d`)."""

    name = "TIME"

    def convert(self, value, param, ctx) -> datetime:
        if isinstance(value, datetime):
            return value
        text = value.strip()
        if span := SPAN.match(text):
            try:
                return datetime.now(UTC) - timedelta(seconds=int(span[1]) * SPAN_SECONDS[span[2]])
            except OverflowError:
                self.fail(f"{value!r} reaches back before the year 1", param, ctx)
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{value!r} is not a time: give an ISO 8601 date or time (2026-12-06, "
                "2026-12-06T22:15Z) or a span back from now (30m, 2h, 3d)",
                param,
                ctx,
            )
        return at if at.tzinfo else at.astimezone()


@click.group(short_help="What is in the bucket, from S3 alone.")
def remote() -> None:
    """What is in the bucket, from S3 alone: for when the checkpoint store is gone."""


@remote.command("list", short_help="One line per stream in the bucket, from S3 alone.")
@config_option
@click.option(
    "--instance",
    metavar="NAME",
    help="The instance (host) whose streams to list; default: the configured instance, "
    "or this host's name.",
)
@click.option("--all-instances", is_flag=True, help="The streams of every instance.")
@click.option(
    "--name",
    "pattern",
    metavar="GLOB",
    help="Only the streams of recordings of this name: the file's name or its path below "
    "the watch directory, the extension optional (cam1, cam1/late.mp4, 'cam*').",
)
@click.option(
    "--since",
    type=Moment(),
    help="Only the streams uploaded to since TIME (their last upload at or after it): "
    "an ISO 8601 date or time (local time without a zone), or a span back from now "
    "(30m, 2h, 3d).",
)
@json_option
def list_remote(
    config_path: str | None,
    instance: str | None,
    all_instances: bool,
    pattern: str | None,
    since: datetime | None,
    as_json: bool,
) -> None:
    """One line per stream in the bucket: id, instance, status (complete, partial,
    invalid, cancelled from its metadata.json, or active: chunks and no metadata.json,
    as a stream not finished yet has), size, chunks, first and last upload (UTC), whether the whole
    recording is there as one object.

    Exit status: 0, or 3 when S3 cannot be read.
    """
    if instance and all_instances:
        raise click.UsageError("give --instance or --all-instances, not both")
    from streamer.bucket import listed, read_manifests

    cfg = load_or_exit(config_path)
    instances = None if all_instances else [instance or cfg.instance or naming.host_instance()]
    s3 = s3_of(cfg)
    try:
        found = listed(s3, instances)
        if pattern is not None:
            found = [s for s in found if s.named(pattern)]
        read_manifests(s3, found)
    except s3_errors() as exc:
        fail(f"cannot read s3://{cfg.s3.bucket}: {describe(exc)}", EXIT_UNCHECKED)
    if since is not None:
        found = [s for s in found if (last := s.upload_times()[1]) and last >= since]
    if as_json:
        click.echo(msgspec.json.encode([s.summary() for s in found]))
        return
    if not found:
        where = "any instance" if instances is None else f"instance {instances[0]}"
        named = f" named {pattern!r}" if pattern is not None else ""
        uploaded = f" uploaded to since {display.timestamp(since)}" if since else ""
        click.echo(
            f"no streams{named} of {where}{uploaded} in "
            f"s3://{cfg.s3.bucket}/{s3.layout.instances_prefix()}"
        )
        return
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
                display.timestamp(last),
                "yes" if s.assembled_key else "no",
            )
        )
    headers = ("STREAM", "INSTANCE", "STATUS", "SIZE", "CHUNKS", "FIRST UPLOAD", "LAST UPLOAD",
               "WHOLE")  # fmt: skip
    for line in display.table(headers, rows, right={3, 4}):
        click.echo(line)


@click.command()
@config_option
@click.argument("name", required=False)
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE|DIR|-",
    help="Where to write the recording: a file; a directory there, to write it in under "
    "the recording's file name; or - for stdout (messages on stderr).",
)
@click.option(
    "--instance",
    metavar="NAME",
    help="The instance (host) the stream was uploaded under; default: whichever instance has it.",
)
@click.option(
    "--latest",
    is_flag=True,
    help="The newest stream NAME matches, even of several recordings; without NAME, the "
    "newest stream of all.",
)
@click.option(
    "--playable",
    is_flag=True,
    help="Cut a fragmented MP4 after its last whole fragment so that it plays; exit 4 "
    "when no prefix can play (a plain MP4 whose moov never reached S3). Needs -o FILE or DIR.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace the output file if it is there; without it, a file there is refused "
    "(exit 1) before anything is downloaded.",
)
@json_option
def restore(
    config_path: str | None,
    name: str | None,
    output: str,
    instance: str | None,
    latest: bool,
    playable: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Rebuild a recording from S3 alone. NAME is a stream id, or a recording's name:
    the file's name or its path below the watch directory, the extension optional
    (cam1, cam1/late.mp4), or a glob ('cam*'). A name means the newest stream of that
    recording; when it matches several recordings they are listed (exit 2), and
    --latest takes the newest of them.

    A finished stream is rebuilt from the chunks its metadata.json lists (or its whole
    object), an active one from its chunks in order up to the first missing.
    metadata.json is checked first (this stream's chunks, in order, adding up to its
    size), every chunk against its digest as it arrives, and a finished stream's whole
    file against metadata.json. To a file, it writes FILE.part, marked as restore's by
    FILE.part.streamer, and renames it only when whole, never over a file there unless
    --force; a re-run goes on from what FILE.part holds, checked. A FILE.part that is
    not restore's, for this stream, is refused and left as it is. To stdout, each chunk
    is checked before it is written, and the whole file's sha256 once it is all out.
    With --json, what was restored is printed as JSON (not with -o -).

    Exit status: 0 restored (an active stream: as far as its chunks go, said on
    stderr), 1 a chunk missing or not its bytes (named), a metadata.json not to be
    trusted, no such stream, or a file in the way (the output file without --force, a
    FILE.part not restore's), 2 a wrong argument or a name of several recordings, 3 S3
    cannot be read or the output written, 4 --playable and no prefix can play.
    """
    if name is None and not latest:
        raise click.UsageError("give NAME (a stream id or a recording's name), or --latest")
    to_stdout = output == STDOUT
    if to_stdout and as_json:
        raise click.UsageError("-o - writes the recording to stdout: --json cannot go there")
    if to_stdout and playable:
        raise click.UsageError(
            "--playable cuts the file once it is whole, and -o - writes it out as it comes: "
            "give -o FILE"
        )
    if to_stdout and sys.stdout.isatty():
        fail("-o -: stdout is a terminal; send it to a pipe or a file", EXIT_USAGE)
    into = os.path.isdir(output) and not to_stdout
    if not to_stdout and not into:
        refuse_if_there(output, force)  # before S3 is asked
    from streamer.restore import InTheWay, NotPlayable, RestoreError, restore_to_pipe
    from streamer.restore import restore as rebuild

    cfg = load_or_exit(config_path)
    s3 = s3_of(cfg)
    try:
        stream = chosen(s3, cfg.s3.bucket, name, instance, latest)
    except s3_errors() as exc:
        fail(f"cannot read s3://{cfg.s3.bucket}: {describe(exc)}", EXIT_UNCHECKED)
    stream_id = stream.stream_id
    if into:
        output = os.path.join(output, stream.file_name)
        refuse_if_there(output, force)
    try:
        with display.progress(stream.size, "restoring", shown=True) as bar:
            if to_stdout:
                restored, stopped = restore_to_pipe(s3, stream, sys.stdout.fileno(), bar.update)
            else:
                restored, stopped = rebuild(s3, stream, output, playable, force, bar.update)
    except RestoreError as exc:
        written = (
            "stdout has what went out before this" if to_stdout else f"{output} is not written"
        )
        fail(f"{stream_id}: {exc}; {written}", EXIT_MISSING)
    except InTheWay as exc:
        fail(f"{stream_id}: {exc}", EXIT_REFUSED)
    except NotPlayable as exc:
        fail(f"{stream_id}: {exc}", EXIT_NOT_PLAYABLE)
    except s3_errors() as exc:
        # S3 away or refusing, or the output's disk or pipe: what is written so far is
        # kept, and a file goes on from it.
        again = "" if to_stdout else "; run again to go on"
        fail(f"{stream_id}: stopped: {describe(exc)}{again}", EXIT_UNCHECKED)
    if as_json:
        click.echo(
            msgspec.json.encode(
                {
                    "stream_id": stream_id,
                    "instance": stream.instance,
                    "status": stream.status,
                    "output": os.path.abspath(output),
                    "size": restored.size,
                    "pieces": restored.pieces,
                    "reused": restored.reused,
                    **{a: None for a in (SHA256, CRC64NVME)},
                    restored.digest.algorithm: restored.digest.value,
                    "cut": restored.cut,
                    "stopped": stopped,
                }
            )
        )
    else:
        reused = f", {restored.reused} already there" if restored.reused else ""
        click.echo(
            f"{stream_id}: {stream.status}, {display.size(restored.size)} in "
            f"{display.counted(restored.pieces, 'piece')}{reused}, "
            f"{restored.digest.algorithm} {restored.digest.value} -> "
            f"{'stdout' if to_stdout else output}",
            err=to_stdout,
        )
        if restored.cut:
            click.echo(f"cut {display.size(restored.cut)} after the last whole fragment: it plays")
    if stopped:
        click.echo(f"{stopped}, {display.size(restored.size)}", err=True)


def refuse_if_there(output: str, force: bool) -> None:
    if os.path.lexists(output) and not force:
        fail(f"{output} is there already: give --force to replace it", EXIT_REFUSED)


def chosen(s3, bucket: str, name: str | None, instance: str | None, latest: bool):
    """The stream NAME means: the stream of that id, or the newest of the streams whose
    recording it names (of whatever recording, with `latest`). Exits saying why there is
    none, or listing the candidates when it cannot tell which."""
    from streamer.bucket import Ambiguous, find, listed, nearest, newest, read_manifests

    where = f"instance {instance}" if instance else "any instance"
    if name is not None and not any(c in name for c in "*?["):
        by_id = find(s3, name, instance)
        if len(by_id) > 1:
            candidates(f"stream {name!r} is under several instances: give --instance", by_id)
        if by_id:
            return by_id[0]
    streams = listed(s3, None if instance is None else [instance])
    matched = streams if name is None else [s for s in streams if s.named(name)]
    listing = f"streamer remote list {f'--instance {instance}' if instance else '--all-instances'}"
    if matched:
        try:
            pick = newest(matched, latest)
        except Ambiguous as exc:
            read_manifests(s3, exc.candidates)
            candidates(
                f"{name!r} names {len(exc.candidates)} streams of several recordings: give a "
                "stream id, the recording's path, --instance, or --latest for the newest",
                exc.candidates,
            )
        # Only the stream chosen is listed object by object and its metadata.json read.
        stream = next(iter(find(s3, pick.stream_id, pick.instance)), None)
        if stream is None:
            fail(
                f"stream {pick.stream_id} of instance {pick.instance} went from "
                f"s3://{bucket} while it was being read",
                EXIT_MISSING,
            )
        if len(matched) > 1:
            named = f" --name {shlex.quote(name)}" if name is not None else ""
            click.echo(
                f"restoring {stream.stream_id} of instance {stream.instance}, the newest "
                f"of {display.counted(len(matched), 'stream')}; `{listing}{named}` lists "
                "them",
                err=True,
            )
        return stream
    if name is None:
        fail(f"no streams of {where} in s3://{bucket}", EXIT_MISSING)
    close = nearest(streams, name)
    hint = f"the nearest: {', '.join(close)}" if close else f"`{listing}` lists them"
    fail(f"no stream {name!r} of {where} in s3://{bucket}; {hint}", EXIT_MISSING)


def candidates(why: str, streams) -> None:
    """Exit with a wrong argument, listing the streams it could mean."""
    click.echo(f"streamer: {why}", err=True)
    rows = [
        (s.stream_id, s.instance, display.timestamp(s.first_seen), display.size(s.size))
        for s in streams
    ]
    for line in display.table(("STREAM", "INSTANCE", "FIRST SEEN", "SIZE"), rows, right={3}):
        click.echo(line, err=True)
    sys.exit(EXIT_USAGE)


def s3_of(cfg: Config):
    from streamer.bucket import MANIFEST_READERS
    from streamer.chunkstore import ChunkStore
    from streamer.restore import CONNECTIONS

    return ChunkStore(cfg.s3, cfg.instance, connections=max(CONNECTIONS, MANIFEST_READERS))
