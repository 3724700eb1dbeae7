"""The S3 side: the verbs to put and inspect objects (where they go is `layout`).

No policy lives here: what to upload and when to retry is the uploader's business.
A ChunkStore holds a client (`s3client`); build it in the process that uses it.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from typing import BinaryIO

from minio.commonconfig import ComposeSource
from minio.datatypes import Part
from minio.error import S3Error
from minio.helpers import genheaders

from streamer import bodies, digests, s3client
from streamer.bandwidth import TokenBucket
from streamer.bodies import Body
from streamer.config import S3Config
from streamer.digests import CRC32C, SHA256, Digest
from streamer.layout import Layout

# What S3 (and servers like it) answer for a key that holds no object.
MISSING = ("NoSuchKey", "NoSuchObject", "NotFound")
# What a server says to a PUT with tags it will not take.
TAGS_REFUSED = ("NotImplemented", "AccessDenied", "InvalidArgument", "InvalidRequest")
# What a server says to a checksum algorithm it does not know.
CHECKSUM_REFUSED = ("NotImplemented", "InvalidArgument", "InvalidRequest")


class Taken(Exception):
    """A conditional write found an object at the key already: nothing was written."""


class BucketMissing(Exception):
    """The bucket is not there, and streamer may not create it."""


@dataclass(frozen=True)
class StoredObject:
    size: int
    etag: str
    digest: Digest | None  # what streamer stored it with, if anything
    modified: datetime | None = None


@dataclass(frozen=True)
class Fetched:
    """An object's bytes, written to a file: how many, their digest, and the digest the
    object was stored with (None if none)."""

    size: int
    digest: Digest
    stored: Digest | None


class UploadGone(Exception):
    """The multipart upload is no longer there: aborted, or expired by the server."""


@dataclass(frozen=True)
class PartSource:
    """An object to copy into a multipart upload as a part, pinned to its ETag; `copied`
    is the part's ETag if it is in the upload already."""

    key: str
    size: int
    etag: str
    copied: str | None = None


@contextlib.contextmanager
def _upload_gone_if_missing(upload_id: str):
    try:
        yield
    except S3Error as exc:
        if exc.code != "NoSuchUpload":
            raise
        raise UploadGone(f"multipart upload {upload_id} is gone ({exc.message})") from None


