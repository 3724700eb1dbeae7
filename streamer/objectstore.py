"""What streamer asks of S3, apart from how it is asked: the verbs (`ObjectStore`), what
they return, and the outcomes a caller acts on (a write whose condition did not hold, an
upload S3 no longer has, …); and `compose`, a whole object joined from parts with those
verbs on any store. `chunkstore.ChunkStore` is the one over S3 (minio-py); every
implementation passes the one contract suite (tests/test_objectstore.py).

Importing it loads no S3 client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from typing import BinaryIO, Protocol

from streamer.bodies import Body
from streamer.digests import Digest
from streamer.layout import Layout

# As the `expect` of a write: no object at the key (else, the ETag of the one there).
ABSENT = ""


class Taken(Exception):
    """A conditional write found the key not as the writer last saw it (an object where
    there was none, or another than the one it named): nothing was written."""


class BucketMissing(Exception):
    """The bucket is not there, and streamer may not create it."""


@dataclass(frozen=True)
class StoredObject:
    size: int
    etag: str
    digest: Digest | None  # what streamer stored it with, if anything
    modified: datetime | None = None
    # The crc64nvme of its bytes S3 keeps (asked for by `stat(key, checksum=True)`)
    crc64nvme: str | None = None


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
    """An object to copy into a multipart upload as a part, pinned to its ETag, with its
    crc64nvme (None: not known); `copied` is the part's ETag if it is in the upload
    already."""

    key: str
    size: int
    etag: str
    crc64nvme: str | None = None
    copied: str | None = None


class CopiesUnchecked(Exception):
    """The server will not copy a part into an upload that asked for a whole-object
    crc64nvme (MinIO: its copies carry no checksum): nothing was copied, and uploads begun
    from now on ask for none."""


class PiecedBodyRefused(Exception):
    """S3 refused a body sent in pieces with its checksum in a trailer (aws-chunked): as
    one damaged on the way would be (a piece not as signed, its framing broken), worth
    sending again at once. Refused again, the store takes it for a server that takes no
    such bodies, and sends chunks with their digests in the header."""


class PartDiffers(Exception):
    """S3 copied a part whose crc64nvme is not its source's as recorded."""


class ObjectStore(Protocol):
    """The verbs streamer uses on its bucket. Keys are relative to the bucket; `expect` is
    what the writer last saw at the key (ABSENT: nothing; else that object's ETag), and a
    write whose `expect` no longer holds raises Taken and writes nothing."""

    bucket: str
    layout: Layout

    def ensure_bucket(self, create: bool) -> bool:
        """Whether this call made the bucket; BucketMissing if it is not there and
        `create` is False."""
        ...

    # How chunks go, as the store found the server: what a sender needs to know.
    @property
    def checksum(self) -> str: ...
    @property
    def checksum_refused(self) -> str | None: ...
    @property
    def trails(self) -> bool: ...
    @property
    def trailer_refused(self) -> bool: ...
    @property
    def chunk_algorithms(self) -> tuple[str, ...]: ...
    @property
    def conditional_writes(self) -> bool: ...
    @property
    def checks_copies(self) -> bool: ...

    def checking_digest(self, sums: dict[str, Digest]) -> Digest: ...

    # Objects
    def put(
        self,
        key: str,
        body: Body,
        digest: Digest,
        content_type: str,
        expect: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str: ...
    def put_chunk(
        self, key: str, body: Body, sums: dict[str, Digest] | None, tags: dict[str, str] | None
    ) -> tuple[str, dict[str, Digest], Digest]: ...
    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int,
        content_type: str,
        expect: str | None = None,
    ) -> str: ...
    def get(self, key: str) -> bytes: ...
    def get_if_exists(self, key: str) -> bytes | None: ...
    def read(self, key: str) -> tuple[bytes, str] | None: ...
    def fetch_into(
        self,
        key: str,
        fd: int,
        offset: int,
        size: int,
        algorithm: str | None,
        block: int = 1 << 20,
    ) -> Fetched: ...
    def digest_of(self, key: str, algorithm: str, also=None, etag: str | None = None) -> Digest: ...
    def stat(self, key: str, checksum: bool = False) -> StoredObject | None: ...
    def remove(self, key: str) -> None: ...
    def remove_if(self, key: str, etag: str) -> bool: ...

    # Listings
    def children(self, prefix: str) -> list[str]: ...
    def listing(self, prefix: str) -> dict[str, StoredObject]: ...
    def walk(self, prefix: str) -> Iterator[tuple[str, StoredObject]]: ...

    # The whole object: a multipart upload of copied parts
    def begin_upload(
        self, key: str, content_type: str, checked: bool = False
    ) -> tuple[str, bool]: ...
    def copy_part(
        self, key: str, upload_id: str, number: int, part: PartSource, checked: bool = False
    ) -> str: ...
    def complete_upload(
        self,
        key: str,
        upload_id: str,
        etags: list[str],
        expect: str | None = None,
        crcs: list[str] | None = None,
    ) -> str: ...
    def abort_upload(self, key: str, upload_id: str) -> None: ...
    def open_uploads(self, key: str) -> list[str]: ...


def compose(
    s3: ObjectStore,
    key: str,
    parts: list[PartSource],
    content_type: str,
    pool: Executor,
    upload: tuple[str, bool] | None = None,
    expect: str | None = None,
    crc64nvme: str | None = None,
) -> tuple[str, bool]:
    """Join `parts` (each but the last >= 5 MiB) into `key` in `s3`: the parts not copied yet
    are copied several at a time on `pool`, into `upload` (its id, and whether it was
    begun checked) or a new upload. Returns the object's ETag, and whether S3 checked
    its bytes against `crc64nvme`, the whole's: an upload begun checked, where the
    server takes a crc64nvme of the parts it copies (versitygw and AWS S3 do; MinIO
    does not, which raises CopiesUnchecked, and uploads are begun unchecked from then
    on). minio-py's compose_object would first stat every source and then copy one
    part at a time: on a long recording most of the time to completion. So its
    multipart verbs are used directly (minio is pinned to 7.2 for this). Raises
    UploadGone if `upload` is no longer there. `expect`: as for `put`."""
    fresh = upload is None
    wanted = crc64nvme is not None and all(p.crc64nvme for p in parts)
    upload_id, checked = upload or (None, False)
    if fresh:
        upload_id, checked = s3.begin_upload(key, content_type, wanted and s3.checks_copies)
    elif checked and not wanted:
        # S3 wants each part's checksum to complete it: parts from before crc64nvme.
        raise CopiesUnchecked("the crc64nvme of a part (or of the whole) is not known")

    def part_etag(number: int, part: PartSource) -> str:
        return part.copied or s3.copy_part(key, upload_id, number, part, checked)

    try:
        etags = list(pool.map(part_etag, count(1), parts))
        crcs = [*(p.crc64nvme for p in parts), crc64nvme] if checked else None
        return s3.complete_upload(key, upload_id, etags, expect, crcs), checked
    except BaseException:
        if fresh:  # an upload given is the caller's, and may be used again
            with contextlib.suppress(Exception):
                s3.abort_upload(key, upload_id)
        raise
