"""`streamer doctor`: will `streamer run` work here? A checklist, each item with a hint
when it fails: the watch directory, the checkpoint store (and no daemon on it already), S3
(reachable, credentials, bucket, a scratch object written, read back and deleted, a
multipart copy), whether retention can see writers, and the instance name. What `run`
checks too is checked by the same code, in the same words (streamer.preflight)."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

import click
import msgspec

from streamer import bodies, naming, preflight
from streamer.bodies import InMemory
from streamer.checkpoint import CheckpointError, CheckpointStore
from streamer.cli import display
from streamer.cli.common import config_option, json_option, load_or_exit
from streamer.config import Config
from streamer.digests import SHA256
from streamer.fileio import lease_blindness
from streamer.logs import describe
from streamer.objectstore import ABSENT, BucketMissing, PartSource, Taken
from streamer.preflight import Unmet

ASSEMBLE_HINT = "this server cannot copy objects into a multipart upload: set stream.assemble=false"
CONDITIONS_HINT = (
    "a server that ignores If-None-Match cannot keep a stale store from writing over S3's "
    "records: use one that honours or refuses it"
)


class Problem(Exception):
    """A check found something wrong (not an error on the way)."""


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not tried, what it needs being missing
    detail: str
    hint: str = ""


class Doctor:
    """The checks, in order; a check that cannot be tried after an earlier failure says
    so instead of failing again."""

    def __init__(self, config: Config):
        self.config = config
        self.checks: list[Check] = []
        self.store_id: str | None = None
        self.own_starts: list[str] = []
        self.confirmed = False
        self.instance = config.instance

    def run(self) -> list[Check]:
        self.watch_directory()
        self.checkpoint_store()
        self.instance = self.instance or naming.host_instance()
        self.s3()
        return self.checks

    def passed(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, True, detail))

    def failed(self, name: str, detail: str, hint: str = "") -> None:
        self.checks.append(Check(name, False, detail, hint))

    def unmet(self, name: str, exc: Unmet) -> None:
        self.failed(name, exc.detail, exc.hint)

    def skipped(self, names: list[str], why: str) -> None:
        self.checks += [Check(name, None, f"not tried: {why}") for name in names]

    def watch_directory(self) -> None:
        path = self.config.watch.directory
        try:
            preflight.watch_directory(path)
            entries = len(os.listdir(path))
        except Unmet as exc:
            self.unmet("watch directory", exc)
            self.skipped(["retention sees writers"], "the watch directory cannot be used")
            return
        except OSError as exc:
            self.failed("watch directory", f"{path}: {describe(exc)}", "see its permissions")
            self.skipped(["retention sees writers"], "the watch directory cannot be listed")
            return
        self.passed("watch directory", f"{path}: readable, {entries} entries")
        self.retention_sight(path)

    def retention_sight(self, path: str) -> None:
        blind = lease_blindness(path)
        retention = self.config.retention.enabled
        if blind is None:
            self.passed("retention sees writers", "a file open for writing is never deleted")
        elif retention:
            self.failed(
                "retention sees writers",
                f"{blind}; such a file is kept until its last write is ten minutes old",
                preflight.LEASE_HINT,
            )
        else:
            self.passed("retention sees writers", f"retention is off (if turned on: {blind})")

    def checkpoint_store(self) -> None:
        try:
            detail = self.read_store()
            preflight.store_unheld(self.config.checkpoint.path)
        except Unmet as exc:
            self.unmet("checkpoint store", exc)
        else:
            self.passed("checkpoint store", detail)

    def read_store(self) -> str:
        """What the store holds that the later checks need: whose it is, its starts."""
        path = self.config.checkpoint.path
        preflight.checkpoint_directory(path)
        if not os.path.exists(os.path.join(path, "data.mdb")):
            return f"{path}: none yet, created at first start"
        try:
            store = CheckpointStore(path, self.config.checkpoint.map_size, readonly=True)
        except CheckpointError as exc:
            raise Unmet(str(exc), "check checkpoint.path's permissions and space") from None
        try:
            self.store_id, stored = store.claimed(), store.instance()
            _, self.own_starts, self.confirmed = store.claim_starts()
            count = sum(1 for _ in store.streams())
        except CheckpointError as exc:  # a record that does not decode, among others
            raise Unmet(str(exc), "`streamer checkpoint backup`, then see the logs") from None
        finally:
            store.close()
        preflight.same_instance(self.config.instance, stored)
        self.instance = stored or self.instance
        return f"{path}: opened, writable, {display.counted(count, 'stream')}"

    def s3(self) -> None:
        from streamer.chunkstore import ChunkStore  # the S3 client is heavy

        s3_config = self.config.s3
        later = ["scratch object", "conditional writes", "multipart copy", "instance name"]
        try:
            s3 = ChunkStore(s3_config, self.instance)
            bucket = preflight.bucket(s3, s3_config.create_bucket)
        except BucketMissing as exc:
            self.passed("S3 reachable", s3_config.endpoint)
            self.passed("S3 credentials", "accepted")
            self.failed("bucket", str(exc), preflight.BUCKET_HINT)
            self.skipped(later, "no bucket")
            return
        except Exception as exc:
            self.s3_refused(exc)
            self.skipped(later, "S3 did not answer as it should")
            return
        self.passed("S3 reachable", s3_config.endpoint)
        self.passed("S3 credentials", "accepted")
        self.passed("bucket", f"{s3_config.bucket}: {bucket}")
        self.attempt("scratch object", lambda: self.scratch(s3), rejected_hint())
        self.attempt("conditional writes", lambda: self.conditional(s3), CONDITIONS_HINT)
        if self.config.stream.assemble:
            self.attempt("multipart copy", lambda: self.multipart_copy(s3), ASSEMBLE_HINT)
        else:
            self.passed("multipart copy", "not needed: stream.assemble is off")
        self.attempt("instance name", lambda: self.instance_claim(s3), "")

    def s3_refused(self, exc: Exception) -> None:
        from minio.error import S3Error

        from streamer.s3client import NoCredentials

        if isinstance(exc, S3Error):
            self.passed("S3 reachable", self.config.s3.endpoint)
            self.failed("S3 credentials", describe(exc), rejected_hint())
            self.skipped(["bucket"], "S3 refused the credentials")
        elif isinstance(exc, NoCredentials):  # found out before any request was sent
            self.skipped(["S3 reachable"], "no credentials to sign a request with")
            self.failed("S3 credentials", str(exc), rejected_hint())
            self.skipped(["bucket"], "no credentials")
        else:
            self.failed("S3 reachable", describe(exc), preflight.S3_HINT)
            self.skipped(["S3 credentials", "bucket"], "S3 unreachable")

    def attempt(self, name: str, check: Callable[[], str], hint: str) -> None:
        try:
            self.passed(name, check())
        except Problem as exc:
            self.failed(name, str(exc), hint)
        except Exception as exc:
            self.failed(name, describe(exc), hint)

    def scratch(self, s3) -> str:
        key = s3.layout.scratch_key(uuid.uuid4().hex)
        data = os.urandom(64 * 1024)
        try:
            put_scratch(s3, key, data)
            if s3.get(key) != data:
                raise Problem("the bytes read back differ from those written")
        finally:
            left = self.clean_up(s3, [key])
        if left and not self.config.stream.keep_chunks:
            raise Problem(f"{left}; stream.keep_chunks off deletes chunks: allow DeleteObject")
        refused = s3.checksum_refused
        checked = f"; S3 refuses {refused}: chunks go with {s3.checksum}" if refused else ""
        return "written and read back" + (f"; {left}" if left else ", and deleted") + checked

    def conditional(self, s3) -> str:
        """How metadata.json and the instance's claim will be written: over exactly what
        this store last saw there, by the server's check or by streamer's own."""
        key = s3.layout.scratch_key(uuid.uuid4().hex)
        body = InMemory(b"{}")
        digest = bodies.digest(SHA256, body)
        try:
            etag = s3.put(key, body, digest, "application/json", ABSENT)
            try:
                s3.put(key, body, digest, "application/json", ABSENT)
            except Taken:
                s3.put(key, body, digest, "application/json", etag)
            else:
                raise Problem("the server wrote over an object a write said must not be there")
        finally:
            self.clean_up(s3, [key])
        if s3.conditional_writes:
            return "honoured: records are written only over what this store last saw"
        return "refused by the server: streamer reads each record, compares, then writes"

    def multipart_copy(self, s3) -> str:
        source, target = (s3.layout.scratch_key(uuid.uuid4().hex) for _ in range(2))
        data = os.urandom(64 * 1024)
        upload_id = None
        try:
            etag = put_scratch(s3, source, data)
            upload_id, _ = s3.begin_upload(target, "application/octet-stream")
            part = s3.copy_part(target, upload_id, 1, PartSource(source, len(data), etag))
            s3.complete_upload(target, upload_id, [part])
            upload_id = None
            if s3.get(target) != data:
                raise Problem("the copied object differs from its source")
        finally:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    s3.abort_upload(target, upload_id)
            left = self.clean_up(s3, [source, target])
        return "an object copied into a multipart upload" + (f"; {left}" if left else "")

    @staticmethod
    def clean_up(s3, keys: list[str]) -> str:
        """Delete the scratch objects, as far as S3 lets it (run deletes objects only with
        stream.keep_chunks off, so a refusal is not a failure); say what is left."""
        left = []
        for key in keys:
            try:
                s3.remove(key)
            except Exception:
                left.append(key)
        return f"could not delete {', '.join(left)}: delete it by hand" if left else ""

    def instance_claim(self, s3) -> str:
        from streamer import claim

        key = s3.layout.owner_key()
        found = s3.get_if_exists(key)
        if found is None:
            return f"{self.instance}: unclaimed; the daemon claims it at first start"
        held = claim.decode(found)
        if held.store != self.store_id:
            raise Problem(claim.taken_message(s3, key, held.store, str(self.store_id)))
        if held.start not in self.own_starts and (held.start is not None or self.confirmed):
            raise Problem(claim.behind_message(s3, key, held))
        return f"{self.instance}: claimed by this checkpoint store (generation {held.generation})"


@click.command(short_help="Check that `streamer run` will work here: a checklist.")
@config_option
@json_option
def doctor(config_path: str | None, as_json: bool) -> None:
    """Check that `streamer run` will work with this configuration: the watch directory,
    the checkpoint store (and that no daemon runs on it already), S3 (reachable,
    credentials, the bucket, created if missing and s3.create_bucket is on, a scratch
    object written, read back and deleted, a multipart copy), whether retention can see
    writers, and the instance name. Safe while the daemon runs (it then says the store
    is taken).

    Exit status: 0 all checks pass, 1 any does not, 2 an invalid configuration.
    """
    checks = Doctor(load_or_exit(config_path)).run()
    passed = all(c.ok for c in checks)
    if as_json:
        click.echo(msgspec.json.encode({"ok": passed, "checks": [asdict(c) for c in checks]}))
    else:
        for c in checks:
            mark = {True: "✓", False: "✗", None: "-"}[c.ok]
            click.echo(f"{mark} {c.name:<24} {c.detail}")
            if c.hint:
                click.echo(f"  {'':<24} hint: {c.hint}")
    sys.exit(0 if passed else 1)


def rejected_hint() -> str:
    """The hint `run` logs with S3's refusals (s3_rejected). Imported when asked: the S3
    client is heavy."""
    from streamer.failures import REJECTED_HINT

    return REJECTED_HINT


def put_scratch(s3, key: str, data: bytes) -> str:
    """A scratch object put as a chunk is (its checksum, unsigned over https); its ETag."""
    body = InMemory(data)
    sums = None if s3.trails else bodies.digests_of(s3.chunk_algorithms, body)
    return s3.put_chunk(key, body, sums, None)[0]
