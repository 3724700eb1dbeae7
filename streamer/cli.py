"""The `streamer` command: run the daemon; inspect, verify and act on its streams."""

from __future__ import annotations

import contextlib
import glob
import os
import sys
import tempfile
from collections.abc import Iterator

import click
import msgspec

from streamer import __version__, config, logs
from streamer.audit import chunk_problems
from streamer.checkpoint import CheckpointError, CheckpointStore, UnknownStream
from streamer.childproc import EXIT_CONFIG
from streamer.fileio import is_finalised_file, sha256_of_range
from streamer.records import StreamRecord, StreamState

config_option = click.option(
    "--config",
    "config_path",
    envvar="STREAMER_CONFIG",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    help="JSON config file (env STREAMER_CONFIG). Without it: defaults and "
    "STREAMER_<SECTION>_<KEY> environment variables.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="streamer")
def main() -> None:
    """Upload live video recordings to S3-compatible storage while they are being written."""


@main.command()
@config_option
def run(config_path: str | None) -> None:
    """Watch the directory and upload every recording in it, until SIGTERM or SIGINT.

    Exit status: 0 after a graceful stop, 1 after a forced stop or too many uploader
    crashes, 2 for an invalid configuration, 3 when it cannot start (directories, checkpoint
    store).
    """
    cfg = load_or_exit(config_path)
    logs.configure(cfg.log.level, cfg.log.format)
    prepare_metrics_dir()
    from streamer.supervisor.daemon import Supervisor  # after prepare_metrics_dir: see there

    sys.exit(Supervisor(cfg).run())


@main.group()
def streams() -> None:
    """Inspect and act on streams. Safe while the daemon runs: it reads the same
    checkpoint store, which serialises writers."""


@streams.command("list")
@config_option
@click.option(
    "--state", type=click.Choice([s.value for s in StreamState]), help="Only streams in this state."
)
@json_option
def list_streams(config_path: str | None, state: str | None, as_json: bool) -> None:
    """One line per stream: id, state, bytes uploaded, chunks, last upload, file."""
    with open_store(config_path, readonly=True) as store:
        records = [r for r in store.streams() if state is None or r.state.value == state]
    if as_json:
        click.echo(msgspec.json.encode([_summary(r) for r in records]))
        return
    click.echo(f"{'STREAM':<40} {'STATE':<9} {'UPLOADED':>12} {'CHUNKS':>6}  LAST UPLOAD  PATH")
    for r in records:
        last = r.last_upload_at.strftime("%Y-%m-%dT%H:%M:%SZ") if r.last_upload_at else "-"
        click.echo(
            f"{r.stream_id:<40} {r.state.value:<9} {r.committed_bytes:>12} {r.chunk_count:>6}  "
            f"{last:<11}  {r.path}"
        )


@streams.command("show")
@config_option
@click.argument("stream_id")
@json_option
def show_stream(config_path: str | None, stream_id: str, as_json: bool) -> None:
    """The stream's full checkpoint, with its chunk table (and, while it is live, how many
    chunks are copied into its assembled object so far)."""
    with open_store(config_path, readonly=True) as store:
        record = get_or_exit(store, stream_id)
        chunks = store.chunks(stream_id)
    if as_json:
        click.echo(msgspec.json.encode({**_summary(record), "record": record, "chunks": chunks}))
        return
    for key, value in _summary(record).items():
        click.echo(f"{key:<16} {value}")
    if record.assembly is not None:
        copied = sum(1 for c in chunks if c.part_in(record.assembly.upload_id))
        click.echo(f"{'assembly':<16} {copied} chunks copied into {record.assembly.key}")
    click.echo(f"\n{'INDEX':>6} {'REV':>3} {'OFFSET':>12} {'SIZE':>10}  SHA256")
    for c in chunks:
        click.echo(f"{c.index:>6} {c.revision:>3} {c.offset:>12} {c.size:>10}  {c.sha256}")


@streams.command("cancel")
@config_option
@click.argument("stream_id")
def cancel_stream(config_path: str | None, stream_id: str) -> None:
    """Stop uploading a stream; what is in S3 stays, and it is finished as cancelled.
    It is not picked up again unless retried."""
    with open_store(config_path) as store:
        record = get_or_exit(store, stream_id)
        if record.state is not StreamState.ACTIVE:
            fail(f"stream {stream_id} is {record.state.value} already: nothing to cancel")
        store.update_stream(stream_id, lambda r: msgspec.structs.replace(r, cancel_requested=True))
    click.echo(f"{stream_id}: cancel requested; the daemon finishes it as cancelled")


@streams.command("retry")
@config_option
@click.argument("stream_id")
def retry_stream(config_path: str | None, stream_id: str) -> None:
    """Put a cancelled or partial stream back to work: the daemon resumes it where it was,
    if its file is still there."""
    with open_store(config_path) as store:
        record = get_or_exit(store, stream_id)
        if record.state not in (StreamState.CANCELLED, StreamState.PARTIAL):
            fail(
                f"stream {stream_id} is {record.state.value}: only cancelled or partial "
                "streams can be retried"
            )
        store.update_stream(
            stream_id,
            lambda r: msgspec.structs.replace(
                r,
                state=StreamState.ACTIVE,
                cancel_requested=False,
                status_reason=None,
                completed_at=None,
            ),
        )
    click.echo(f"{stream_id}: back to active; the daemon resumes it at its next scan")


@streams.command("forget")
@config_option
@click.argument("stream_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def forget_stream(config_path: str | None, stream_id: str, yes: bool) -> None:
    """Remove a finished stream from the checkpoint store. Its objects stay in S3; its file,
    if still in the directory, is uploaded again as a new stream after the next restart."""
    with open_store(config_path) as store:
        record = get_or_exit(store, stream_id)
        if record.state is StreamState.ACTIVE:
            fail(f"stream {stream_id} is active: cancel it first")
        if not yes:
            click.confirm(f"Forget stream {stream_id} ({record.path})?", abort=True)
        store.forget_stream(stream_id)
    click.echo(f"{stream_id}: forgotten")


@main.command()
@config_option
@json_option
def status(config_path: str | None, as_json: bool) -> None:
    """One screen: streams by state, and how far each unfinished stream has got."""
    with open_store(config_path, readonly=True) as store:
        records = list(store.streams())
    counts = {s.value: sum(1 for r in records if r.state is s) for s in StreamState}
    active = []
    for r in records:
        if r.state is StreamState.ACTIVE:
            try:
                on_disk = os.stat(r.path).st_size
            except OSError:
                on_disk = None
            active.append({**_summary(r), "on_disk": on_disk})
    if as_json:
        click.echo(msgspec.json.encode({"streams": counts, "active": active}))
        return
    click.echo("streams: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    for a in active:
        total = a["on_disk"] if a["on_disk"] is not None else a["uploaded_bytes"]
        click.echo(
            f"{a['stream_id']:<40} {_bar(a['uploaded_bytes'], total)} "
            f"{a['uploaded_bytes']:>12} / {total if a['on_disk'] is not None else '?'}"
        )


@main.command()
@config_option
@click.argument("stream_id", required=False)
@click.option("--all", "check_all", is_flag=True, help="Verify every stream.")
def verify(config_path: str | None, stream_id: str | None, check_all: bool) -> None:
    """Compare streams' checkpoints with S3 (objects present, sizes, sha256 of the bytes)
    and, where the file is still there unchanged, with the file. Exit status 1 on any
    mismatch, naming the chunk."""
    if bool(stream_id) == check_all:
        fail("give a STREAM_ID or --all")
    from streamer.chunkstore import ChunkStore

    cfg = load_or_exit(config_path)
    with open_store(config_path, readonly=True) as store:
        records = list(store.streams()) if check_all else [get_or_exit(store, stream_id)]
        chunks = {r.stream_id: store.chunks(r.stream_id) for r in records}
        instance = store.instance() or ""
    s3 = ChunkStore(cfg.s3, instance)
    problems = 0
    for record in records:
        found = _verify_stream(s3, record, chunks[record.stream_id])
        for problem in found:
            click.echo(f"{record.stream_id}: {problem}")
        if not found:
            click.echo(f"{record.stream_id}: ok ({len(chunks[record.stream_id])} chunks)")
        problems += len(found)
    if problems:
        fail(f"{problems} problem(s) found")


def _verify_stream(s3, record: StreamRecord, chunks: list) -> list[str]:
    finished = record.state is not StreamState.ACTIVE
    try:
        size = record.total_size if finished else None
        problems = chunk_problems(record.stream_id, chunks, size, s3, read_back=True)
        if finished and s3.stat(s3.layout.manifest_key(record.stream_id)) is None:
            problems.append("metadata.json is missing from S3")
    except Exception as exc:
        fail(f"cannot read {record.stream_id} from S3: {type(exc).__name__}: {exc}")
    if _file_unchanged(record):
        problems += [
            f"chunk {c.index}: the file's bytes differ from S3's"
            for c in chunks
            if sha256_of_range(record, c.offset, c.size) != c.sha256
        ]
    return problems


def _file_unchanged(record: StreamRecord) -> bool:
    """Is the stream's file still there, as it was when the stream finished?"""
    try:
        st = os.stat(record.path)
    except OSError:
        return False
    return record.state is not StreamState.ACTIVE and is_finalised_file(st, record)


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width if not total else min(width, width * done // total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


@main.group("checkpoint")
def checkpoint_group() -> None:
    """Look after the checkpoint store."""


@checkpoint_group.command("backup")
@config_option
@click.argument("destination", type=click.Path(file_okay=False))
def backup(config_path: str | None, destination: str) -> None:
    """Copy the checkpoint store to DESTINATION (a new or empty directory), consistently,
    while the daemon runs. Restore by pointing checkpoint.path at the copy."""
    with open_store(config_path, readonly=True) as store:
        try:
            store.backup(destination)
        except CheckpointError as exc:
            fail(str(exc))
    click.echo(f"checkpoint store copied to {destination}")


@main.group("config")
def config_group() -> None:
    """Check or show the effective configuration (file, then STREAMER_* variables)."""


@config_group.command("check")
@config_option
def config_check(config_path: str | None) -> None:
    """Exit 0 if the configuration is valid, else 2 with a message naming the setting."""
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


def load_or_exit(config_path: str | None) -> config.Config:
    try:
        return config.load(config_path)
    except config.ConfigError as exc:
        click.echo(f"streamer: invalid configuration: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


@contextlib.contextmanager
def open_store(config_path: str | None, readonly: bool = False) -> Iterator[CheckpointStore]:
    cfg = load_or_exit(config_path)
    path = cfg.checkpoint.path
    if not os.path.exists(os.path.join(path, "data.mdb")):
        fail(f"no checkpoint store at {path} (checkpoint.path): has streamer run here?")
    try:
        store = CheckpointStore(path, cfg.checkpoint.map_size, readonly=readonly)
    except CheckpointError as exc:
        fail(str(exc))
    try:
        yield store
    finally:
        store.close()


def get_or_exit(store: CheckpointStore, stream_id: str) -> StreamRecord:
    try:
        return store.get_stream(stream_id)
    except UnknownStream:
        fail(f"no stream {stream_id!r}; `streamer streams list` shows them")


def fail(message: str) -> None:
    click.echo(f"streamer: {message}", err=True)
    sys.exit(1)


def _summary(r: StreamRecord) -> dict:
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