class ChunkStore:
    def __init__(
        self,
        config: S3Config,
        instance: str,
        connections: int = 2,
        bandwidth: TokenBucket | None = None,
    ):
        self.bucket = config.bucket
        self.layout = Layout(config.prefix, instance)
        self._sse = s3client.server_side_encryption(config.sse)
        self._bandwidth = bandwidth
        self._conditional = True  # the server honours If-None-Match on a PUT
        self._tagging = True  # the server (and the policy) take tags on a PUT
        # Over https chunks go unsigned, checked by crc32c (see streamer.digests), unless
        # the server refuses that checksum; over http their sha256 is signed.
        # Not without verification either: anyone on the path could then forge a CRC.
        self._wants_crc32c = config.secure and not config.tls_skip_verify
        self._crc32c = self._wants_crc32c
        self._client = s3client.client(config, connections)

    def ensure_bucket(self, create: bool) -> None:
        if self._client.bucket_exists(self.bucket):
            return
        if not create:
            raise BucketMissing(
                f"bucket {self.bucket!r} does not exist and s3.create_bucket is off"
            )
        try:
            self._client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    @property
    def crc32c_refused(self) -> bool:
        """Over https, the server refused crc32c: chunks go signed with their sha256."""
        return self._wants_crc32c and not self._crc32c

    @property
    def chunk_algorithm(self) -> str:
        """What a chunk put in this store is identified and checked by."""
        return CRC32C if self._crc32c else SHA256

    def put(
        self,
        key: str,
        body: Body,
        digest: Digest,
        content_type: str,
        if_absent: bool = False,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Upload `body`, whose digest is given, in one PUT and return its ETag. S3 checks
        the body against the digest, which is stored with the object. `if_absent`: only if
        no object is at the key (raises Taken), where the server can say so; one that
        cannot is written to as before. `tags`: the object's tags, where it takes them."""
        tags = tags if self._tagging else None
        conditional = if_absent and self._conditional
        try:
            return self._send(key, body, digest, content_type, conditional, tags)
        except S3Error as exc:
            if digest.algorithm == CRC32C and exc.code in CHECKSUM_REFUSED:
                raise  # put_chunk tells whether it was crc32c the server refused
            if tags and exc.code in TAGS_REFUSED:
                # Some servers take no tags (R2, B2), some policies allow PutObject but
                # not PutObjectTagging: the chunk matters, its tag does not.
                etag = self.put(key, body, digest, content_type, if_absent)
                self._tagging = False
                return etag
            if conditional and exc.code == "NotImplemented":
                self._conditional = False
                return self.put(key, body, digest, content_type, tags=tags)
            raise

    def put_chunk(
        self, key: str, body: Body, digest: Digest, tags: dict[str, str] | None
    ) -> tuple[str, Digest]:
        """A chunk's PUT, never over an object already at `key` (raises Taken) where the
        server can tell. Returns its ETag and the digest S3 checked it by: `digest`, or
        its sha256, signed, where the server refuses a crc32c checksum. A refusal may be of
        the tags or the condition instead: crc32c is given up only if the same PUT, with
        the same tags and condition but sha256 instead, then goes through."""
        content_type = "application/octet-stream"
        if digest.algorithm == CRC32C:
            tags = tags if self._tagging else None
            conditional = self._conditional
            try:
                return self._send(key, body, digest, content_type, conditional, tags), digest
            except S3Error as exc:
                if exc.code not in TAGS_REFUSED or (exc.code not in CHECKSUM_REFUSED and not tags):
                    raise
                if exc.code in CHECKSUM_REFUSED:
                    signed = bodies.digest(SHA256, body)
                    try:
                        etag = self._send(key, body, signed, content_type, conditional, tags)
                    except S3Error:
                        digest = signed  # not crc32c, or not it alone: put tells which
                    else:
                        self._crc32c = False
                        return etag, signed
        return self.put(key, body, digest, content_type, if_absent=True, tags=tags), digest

    def _send(
        self,
        key: str,
        body: Body,
        digest: Digest,
        content_type: str,
        conditional: bool,
        tags: dict[str, str] | None,
    ) -> str:
        """One PUT, as asked; raises Taken where `conditional` finds an object there. The
        body is read as it is sent: bytes that differ from `digest` are refused by S3."""
        headers = genheaders(
            {"Content-Type": content_type, digest.algorithm: digest.value},
            self._sse,
            tags,
            None,
            False,
        )
        headers["Content-Length"] = str(len(body))
        signed = digest.value if digest.algorithm == SHA256 else "UNSIGNED-PAYLOAD"
        headers["x-amz-content-sha256"] = signed
        # Checked by S3, and what it asks of a PUT to an Object Lock bucket.
        name, value = digest.header()
        headers[name] = value
        if conditional:
            headers["If-None-Match"] = "*"
        pieces = body.pieces()
        if self._bandwidth:
            pieces = self._bandwidth.pace(pieces)
        # Closed here, not when the error's frames go: a body read from a file holds it open.
        with contextlib.closing(pieces):
            try:
                return self._client._put_object(self.bucket, key, pieces, headers).etag
            except S3Error as exc:
                if exc.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise Taken(key) from None
                raise

    def get_if_exists(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except S3Error as exc:
            if exc.code in MISSING:
                return None
            raise

    def put_stream(self, key: str, stream: BinaryIO, length: int, content_type: str) -> str:
        """Upload `length` bytes read from `stream` (multipart when large); return the ETag."""
        if self._bandwidth:
            stream = _PacedReader(stream, self._bandwidth)
        result = self._client.put_object(
            self.bucket,
            key,
            stream,
            length,
            content_type=content_type,
            sse=self._sse,
            num_parallel_uploads=1,  # read the stream in order: the caller may be hashing it
        )
        return result.etag

    def remove(self, key: str) -> None:
        """Delete an object: a pruned stream's chunks, doctor's scratch objects."""
        self._client.remove_object(self.bucket, key)

    def begin_upload(self, key: str, content_type: str) -> str:
        """Start a multipart upload to `key`; return its upload id."""
        headers = genheaders({"Content-Type": content_type}, self._sse, None, None, False)
        return self._client._create_multipart_upload(self.bucket, key, headers)

    def copy_part(self, key: str, upload_id: str, number: int, part: PartSource) -> str:
        """Copy `part`'s source object, pinned to its ETag, into the upload as part
        `number`; return the part's ETag."""
        copy = ComposeSource(self.bucket, part.key)
        copy.build_headers(part.size, part.etag)
        with _upload_gone_if_missing(upload_id):
            etag, _ = self._client._upload_part_copy(
                self.bucket, key, upload_id, number, copy.headers
            )
        return etag

    def complete_upload(self, key: str, upload_id: str, etags: list[str]) -> str:
        """Join the parts, numbered from 1 in the order given, into `key`; return its ETag.
        Parts of the upload not listed are discarded by S3."""
        parts = [Part(number, etag) for number, etag in enumerate(etags, start=1)]
        with _upload_gone_if_missing(upload_id):
            result = self._client._complete_multipart_upload(self.bucket, key, upload_id, parts)
        return result.etag

    def abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(UploadGone), _upload_gone_if_missing(upload_id):
            self._client._abort_multipart_upload(self.bucket, key, upload_id)

    def open_uploads(self, key: str) -> list[str]:
        """The ids of the multipart uploads to `key` not completed or aborted yet."""
        result = self._client._list_multipart_uploads(self.bucket, prefix=key)
        return [u.upload_id for u in result.uploads if u.object_name == key]

    def compose(
        self,
        key: str,
        parts: list[PartSource],
        content_type: str,
        pool: Executor,
        upload_id: str | None = None,
    ) -> str:
        """Join `parts` (each but the last >= 5 MiB) into `key`: the parts not copied yet
        are copied several at a time on `pool`, into `upload_id` or a new upload.
        minio-py's compose_object would first stat every source and then copy one part at
        a time: on a long recording most of the time to completion. So its multipart verbs
        are used directly (minio is pinned to 7.2 for this). Raises UploadGone if
        `upload_id` is no longer there."""
        fresh = upload_id is None
        upload_id = upload_id or self.begin_upload(key, content_type)

        def part_etag(number: int, part: PartSource) -> str:
            return part.copied or self.copy_part(key, upload_id, number, part)

        try:
            etags = list(pool.map(part_etag, count(1), parts))
            return self.complete_upload(key, upload_id, etags)
        except BaseException:
            if fresh:  # an upload given is the caller's, and may be used again
                with contextlib.suppress(Exception):
                    self.abort_upload(key, upload_id)
            raise

    def children(self, prefix: str) -> list[str]:
        """The 'folders' right under `prefix` (one listing with a delimiter)."""
        items = self._client.list_objects(self.bucket, prefix=prefix, recursive=False)
        return [item.object_name for item in items if item.is_dir]

    def listing(self, prefix: str) -> dict[str, StoredObject]:
        """Every object under `prefix`, by key, with its size and ETag (one request per
        thousand objects; no digest)."""
        return {
            item.object_name: StoredObject(item.size, item.etag, None, item.last_modified)
            for item in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
        }

    def fetch_into(
        self, key: str, fd: int, offset: int, algorithm: str | None, block: int = 1024 * 1024
    ) -> Fetched:
        """Write an object's bytes into the open file `fd` from `offset`, a block at a time
        (memory stays at one block), hashing them on the way with `algorithm` (None: the
        one the object was stored with, sha256 if none)."""
        size = 0
        with self._response(key) as response:
            stored = _stored_digest(response.headers.items())
            algorithm = algorithm or (stored.algorithm if stored else SHA256)
            digest = digests.hasher(algorithm)
            for data in response.stream(block):
                digest.update(data)
                written = 0
                while written < len(data):
                    written += os.pwrite(fd, memoryview(data)[written:], offset + size + written)
                size += len(data)
        return Fetched(size, Digest(algorithm, digest.hexdigest()), stored)

    def get(self, key: str) -> bytes:
        with self._response(key) as response:
            return response.read()

    def digest_of(self, key: str, algorithm: str, also=None) -> Digest:
        """The digest of an object's bytes, read from S3; `also`, a hasher, is fed them too."""
        digest = digests.hasher(algorithm)
        with self._response(key) as response:
            for block in response.stream(1024 * 1024):
                digest.update(block)
                if also is not None:
                    also.update(block)
        return Digest(algorithm, digest.hexdigest())

    @contextlib.contextmanager
    def _response(self, key: str):
        """An object's body, its connection given back to the pool afterwards."""
        response = self._client.get_object(self.bucket, key)
        try:
            yield response
        finally:
            response.close()
            response.release_conn()

    def stat(self, key: str) -> StoredObject | None:
        try:
            info = self._client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in MISSING:
                # minio-py's frames and this error form a reference cycle, which would keep
                # every caller's frame, and a chunk buffer with it, until the cyclic garbage
                # collector ran: with many streams, a dozen chunks per uploader.
                exc.__traceback__ = None
                return None
            raise
        return StoredObject(info.size, info.etag, _stored_digest(info.metadata.items()))


def _stored_digest(headers) -> Digest | None:
    names = {f"x-amz-meta-{algorithm}": algorithm for algorithm in digests.ALGORITHMS}
    return next((Digest(names[k.lower()], v) for k, v in headers if k.lower() in names), None)


class _PacedReader:
    """minio-py reads a part whole before it sends it: pacing the reads keeps the average
    rate at the cap (in bursts of one part)."""

    def __init__(self, stream: BinaryIO, bandwidth: TokenBucket):
        self._stream = stream
        self._bandwidth = bandwidth

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        for _ in self._bandwidth.pace([memoryview(data)]):
            pass
        return data
