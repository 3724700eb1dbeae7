"""The ObjectStore over S3: the verbs to put and inspect objects, through minio-py (where
they go is `layout`; what each verb promises is `objectstore`).

No policy lives here: what to upload and when to retry is the uploader's business.
A ChunkStore holds a client (`s3client`); build it in the process that uses it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
from collections.abc import Callable, Iterator
from typing import BinaryIO
from xml.etree import ElementTree as ET

import urllib3
from minio.commonconfig import ComposeSource
from minio.datatypes import CompleteMultipartUploadResult
from minio.error import S3Error
from minio.helpers import genheaders, get_part_info, md5sum_hash
from minio.xml import Element, SubElement, findtext, getbytes

from streamer import bodies, digests, s3client
from streamer.bandwidth import TokenBucket
from streamer.bodies import Body, InMemory
from streamer.config import S3Config
from streamer.digests import CRC32C, CRC64NVME, SHA256, Digest
from streamer.fileio import PIECE, write_before
from streamer.layout import Layout
from streamer.objectstore import (
    ABSENT,
    BucketMissing,
    CopiesUnchecked,
    Fetched,
    PartDiffers,
    PartSource,
    PiecedBodyRefused,
    StoredObject,
    Taken,
    UploadGone,
)
from streamer.policy import TRANSIENT_CODES

# What S3 (and servers like it) answer for a key that holds no object.
MISSING = ("NoSuchKey", "NoSuchObject", "NotFound")
# What a server says to a PUT with tags it will not take.
TAGS_REFUSED = ("NotImplemented", "AccessDenied", "InvalidArgument", "InvalidRequest")
# What a server says to a checksum algorithm it does not know.
CHECKSUM_REFUSED = ("NotImplemented", "InvalidArgument", "InvalidRequest")


# What asks S3 to keep one crc64nvme of a whole object joined from parts.
CHECKSUM_ALGORITHM = "x-amz-checksum-algorithm"
CHECKSUM_TYPE = "x-amz-checksum-type"
FULL_OBJECT = "FULL_OBJECT"

# What a server says when a write's condition does not hold.
PRECONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict")


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
        # Over https a chunk goes unsigned, checked by its CRC (see streamer.digests); not
        # without verification either: anyone on the path could then forge a CRC. Over
        # http its bytes' sha256 is signed (each piece's, or where the server refuses that
        # the whole chunk's), unless s3.unsigned_payload_over_http trades that away.
        self._signs = (
            config.tls_skip_verify if config.secure else not config.unsigned_payload_over_http
        )
        # The checksum header a chunk goes with, best first: a server that refuses one gets
        # the next. sha256 is the last, and is then signed.
        self._checksums = (CRC64NVME, SHA256) if self._signs else (CRC64NVME, CRC32C, SHA256)
        self._checksum = self._checksums[0]
        # A chunk's CRC goes in a trailer, after its body (aws-chunked, as the AWS SDKs
        # send it; signed, each piece's sha256 is signed as it goes, as mc sends it): the
        # body is read once, hashed as it is sent, until the server refuses that, when it
        # is digested on a pass of its own before it is sent.
        self._trails = True
        # The keys whose body, sent in pieces, was refused once (per key: other senders'
        # bodies on the wire meanwhile say nothing of this one's).
        self._pieced_refused: set[str] = set()
        # Uploads that join chunks ask S3 to check the whole object's crc64nvme against
        # its parts', until the server refuses to copy a part into one.
        self._checked_copies = True
        self._client = s3client.client(config, connections)

    def ensure_bucket(self, create: bool) -> bool:
        """Whether this call made the bucket."""
        if self._client.bucket_exists(self.bucket):
            return False
        if not create:
            raise BucketMissing(
                f"bucket {self.bucket!r} does not exist and s3.create_bucket is off"
            )
        try:
            self._client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
            return False
        return True

    @property
    def checksum(self) -> str:
        """The checksum header chunks go with."""
        return self._checksum

    @property
    def checksum_refused(self) -> str | None:
        """The checksum the server refused, if it refused one: chunks go with the next."""
        at = self._checksums.index(self._checksum)
        return self._checksums[at - 1] if at else None

    @property
    def trails(self) -> bool:
        """Is a chunk's checksum sent after its body, taken as the body is sent?"""
        return self._trails and self._checksum != SHA256

    @property
    def trailer_refused(self) -> bool:
        """The server refused a checksum in a trailer: chunks are digested before they are
        sent, each read twice."""
        return not self._trails

    @property
    def chunk_algorithms(self) -> tuple[str, ...]:
        """What a chunk's first pass over its bytes takes: its crc64nvme, whatever it is
        sent with (the whole recording's is combined from these), then the checksum it
        goes with, and its sha256 if that is signed."""
        wanted = (CRC64NVME, self._checksum, SHA256 if self._signs else CRC64NVME)
        return tuple(dict.fromkeys(wanted))

    def checking_digest(self, sums: dict[str, Digest]) -> Digest:
        """Of a chunk's digests, the one S3 checks it by: its sha256 where that is signed,
        else its checksum."""
        return sums[SHA256 if self._signs else self._checksum]

    def put(
        self,
        key: str,
        body: Body,
        digest: Digest,
        content_type: str,
        expect: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Upload `body`, whose digest is given, in one PUT and return its ETag. S3 checks
        the body against the digest, which is stored with the object. `expect`: only if
        the key holds what the writer last saw there, ABSENT or an ETag (raises Taken);
        a server that does not take conditions is asked first (`conditional_writes`).
        `tags`: the object's tags, where it takes them."""
        signed = digest.value if digest.algorithm == SHA256 else None
        return self._put(key, body, digest, signed, content_type, expect, tags)

    def _put(
        self,
        key: str,
        body: Body,
        checksum: Digest,
        signed: str | None,
        content_type: str,
        expect: str | None,
        tags: dict[str, str] | None,
    ) -> str:
        tags = tags if self._tagging else None
        if expect is not None and not self._conditional:
            self._check_holds(key, expect)
        condition = self._condition(expect)
        try:
            return self._send(key, body, checksum, signed, content_type, condition, tags)
        except S3Error as exc:
            if tags and exc.code in TAGS_REFUSED:
                # Some servers take no tags (R2, B2), some policies allow PutObject but
                # not PutObjectTagging: the chunk matters, its tag does not.
                etag = self._put(key, body, checksum, signed, content_type, expect, None)
                self._tagging = False
                return etag
            if expect is not None and self._conditional and exc.code == "NotImplemented":
                self._conditional = False
                return self._put(key, body, checksum, signed, content_type, expect, tags)
            raise

    @property
    def conditional_writes(self) -> bool:
        """The server honours If-None-Match and If-Match on a PUT. Where it refuses them,
        a conditional write reads the key first and writes only if it holds what was
        expected: never over what this store did not see, though another writer could
        come between the read and the write."""
        return self._conditional

    def _condition(self, expect: str | None) -> dict[str, str]:
        if expect is None or not self._conditional:
            return {}
        if expect == ABSENT:
            return {"If-None-Match": "*"}
        return {"If-Match": f'"{expect}"'}

    def _check_holds(self, key: str, expect: str) -> None:
        found = self.stat(key)
        if (found.etag if found is not None else ABSENT) != expect:
            raise Taken(key)

    def put_chunk(
        self,
        key: str,
        body: Body,
        sums: dict[str, Digest] | None,
        tags: dict[str, str] | None,
    ) -> tuple[str, dict[str, Digest], Digest]:
        """A chunk's PUT, never over an object already at `key` (raises Taken) where the
        server can tell; `sums`: its digests, as `chunk_algorithms` asks, or None where
        the store `trails` (they are taken as the body is sent). Returns its ETag, its
        digests and the one S3 checked it by. A checksum the server refuses is given up
        for the next one (its digest taken on another pass over the body), but only if the
        same PUT, with the same tags and condition, then goes through with it: a refusal
        with the same code may be of the tags or the condition instead. A trailer the
        server refuses is given up the same way, for the checksum in a header."""
        content_type = "application/octet-stream"
        tags = tags if self._tagging else None
        if not self._conditional:
            self._check_holds(key, ABSENT)
        condition = self._condition(ABSENT)
        trailed = None  # the checksum a refused trailer carried
        # Read once: another sender may give it up for the next while this one is on the
        # wire, and what this trailer's refusal says is about this checksum.
        checksum = self._checksum
        if sums is None and self._trails and checksum != SHA256:
            try:
                sent = self._send_trailing(key, body, checksum, content_type, condition, tags)
                self._pieced_refused.discard(key)
                return sent
            except S3Error as exc:
                # A server without trailers may say so in many ways; one that took them
                # and failed for a while says that in the codes worth retrying.
                if exc.code in TRANSIENT_CODES or (
                    exc.response.status >= 500 and exc.code not in CHECKSUM_REFUSED
                ):
                    raise
                # A body damaged on the way (a piece not as signed, its framing broken) is
                # refused once; by a server that takes no such bodies, every time. What
                # says plainly that it is not taken (or its tags, or its condition), or a
                # refusal of every request (wrong credentials), is not sent again as it was.
                once = exc.code not in TAGS_REFUSED and key not in self._pieced_refused
                if once and self._answers():
                    self._pieced_refused.add(key)
                    raise PiecedBodyRefused(f"S3 refused a body sent in pieces: {exc}") from exc
            self._pieced_refused.discard(key)
            trailed = checksum
        if sums is None or not sums.keys() >= set(self.chunk_algorithms):
            sums = {**(sums or {}), **bodies.digests_of(self.chunk_algorithms, body)}
            body = bodies.Checked(body, sums[CRC64NVME])
        tried = self._checksums[self._checksums.index(self._checksum) :]
        for algorithm in tried:
            if algorithm not in sums:
                sums = {**sums, algorithm: bodies.digest(algorithm, body)}
            signed = sums[SHA256].value if self._signs or algorithm == SHA256 else None
            try:
                etag = self._send(key, body, sums[algorithm], signed, content_type, condition, tags)
            except S3Error as exc:
                if exc.code in CHECKSUM_REFUSED and algorithm != SHA256:
                    continue
                if exc.code not in TAGS_REFUSED or (exc.code not in CHECKSUM_REFUSED and not tags):
                    raise
                # Perhaps the tags or the condition: `_put` tries without them.
                etag = self._put(key, body, sums[algorithm], signed, content_type, ABSENT, tags)
                return etag, sums, sums[SHA256] if signed else sums[algorithm]
            if algorithm == trailed:  # the trailer was refused, not its checksum
                self._trails = False
            self._checksum = algorithm  # those before it were refused
            return etag, sums, self.checking_digest(sums)
        raise AssertionError("sha256, the last checksum tried, either goes or raises")

    def _answers(self) -> bool:
        """Does S3 take this store's requests without a body (a HEAD of the bucket)?"""
        try:
            return self._client.bucket_exists(self.bucket)
        except (S3Error, urllib3.exceptions.HTTPError):
            return False

    def _send_trailing(
        self,
        key: str,
        body: Body,
        checksum: str,
        content_type: str,
        condition: dict[str, str],
        tags: dict[str, str] | None,
    ) -> tuple[str, dict[str, Digest], Digest]:
        """One PUT of `body`, read once: each piece hashed and sent in aws-chunked framing,
        the checksum S3 checks it by in a trailer after the last. Where the store signs,
        each piece's sha256 is signed as it goes, and the trailer too (as mc signs its
        bodies over http). What S3 stores is what was hashed, whatever the file did
        meanwhile."""
        hashers = {a: digests.hasher(a) for a in dict.fromkeys((CRC64NVME, checksum))}
        size = len(body)
        headers = genheaders({"Content-Type": content_type}, self._sse, tags, None, False)
        headers.update(condition)
        headers["x-amz-content-sha256"] = (
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
            if self._signs
            else "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        )
        headers["Content-Encoding"] = "aws-chunked"
        headers["x-amz-decoded-content-length"] = str(size)
        # As wide as any CRC of this algorithm: what the trailer's length is counted by.
        nothing = Digest(checksum, hashers[checksum].hexdigest())
        headers["x-amz-trailer"] = nothing.header()[0]
        # As the AWS SDKs send it: what an Object Lock bucket asks of a PUT.
        headers["x-amz-sdk-checksum-algorithm"] = checksum.upper()
        # Signed as it is sent: the request's own signature, made as it is sent, is where
        # the pieces' begin.
        signer = functools.partial(self._client.piece_signer, headers) if self._signs else None
        framing = _Framing(signer)
        headers["Content-Length"] = str(framing.length(size, nothing))

        def framed():
            # In frames of PIECE bytes, as counted above: a span's pieces are whole ones.
            for piece in bodies.Tapped(body, *hashers.values()).pieces():
                for start in range(0, len(piece), PIECE):
                    yield from framing.frame(piece[start : start + PIECE])
            yield framing.last(Digest(checksum, hashers[checksum].hexdigest()))

        etag = self._put_body(key, framed(), headers, condition)
        sums = {a: Digest(a, h.hexdigest()) for a, h in hashers.items()}
        return etag, sums, sums[checksum]

    def _send(
        self,
        key: str,
        body: Body,
        checksum: Digest,
        signed: str | None,
        content_type: str,
        condition: dict[str, str],
        tags: dict[str, str] | None,
    ) -> str:
        """One PUT, as asked; raises Taken where the `condition` headers do not hold. The
        body is read as it is sent: bytes that differ from `checksum`, or from the sha256
        `signed` (None: sent unsigned), are refused by S3. The digest S3 checks it by is
        stored with it (x-amz-meta-<algorithm>) for a later look to compare."""
        stored = Digest(SHA256, signed) if signed else checksum
        headers = genheaders(
            {"Content-Type": content_type, stored.algorithm: stored.value},
            self._sse,
            tags,
            None,
            False,
        )
        headers["Content-Length"] = str(len(body))
        headers["x-amz-content-sha256"] = signed or "UNSIGNED-PAYLOAD"
        # Checked by S3, and what it asks of a PUT to an Object Lock bucket.
        name, value = checksum.header()
        headers[name] = value
        headers.update(condition)
        return self._put_body(key, body.pieces(), headers, condition)

    def _put_body(self, key: str, pieces, headers: dict, condition: dict[str, str]) -> str:
        """PutObject of the bytes `pieces` gives, paced to the bandwidth cap; its ETag."""
        if self._bandwidth:
            pieces = self._bandwidth.pace(pieces)
        # Closed here, not when the error's frames go: a body read from a file holds it open.
        with contextlib.closing(pieces):
            try:
                return self._client._put_object(self.bucket, key, pieces, headers).etag
            except S3Error as exc:
                if _not_held(exc, condition):
                    raise Taken(key) from None
                raise

    def get_if_exists(self, key: str) -> bytes | None:
        found = self.read(key)
        return found[0] if found is not None else None

    def read(self, key: str) -> tuple[bytes, str] | None:
        """An object's bytes and its ETag, in one GET; None if there is none."""
        try:
            with self._response(key) as response:
                return response.read(), response.headers.get("ETag", "").strip('"')
        except S3Error as exc:
            if exc.code in MISSING:
                return None
            raise

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int,
        content_type: str,
        expect: str | None = None,
    ) -> str:
        """Upload `length` bytes read from `stream` in order (the caller may be hashing
        it), in one PUT or, when large, in parts of minio-py's size; return the ETag.
        `expect`: as for `put`; an object with these very bytes there already is taken
        as written."""
        if self._bandwidth:
            stream = _PacedReader(stream, self._bandwidth)
        part_size, count = get_part_info(length, 0)
        if count <= 1:
            data = stream.read(length)
            try:
                return self.put(key, InMemory(data), digests.of(SHA256, data), content_type, expect)
            except Taken:
                return self._identical(key, hashlib.md5(data, usedforsecurity=False).hexdigest())
        upload_id, _ = self.begin_upload(key, content_type)
        try:
            etags = [
                self._client._upload_part(
                    self.bucket, key, stream.read(min(part_size, length - done)), None, upload_id, n
                )
                for n, done in enumerate(range(0, length, part_size), start=1)
            ]
            return self.complete_upload(key, upload_id, etags, expect)
        except BaseException:
            with contextlib.suppress(Exception):
                self.abort_upload(key, upload_id)
            raise

    def _identical(self, key: str, etag: str) -> str:
        """A conditional write was refused: the object there is taken as written if its
        ETag is the one the write would have made (the same bytes, or parts); else Taken."""
        found = self.stat(key)
        if found is None or found.etag != etag:
            raise Taken(key)
        return etag

    def remove(self, key: str) -> None:
        """Delete an object: doctor's scratch objects."""
        self._client.remove_object(self.bucket, key)

    def remove_if(self, key: str, etag: str) -> bool:
        """Delete the object at `key` only while it is the one with `etag`; False (nothing
        deleted) if another object, or none, is there. The DELETE itself carries the ETag
        (If-Match) for a server that checks it; it follows a HEAD that checks it for one
        that does not."""
        found = self.stat(key)
        if found is None or found.etag != etag:
            return False
        condition = self._condition(etag)
        try:
            self._client._execute("DELETE", self.bucket, key, headers=condition)
        except S3Error as exc:
            if exc.code in PRECONDITION_FAILED or exc.code in MISSING:
                return False
            if exc.code != "NotImplemented" or not condition:
                raise
            self._client.remove_object(self.bucket, key)  # checked by the HEAD alone
        return True

    @property
    def checks_copies(self) -> bool:
        """Does an upload that joins chunks ask S3 to check the whole's crc64nvme?"""
        return self._checked_copies and self._checksum == CRC64NVME

    def begin_upload(self, key: str, content_type: str, checked: bool = False) -> tuple[str, bool]:
        """Start a multipart upload to `key`; return its upload id, and whether it is
        checked. `checked`: S3 is to take a crc64nvme of each part and check the whole
        object's against them; a server that refuses that gets an upload without."""
        headers = genheaders({"Content-Type": content_type}, self._sse, None, None, False)
        if checked:
            headers[CHECKSUM_ALGORITHM] = "CRC64NVME"
            headers[CHECKSUM_TYPE] = FULL_OBJECT
        try:
            return self._client._create_multipart_upload(self.bucket, key, headers), checked
        except S3Error as exc:
            if not checked or exc.code not in CHECKSUM_REFUSED:
                raise
        self._checked_copies = False
        return self.begin_upload(key, content_type)

    def copy_part(
        self, key: str, upload_id: str, number: int, part: PartSource, checked: bool = False
    ) -> str:
        """Copy `part`'s source object, pinned to its ETag, into the upload as part
        `number`; return the part's ETag. `checked`: the upload asked for a whole-object
        crc64nvme, and the part's, as S3 took it, must be its source's (PartDiffers);
        a part whose crc64nvme is not known (uploaded before crc64nvme) cannot go into
        such an upload (CopiesUnchecked)."""
        if checked and part.crc64nvme is None:
            raise CopiesUnchecked(f"the crc64nvme of {part.key} is not known")
        copy = ComposeSource(self.bucket, part.key)
        copy.build_headers(part.size, part.etag)
        try:
            with _upload_gone_if_missing(upload_id):
                response = self._client._execute(
                    "PUT",
                    self.bucket,
                    key,
                    headers=copy.headers,
                    query_params={"partNumber": str(number), "uploadId": upload_id},
                )
        except S3Error as exc:
            if not checked or exc.code not in CHECKSUM_REFUSED:
                raise
            self._checked_copies = False
            raise CopiesUnchecked(
                f"S3 copies no part into an upload that asks for a crc64nvme ({exc.message})"
            ) from None
        result = ET.fromstring(response.data.decode())
        etag = findtext(result, "ETag", True).strip('"')
        taken = findtext(result, "ChecksumCRC64NVME")
        if checked and taken is None:
            self._checked_copies = False
            raise CopiesUnchecked("S3 took no crc64nvme of a part it copied")
        if checked and _hex(taken) != part.crc64nvme:
            raise PartDiffers(
                f"part {number} copied from {part.key} has crc64nvme {_hex(taken)}, its "
                f"source {part.crc64nvme}"
            )
        return etag

    def complete_upload(
        self,
        key: str,
        upload_id: str,
        etags: list[str],
        expect: str | None = None,
        crcs: list[str] | None = None,
    ) -> str:
        """Join the parts, numbered from 1 in the order given, into `key`; return its ETag.
        Parts of the upload not listed are discarded by S3. `expect`: as for `put`; an
        object joined from these very parts there already is taken as written. `crcs`:
        the parts' crc64nvme, and last the whole object's, for S3 to check (an upload
        begun `checked`)."""
        if expect is not None and not self._conditional:
            self._check_holds(key, expect)
        try:
            with _upload_gone_if_missing(upload_id):
                return self._complete(key, upload_id, etags, self._condition(expect), crcs)
        except S3Error as exc:
            if expect is None or not self._conditional or exc.code != "NotImplemented":
                raise
            self._conditional = False
            return self.complete_upload(key, upload_id, etags, expect, crcs)
        except Taken:
            etag = self._identical(key, multipart_etag(etags))
            self.abort_upload(key, upload_id)
            return etag

    def _complete(
        self,
        key: str,
        upload_id: str,
        etags: list[str],
        condition: dict[str, str],
        crcs: list[str] | None,
    ) -> str:
        """CompleteMultipartUpload as minio-py sends it, with the condition's headers, and
        the checksums of the parts and of the whole where `crcs` gives them."""
        element = Element("CompleteMultipartUpload")
        for number, etag in enumerate(etags, start=1):
            part = SubElement(element, "Part")
            SubElement(part, "PartNumber", str(number))
            SubElement(part, "ETag", f'"{etag}"')
            if crcs:
                SubElement(part, "ChecksumCRC64NVME", Digest(CRC64NVME, crcs[number - 1]).b64)
        body = getbytes(element)
        headers = {"Content-Type": "application/xml", "Content-MD5": md5sum_hash(body)}
        if crcs:
            name, value = Digest(CRC64NVME, crcs[-1]).header()
            headers[name] = value
            headers[CHECKSUM_TYPE] = FULL_OBJECT
        try:
            response = self._client._execute(
                "POST",
                self.bucket,
                key,
                body=body,
                headers={**headers, **condition},
                query_params={"uploadId": upload_id},
            )
        except S3Error as exc:
            if _not_held(exc, condition):
                raise Taken(key) from None
            raise
        return CompleteMultipartUploadResult(response).etag

    def abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(UploadGone), _upload_gone_if_missing(upload_id):
            self._client._abort_multipart_upload(self.bucket, key, upload_id)

    def open_uploads(self, key: str) -> list[str]:
        """The ids of the multipart uploads to `key` not completed or aborted yet."""
        result = self._client._list_multipart_uploads(self.bucket, prefix=key)
        return [u.upload_id for u in result.uploads if u.object_name == key]

    def children(self, prefix: str) -> list[str]:
        """The 'folders' right under `prefix` (one listing with a delimiter)."""
        items = self._client.list_objects(self.bucket, prefix=prefix, recursive=False)
        return [item.object_name for item in items if item.is_dir]

    def listing(self, prefix: str) -> dict[str, StoredObject]:
        """Every object under `prefix`, by key, with its size and ETag (one request per
        thousand objects; no digest)."""
        return dict(self.walk(prefix))

    def walk(self, prefix: str) -> Iterator[tuple[str, StoredObject]]:
        """`listing`'s objects one at a time, a page of a thousand asked for as the last is
        used up, in the order S3 lists them (UTF-8 binary order of their keys)."""
        for item in self._client.list_objects(self.bucket, prefix=prefix, recursive=True):
            yield item.object_name, StoredObject(item.size, item.etag, None, item.last_modified)

    def fetch_into(
        self,
        key: str,
        fd: int,
        offset: int,
        size: int,
        algorithm: str | None,
        block: int = 1024 * 1024,
    ) -> Fetched:
        """Write an object's bytes into the open file `fd` from `offset`, at most `size`
        of them, a block at a time (memory stays at one block), hashing them all on the
        way with `algorithm` (None: the one the object was stored with, sha256 if none).
        The digest it was stored with is S3's own checksum of it where no other went with
        it (its CRC in a trailer)."""
        length = 0
        with self._response(key, checksum=True) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            full_object = headers.get(CHECKSUM_TYPE, FULL_OBJECT) == FULL_OBJECT
            stored = _stored_digest(headers, full_object)
            algorithm = algorithm or (stored.algorithm if stored else SHA256)
            digest = digests.hasher(algorithm)
            for data in response.stream(block):
                digest.update(data)
                write_before(fd, data, offset + length, offset + size)
                length += len(data)
        return Fetched(length, Digest(algorithm, digest.hexdigest()), stored)

    def get(self, key: str) -> bytes:
        with self._response(key) as response:
            return response.read()

    def digest_of(self, key: str, algorithm: str, also=None, etag: str | None = None) -> Digest:
        """The digest of an object's bytes, read from S3; `also`, a hasher, is fed them too.
        `etag`: only of the object with that ETag (raises Taken if another is there)."""
        digest = digests.hasher(algorithm)
        with self._response(key, etag) as response:
            for block in response.stream(1024 * 1024):
                digest.update(block)
                if also is not None:
                    also.update(block)
        return Digest(algorithm, digest.hexdigest())

    @contextlib.contextmanager
    def _response(self, key: str, etag: str | None = None, checksum: bool = False):
        """An object's body (only if its ETag is `etag`, if given), its connection given
        back to the pool afterwards; `checksum`: with the checksum S3 keeps of it."""
        asked = {"If-Match": f'"{etag}"'} if etag is not None else {}
        if checksum:
            asked["x-amz-checksum-mode"] = "ENABLED"
        try:
            response = self._client.get_object(self.bucket, key, request_headers=asked or None)
        except S3Error as exc:
            if exc.code in PRECONDITION_FAILED:
                raise Taken(key) from None
            raise
        try:
            yield response
        finally:
            response.close()
            response.release_conn()

    def stat(self, key: str, checksum: bool = False) -> StoredObject | None:
        """An object's size, ETag and stored digest; `checksum`: and the crc64nvme S3
        keeps of its whole bytes, if it keeps one."""
        asked = {"x-amz-checksum-mode": "ENABLED"} if checksum else None
        try:
            info = self._client.stat_object(self.bucket, key, extra_headers=asked)
        except S3Error as exc:
            if exc.code in MISSING:
                # minio-py's frames and this error form a reference cycle, which would keep
                # every caller's frame, and a chunk buffer with it, until the cyclic garbage
                # collector ran: with many streams, a dozen chunks per uploader.
                exc.__traceback__ = None
                return None
            raise
        headers = {k.lower(): v for k, v in info.metadata.items()}
        full_object = headers.get(CHECKSUM_TYPE, FULL_OBJECT) == FULL_OBJECT
        crc = _hex(headers.get("x-amz-checksum-crc64nvme")) if full_object else None
        digest = _stored_digest(headers, full_object)
        return StoredObject(info.size, info.etag, digest, crc64nvme=crc)


def _not_held(exc: S3Error, condition: dict[str, str]) -> bool:
    """Did a write fail because its condition does not hold? S3 answers an If-Match on a
    key that holds nothing with NoSuchKey."""
    return exc.code in PRECONDITION_FAILED or ("If-Match" in condition and exc.code in MISSING)


class _Framing:
    """aws-chunked framing: each piece its length in hex, CRLF, itself, CRLF; then an empty
    piece and the trailer. Signed, each piece's length is followed by its signature, and
    the trailer by its own."""

    SIGNATURE = len(";chunk-signature=") + 64

    def __init__(self, signer: Callable[[], s3client.PieceSigner] | None):
        self._signed = signer is not None  # None: the pieces go unsigned
        self._make_signer = signer
        self._signer: s3client.PieceSigner | None = None

    def length(self, size: int, checksum: Digest) -> int:
        """The framed length of `size` bytes in pieces of PIECE (the last shorter), with a
        trailer of `checksum`'s width."""
        full, rest = divmod(size, PIECE)
        frames = [PIECE] * full + ([rest] if rest else []) + [0]
        extra = self.SIGNATURE if self._signed else 0
        framed = sum(len(f"{n:x}") + extra + 4 + n for n in frames) - 2
        return framed + len(self._trailer(checksum, "0" * 64))

    def frame(self, piece: memoryview):
        yield self._head(piece)
        yield piece
        yield b"\r\n"

    @property
    def signer(self) -> s3client.PieceSigner:
        if self._signer is None:
            self._signer = self._make_signer()
        return self._signer

    def _head(self, piece) -> bytes:
        signature = f";chunk-signature={self.signer.piece(piece)}" if self._signed else ""
        return f"{len(piece):x}{signature}\r\n".encode()

    def last(self, checksum: Digest) -> bytes:
        """The empty piece that ends the body, and the trailer carrying `checksum`."""
        head = self._head(b"")
        if not self._signed:
            return head + self._trailer(checksum, "")
        line = "{}:{}\n".format(*checksum.header()).encode()
        return head + self._trailer(checksum, self.signer.trailer(line))

    def _trailer(self, checksum: Digest, signature: str) -> bytes:
        signed = f"x-amz-trailer-signature:{signature}\r\n" if self._signed else ""
        return "{}:{}\r\n{}\r\n".format(*checksum.header(), signed).encode()


def _hex(b64: str | None) -> str | None:
    """A checksum as S3 gives it (base64) in hex, as streamer keeps it."""
    return base64.b64decode(b64).hex() if b64 else None


def multipart_etag(etags: list[str]) -> str:
    """The ETag S3 gives an object joined from parts with these ETags (each an MD5)."""
    try:
        joined = b"".join(bytes.fromhex(etag) for etag in etags)
    except ValueError:
        return ""  # not MD5s (an encrypted object's): matches no ETag
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(etags)}"


def _stored_digest(headers: dict[str, str], full_object: bool = False) -> Digest | None:
    """The digest streamer stored an object with (x-amz-meta-<algorithm>); else, where
    S3 gives a `full_object` one, the checksum of all its bytes S3 keeps (a chunk whose
    CRC went in a trailer, asked for with x-amz-checksum-mode), which S3 checked as it
    took them."""
    for algorithm in digests.ALGORITHMS:
        if (value := headers.get(f"x-amz-meta-{algorithm}")) is not None:
            return Digest(algorithm, value)
    for algorithm in (CRC64NVME, CRC32C) if full_object else ():
        if (value := headers.get(f"x-amz-checksum-{algorithm}")) is not None:
            return Digest(algorithm, _hex(value))
    return None


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
