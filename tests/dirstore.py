"""`DirectoryStore`: an ObjectStore over a local directory, for unit tests. What it does
is pinned by the contract suite (test_objectstore.py), which runs the same tests on
ChunkStore over real S3 servers.

An object is the file <root>/<bucket>/<key>; its metadata (ETag, content type, the digest
it was stored with, its crc64nvme, when it was written, its tags) is a JSON sidecar at
<root>/.sidecars/<bucket>/<key>. Multipart uploads are folders under <root>/.uploads.
A key that is also another key's folder ("a" beside "a/b") cannot be held; streamer's
layout makes none.

It answers as a server that takes crc64nvme, conditional writes and checksums in a
trailer, and keeps the crc64nvme of the parts it copies (versitygw, AWS S3). Where
ChunkStore lets a server's error through to its caller, this raises the same S3Error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import urllib3
from minio.error import S3Error
from minio.helpers import get_part_info

from streamer import digests
from streamer.bodies import Body, InMemory
from streamer.chunkstore import multipart_etag
from streamer.digests import CRC64NVME, SHA256, Digest
from streamer.fileio import write_before
from streamer.layout import Layout
from streamer.objectstore import (
    ABSENT,
    BucketMissing,
    CopiesUnchecked,
    Fetched,
    PartDiffers,
    PartSource,
    StoredObject,
    Taken,
    UploadGone,
)

MIN_PART = 5 * 1024 * 1024  # S3's least part, but for the last
BLOCK = 1024 * 1024


def s3_error(code: str, status: int, key: str) -> S3Error:
    """The error S3 answers with, as minio-py raises it."""
    return S3Error(urllib3.HTTPResponse(status=status), code, f"{code}: {key}", key, "", "")


def _md5():
    return hashlib.md5(usedforsecurity=False)


def _blocks(f: BinaryIO, size: int = BLOCK) -> Iterator[bytes]:
    while data := f.read(size):
        yield data


class DirectoryStore:
    def __init__(
        self,
        root: str | os.PathLike,
        bucket: str = "recordings",
        prefix: str = "rec",
        instance: str = "test-host",
    ):
        self.root = Path(root)
        self.bucket = bucket
        self.layout = Layout(prefix, instance)
        # Held while an object's bytes and sidecar are put in place, or opened to be read:
        # a reader sees the one object or the other, never the bytes of one with the
        # sidecar of another. Bytes are read and written outside it.
        self._lock = threading.RLock()
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)

    # How chunks go: as to a server that takes crc64nvme in a trailer

    checksum = CRC64NVME
    checksum_refused = None
    trails = True
    trailer_refused = False
    chunk_algorithms = (CRC64NVME,)
    conditional_writes = True
    checks_copies = True

    def checking_digest(self, sums: dict[str, Digest]) -> Digest:
        return sums[CRC64NVME]

    def ensure_bucket(self, create: bool) -> bool:
        if (self.root / self.bucket).is_dir():
            return False
        if not create:
            raise BucketMissing(f"bucket {self.bucket!r} does not exist")
        try:
            (self.root / self.bucket).mkdir()
        except FileExistsError:
            return False
        return True

    # Objects

    def put(
        self,
        key: str,
        body: Body,
        digest: Digest,
        content_type: str,
        expect: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        md5, check = _md5(), digests.hasher(digest.algorithm)
        with self._temporary() as tmp:
            size = self._write(tmp, body.pieces(), md5, check)
            if check.hexdigest() != digest.value:
                raise s3_error("BadDigest", 400, key)
            # S3 keeps the checksum a body went with: a crc64nvme, if that was it.
            crc = digest.value if digest.algorithm == CRC64NVME else None
            meta = _sidecar(md5.hexdigest(), size, content_type, digest, crc, tags)
            return self._place(key, tmp, meta, expect)

    def put_chunk(
        self, key: str, body: Body, sums: dict[str, Digest] | None, tags: dict[str, str] | None
    ) -> tuple[str, dict[str, Digest], Digest]:
        md5, crc = _md5(), digests.hasher(CRC64NVME)
        with self._temporary() as tmp:
            size = self._write(tmp, body.pieces(), md5, crc)
            taken = Digest(CRC64NVME, crc.hexdigest())
            if sums is not None and sums.get(CRC64NVME, taken) != taken:
                raise s3_error("BadDigest", 400, key)
            # Its checksum in a header is stored with it as well (x-amz-meta-*); in a
            # trailer, only as S3's own.
            stored = taken if sums is not None else None
            kind = "application/octet-stream"
            meta = _sidecar(md5.hexdigest(), size, kind, stored, taken.value, tags)
            etag = self._place(key, tmp, meta, ABSENT)
        return etag, {**(sums or {}), CRC64NVME: taken}, taken

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int,
        content_type: str,
        expect: str | None = None,
    ) -> str:
        part_size, parts = get_part_info(length, 0)  # as ChunkStore sends it
        if parts <= 1:
            data = stream.read(length)
            try:
                return self.put(key, InMemory(data), digests.of(SHA256, data), content_type, expect)
            except Taken:
                return self._identical(key, _md5_of(data))
        md5s = []

        def pieces():
            for done in range(0, length, part_size):
                data = stream.read(min(part_size, length - done))
                md5s.append(_md5_of(data))
                yield data

        with self._temporary() as tmp:
            size = self._write(tmp, pieces())
            etag = multipart_etag(md5s)
            try:
                return self._place(key, tmp, _sidecar(etag, size, content_type), expect)
            except Taken:
                return self._identical(key, etag)

    def get(self, key: str) -> bytes:
        _, f = self._opened(key)
        with f:
            return f.read()

    def get_if_exists(self, key: str) -> bytes | None:
        found = self.read(key)
        return found[0] if found is not None else None

    def read(self, key: str) -> tuple[bytes, str] | None:
        found = self._found(key)
        if found is None:
            return None
        meta, f = found
        with f:
            return f.read(), meta["etag"]

    def fetch_into(
        self, key: str, fd: int, offset: int, size: int, algorithm: str | None, block: int = BLOCK
    ) -> Fetched:
        meta, f = self._opened(key)
        stored = _stored(meta, checksum=True)
        algorithm = algorithm or (stored.algorithm if stored else SHA256)
        digest, length = digests.hasher(algorithm), 0
        with f:
            for data in _blocks(f, block):
                digest.update(data)
                write_before(fd, data, offset + length, offset + size)
                length += len(data)
        return Fetched(length, Digest(algorithm, digest.hexdigest()), stored)

    def digest_of(self, key: str, algorithm: str, also=None, etag: str | None = None) -> Digest:
        meta, f = self._opened(key)
        digest = digests.hasher(algorithm)
        with f:
            if etag is not None and meta["etag"] != etag:
                raise Taken(key)
            for data in _blocks(f):
                digest.update(data)
                if also is not None:
                    also.update(data)
        return Digest(algorithm, digest.hexdigest())

    def stat(self, key: str, checksum: bool = False) -> StoredObject | None:
        meta = self._meta(key)
        if meta is None:
            return None
        crc = meta["crc64nvme"] if checksum else None
        return StoredObject(meta["size"], meta["etag"], _stored(meta, checksum), crc64nvme=crc)

    def remove(self, key: str) -> None:
        with self._lock:
            if self._meta(key) is not None:
                self._delete(key)

    def remove_if(self, key: str, etag: str) -> bool:
        with self._lock:
            meta = self._meta(key)
            if meta is None or meta["etag"] != etag:
                return False
            self._delete(key)
            return True

    # Listings

    def children(self, prefix: str) -> list[str]:
        below = (key[len(prefix) :] for key, _ in self.walk(prefix))
        return sorted({prefix + rest.split("/")[0] + "/" for rest in below if "/" in rest})

    def listing(self, prefix: str) -> dict[str, StoredObject]:
        return dict(self.walk(prefix))

    def walk(self, prefix: str) -> Iterator[tuple[str, StoredObject]]:
        top = self._top()
        keys = (
            (Path(folder) / name).relative_to(top).as_posix()
            for folder, _, names in os.walk(top)
            for name in names
        )
        # In S3's order, UTF-8 binary order of the whole key (not folder by folder).
        for key in sorted(k for k in keys if k.startswith(prefix)):
            meta = self._meta(key)
            if meta is not None:  # else deleted since
                modified = datetime.fromisoformat(meta["modified"])
                yield key, StoredObject(meta["size"], meta["etag"], None, modified)

    # The whole object: a multipart upload of copied parts

    def begin_upload(self, key: str, content_type: str, checked: bool = False) -> tuple[str, bool]:
        self._paths(key)  # a bucket that is there, a key it can hold
        upload_id = uuid.uuid4().hex
        where = self._uploads() / upload_id
        where.mkdir(parents=True)
        started = {"key": key, "content_type": content_type, "checked": checked}
        self._put_json(where / "upload.json", started)
        return upload_id, checked

    def copy_part(
        self, key: str, upload_id: str, number: int, part: PartSource, checked: bool = False
    ) -> str:
        if checked and part.crc64nvme is None:
            raise CopiesUnchecked(f"the crc64nvme of {part.key} is not known")
        self._upload(key, upload_id)
        meta, f = self._opened(part.key)
        md5, crc = _md5(), digests.hasher(CRC64NVME)
        with f, self._temporary() as tmp:
            if meta["etag"] != part.etag:  # the copy is pinned to the source's ETag
                raise s3_error("PreconditionFailed", 412, key)
            size = self._write(tmp, _blocks(f), md5, crc)
            with self._lock:
                where = self._upload(key, upload_id)
                os.replace(tmp, where / f"{number}")
                copied = {"etag": md5.hexdigest(), "size": size, "crc64nvme": crc.hexdigest()}
                self._put_json(where / f"{number}.json", copied)
        if checked and copied["crc64nvme"] != part.crc64nvme:
            raise PartDiffers(
                f"part {number} copied from {part.key} has crc64nvme {copied['crc64nvme']}, "
                f"its source {part.crc64nvme}"
            )
        return copied["etag"]

    def complete_upload(
        self,
        key: str,
        upload_id: str,
        etags: list[str],
        expect: str | None = None,
        crcs: list[str] | None = None,
    ) -> str:
        with self._lock:
            where = self._upload(key, upload_id)
            started = json.loads((where / "upload.json").read_text())
            parts = [_json(where / f"{n}.json") for n in range(1, len(etags) + 1)]
            if not etags or bool(crcs) != started["checked"]:
                raise s3_error("InvalidRequest", 400, key)  # or of another checksum mode
            if any(p is None or p["etag"] != e for p, e in zip(parts, etags, strict=True)):
                raise s3_error("InvalidPart", 400, key)
            if any(p["size"] < MIN_PART for p in parts[:-1]):
                raise s3_error("EntityTooSmall", 400, key)
            if crcs:
                if [p["crc64nvme"] for p in parts] != crcs[:-1]:
                    raise s3_error("InvalidPart", 400, key)
                if digests.combine((p["crc64nvme"], p["size"]) for p in parts) != crcs[-1]:
                    raise s3_error("BadDigest", 400, key)  # the upload stays, as S3's does
            etag = multipart_etag(etags)
            try:
                self._check(key, expect)
            except Taken:
                # As ChunkStore: an object joined from these very parts is taken as written.
                etag = self._identical(key, etag)
                shutil.rmtree(where)
                return etag
            with self._temporary() as tmp:
                with open(tmp, "wb") as out:
                    for number in range(1, len(parts) + 1):
                        with open(where / f"{number}", "rb") as f:
                            shutil.copyfileobj(f, out, BLOCK)
                size = sum(p["size"] for p in parts)
                crc = crcs[-1] if crcs else None
                self._place(key, tmp, _sidecar(etag, size, started["content_type"], None, crc))
            shutil.rmtree(where)
            return etag

    def abort_upload(self, key: str, upload_id: str) -> None:
        with self._lock, contextlib.suppress(UploadGone):
            shutil.rmtree(self._upload(key, upload_id))

    def open_uploads(self, key: str) -> list[str]:
        with self._lock:
            found = {d.name: _json(d / "upload.json") for d in self._uploads().iterdir()}
        return sorted(upload_id for upload_id, u in found.items() if u and u["key"] == key)

    # Where things are

    def _top(self) -> Path:
        top = self.root / self.bucket
        if not top.is_dir():
            raise s3_error("NoSuchBucket", 404, self.bucket)
        return top

    def _paths(self, key: str) -> tuple[Path, Path]:
        """The object's file and its sidecar."""
        if not key or any(part in ("", ".", "..") for part in key.split("/")):
            raise ValueError(f"a key a directory cannot hold: {key!r}")
        return self._top() / key, self.root / ".sidecars" / self.bucket / key

    def _uploads(self) -> Path:
        uploads = self.root / ".uploads" / self.bucket
        uploads.mkdir(parents=True, exist_ok=True)
        return uploads

    def _upload(self, key: str, upload_id: str) -> Path:
        started = _json(self._uploads() / upload_id / "upload.json") if upload_id else None
        if started is None or started["key"] != key:
            raise UploadGone(f"multipart upload {upload_id} is gone")
        return self._uploads() / upload_id

    # Reading and writing

    def _meta(self, key: str) -> dict | None:
        with self._lock:
            return _json(self._paths(key)[1])

    def _found(self, key: str) -> tuple[dict, BinaryIO] | None:
        """The object's sidecar and its bytes, opened together: what replaces it later is
        not seen."""
        data, sidecar = self._paths(key)
        with self._lock:
            meta = _json(sidecar)
            return (meta, open(data, "rb")) if meta is not None else None

    def _opened(self, key: str) -> tuple[dict, BinaryIO]:
        found = self._found(key)
        if found is None:
            raise s3_error("NoSuchKey", 404, key)
        return found

    def _check(self, key: str, expect: str | None) -> None:
        if expect is None:
            return
        meta = self._meta(key)
        if (meta["etag"] if meta is not None else ABSENT) != expect:
            raise Taken(key)

    def _identical(self, key: str, etag: str) -> str:
        meta = self._meta(key)
        if meta is None or meta["etag"] != etag:
            raise Taken(key)
        return etag

    @contextlib.contextmanager
    def _temporary(self) -> Iterator[Path]:
        """A file name of its own, next to the objects (os.replace moves it in place);
        removed afterwards unless it was moved."""
        tmp = self.root / ".tmp" / uuid.uuid4().hex
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def _write(self, path: Path, pieces, *hashers) -> int:
        size = 0
        with open(path, "wb") as f:
            for piece in pieces:
                for hasher in hashers:
                    hasher.update(piece)
                f.write(piece)
                size += len(piece)
        return size

    def _put_json(self, path: Path, value: dict) -> None:
        with self._temporary() as tmp:
            tmp.write_text(json.dumps(value))
            os.replace(tmp, path)

    def _place(self, key: str, tmp: Path, meta: dict, expect: str | None = None) -> str:
        """The object written from `tmp`, if `expect` holds (else Taken, nothing written)."""
        data, sidecar = self._paths(key)
        with self._lock:
            self._check(key, expect)
            data.parent.mkdir(parents=True, exist_ok=True)
            sidecar.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, data)
            self._put_json(sidecar, meta)
        return meta["etag"]

    def _delete(self, key: str) -> None:
        """Under the lock: the object gone, and the folders it leaves empty (a key may
        then be one of their names)."""
        for path, top in zip(self._paths(key), (self._top(), self.root / ".sidecars"), strict=True):
            path.unlink(missing_ok=True)
            folder = path.parent
            while folder != top and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent


def _sidecar(
    etag: str,
    size: int,
    content_type: str,
    digest: Digest | None = None,
    crc64nvme: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict:
    return {
        "etag": etag,
        "size": size,
        "content_type": content_type,
        "digest": str(digest) if digest is not None else None,  # as x-amz-meta-<algorithm>
        "crc64nvme": crc64nvme,  # S3's own checksum of the whole, where it keeps one
        "modified": datetime.now(UTC).isoformat(),
        "tags": tags,
    }


def _stored(meta: dict, checksum: bool) -> Digest | None:
    """The digest an object was stored with; else, asked for with its checksum, the
    crc64nvme S3 keeps (as ChunkStore reads them)."""
    if meta["digest"] is not None:
        return Digest.parse(meta["digest"])
    return Digest(CRC64NVME, meta["crc64nvme"]) if checksum and meta["crc64nvme"] else None


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _md5_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
