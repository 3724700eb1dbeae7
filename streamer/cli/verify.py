"""`streamer verify`: are the streams in S3 what the checkpoint store says they are?"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field

import click
import msgspec

from streamer import bodies, digests, manifest
from streamer.audit import assembled_problem, chunk_problems
from streamer.cli import display
from streamer.cli.common import (
    EXIT_MISMATCH,
    EXIT_UNCHECKED,
    EXIT_USAGE,
    config_option,
    get_or_exit,
    json_option,
    load_or_exit,
    open_store,
    s3_errors,
)
from streamer.digests import SHA256
from streamer.fileio import Span, is_finished_file
from streamer.logs import describe
from streamer.records import ChunkRecord, StreamRecord, StreamState


@dataclass
class Verdict:
    stream_id: str
    chunks: int
    problems: list[str] = field(default_factory=list)
    error: str | None = None  # why it could not be checked

    @property
    def ok(self) -> bool:
        return not self.problems and self.error is None


@click.command(short_help="Compare streams with S3, and with their files where still there.")
@config_option
@click.argument("stream_id", required=False)
@click.option("--all", "check_all", is_flag=True, help="Verify every stream.")
@click.option(
    "--quick",
    is_flag=True,
    help="Compare sizes, ETags and the digest stored with each object (HEAD requests) "
    "instead of reading chunks and the assembled object back.",
)
@json_option
def verify(
    config_path: str | None, stream_id: str | None, check_all: bool, quick: bool, as_json: bool
) -> None:
    """Compare streams with S3: every chunk present with its recorded size, ETag and
    digest (its bytes read back, unless --quick), metadata.json and the assembled object
    as recorded, and, where the file is still there unchanged, the file's bytes.

    Exit status: 0 all good, 1 a mismatch found (named, chunk by chunk), 2 a wrong
    argument (an unknown stream), 3 could not check (S3 unreachable or refusing, the
    store or a file unreadable).
    """
    if bool(stream_id) == check_all:
        raise click.UsageError("give a STREAM_ID or --all")
    from streamer.chunkstore import ChunkStore  # not at the top: the S3 client is heavy

    cfg = load_or_exit(config_path)
    with open_store(config_path, readonly=True, code=EXIT_UNCHECKED) as store:
        if check_all:
            records = list(store.streams())
        else:
            records = [get_or_exit(store, stream_id, EXIT_USAGE)]
        chunks = {r.stream_id: store.chunks(r.stream_id) for r in records}
        instance = store.instance() or ""
    s3 = ChunkStore(cfg.s3, instance)
    total = sum(len(c) for c in chunks.values())
    with display.progress(total, "chunks", shown=not as_json) as bar:
        verdicts = [
            verify_stream(s3, r, chunks[r.stream_id], quick, bar.update, s3_errors())
            for r in records
        ]
    if as_json:
        click.echo(msgspec.json.encode([{**asdict(v), "ok": v.ok} for v in verdicts]))
    else:
        for v in verdicts:
            report(v)
    if any(v.problems for v in verdicts):
        sys.exit(EXIT_MISMATCH)
    if any(v.error for v in verdicts):
        sys.exit(EXIT_UNCHECKED)


def report(v: Verdict) -> None:
    for problem in v.problems:
        click.echo(f"{v.stream_id}: {problem}")
    if v.error:
        click.echo(f"{v.stream_id}: not checked: {v.error}")
    elif v.ok:
        click.echo(f"{v.stream_id}: ok ({display.counted(v.chunks, 'chunk')})")


def verify_stream(
    s3, record: StreamRecord, chunks: list[ChunkRecord], quick: bool, progress, away: tuple
) -> Verdict:
    """`away`: the errors that say S3 could not be asked (then nothing is said of it)."""
    verdict = Verdict(record.stream_id, len(chunks))
    finished = record.state is not StreamState.ACTIVE
    try:
        if record.chunks_deleted_at is None:
            verdict.problems += chunk_problems(
                record.stream_id,
                chunks,
                record.total_size if finished else None,
                s3,
                look="stored" if quick else "bytes",
                progress=progress,
                whole=record.whole,
            )
        if finished:
            verdict.problems += manifest_problems(s3, record, chunks)
        if record.assembled is not None and (
            problem := assembled_problem(record, s3, look="stat" if quick else "bytes")
        ):
            verdict.problems.append(problem)
    except away as exc:
        verdict.error = f"cannot read it from S3: {describe(exc)}"
        return verdict
    try:
        if file_unchanged(record):
            # A CRC proves less than a sha256: the whole file's, hashed in the same pass
            # over the file, proves the rest.
            by_crc = any(c.digest.algorithm != SHA256 for c in chunks)
            expected = record.whole
            whole = digests.hasher(expected.algorithm) if by_crc and expected else None
            also = () if whole is None else (whole,)
            verdict.problems += [
                f"chunk {c.index}: the file's bytes differ from S3's"
                for c in chunks
                if bodies.digest(c.digest.algorithm, Span(record, c.offset, c.size), *also)
                != c.digest
            ]
            if whole is not None and not verdict.problems and whole.hexdigest() != expected.value:
                verdict.problems.append(
                    f"the file's bytes are not the stream's ({expected.algorithm})"
                )
    except OSError as exc:  # not readable by this user, or deleted meanwhile
        verdict.error = f"cannot read its file {record.path}: {describe(exc)}"
    return verdict


def manifest_problems(s3, record: StreamRecord, chunks: list[ChunkRecord]) -> list[str]:
    key = s3.layout.manifest_key(record.stream_id)
    data = s3.get_if_exists(key)
    if data is None:
        return [f"metadata.json is missing from S3 ({key})"]
    try:
        stored = manifest.decode(data)
    except msgspec.DecodeError as exc:
        return [f"metadata.json is not a stream's metadata: {exc}"]
    expected = manifest.build(record, chunks, s3.layout)
    problems = [
        f"metadata.json says {name} is {got!r}, the checkpoint {want!r}"
        for name, got, want in (
            ("status", stored.status, expected.status),
            ("total_size", stored.total_size, expected.total_size),
            ("sha256", stored.sha256, expected.sha256),
            ("crc64nvme", stored.crc64nvme, expected.crc64nvme),
            ("chunk_count", stored.chunk_count, expected.chunk_count),
        )
        if got != want
    ]
    listed = [(c.index, c.key, c.size, c.digest, c.crc64nvme, c.etag) for c in stored.chunks]
    recorded = [(c.index, c.key, c.size, c.digest, c.crc64nvme, c.etag) for c in expected.chunks]
    if listed != recorded:
        problems.append("metadata.json lists other chunks than the checkpoint records")
    return problems


def file_unchanged(record: StreamRecord) -> bool:
    """Is the stream's file still there, as it was when the stream finished?"""
    try:
        st = os.stat(record.path)
    except OSError:
        return False
    return record.state is not StreamState.ACTIVE and is_finished_file(st, record)
