"""How the uploader judges a failed step, and when it tries it again: one classification
and one backoff for every retry site (a chunk or a completion, a part copy, the bucket
check). Every error is retried, for ever: only how soon, and how loudly, depends on it."""

from __future__ import annotations

from dataclasses import dataclass

import urllib3
from minio.error import MinioException, S3Error

from streamer.checkpoint import CheckpointUnwritable
from streamer.fileio import SourceChanged, SourceUnreadable
from streamer.objectstore import BucketMissing, PiecedBodyRefused, Taken, UploadGone
from streamer.policy import OtherRecording, is_rejection, retry_delay
from streamer.preflight import BUCKET_HINT
from streamer.s3client import NoCredentials

# Errors that say S3 itself (or the way to it) is in trouble, not the file. A missing bucket
# is not: S3 answered.
S3_TROUBLE = (MinioException, urllib3.exceptions.HTTPError, NoCredentials)
# The errors a fault can cause, which may go away by themselves: S3 or the network away,
# a body damaged on the way, the file changed or unreadable, the checkpoint's disk full,
# or S3 dropped the assembly upload (begun again). Any other exception, an OSError of
# streamer's own among them, is a bug: it is not retried quietly.
AWAY = (
    PiecedBodyRefused,
    SourceChanged,
    SourceUnreadable,
    UploadGone,
    CheckpointUnwritable,
    MinioException,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)
REJECTED_HINT = "check s3.access_key, s3.secret_key, s3.bucket and the bucket's policy"
MISSING_HINT = "put the chunk back (the local file has its bytes): the stream then completes"
TAKEN_HINT = (
    "S3 holds an object there that this store did not write (another host under this "
    "instance name, or a copy of this checkpoint store): it is never written over; see "
    "docs/operations.md, Backup and restore"
)
UNTRUSTED_HINT = "S3's certificate is not trusted: set s3.ca_file to the CA certificate (PEM)"


class NotInS3(Exception):
    """A chunk the checkpoint records is not in S3 as recorded (removed behind streamer's
    back): the stream cannot be complete until someone puts it back."""


def classify(exc: Exception) -> str:
    """'transient' (S3 or the network or the file was away), 'rejected' (S3 said no, for a
    reason that persists), or 'failed' (anything else)."""
    if isinstance(exc, S3Error):
        status = exc.response.status if exc.response is not None else 500
        return "rejected" if is_rejection(status, exc.code) else "transient"
    if isinstance(exc, BucketMissing | NoCredentials | NotInS3 | Taken | OtherRecording):
        return "rejected"
    if isinstance(exc, AWAY):
        return "transient"
    return "failed"


def hint(exc: Exception, rejected: bool) -> dict:
    """What an operator can do about it, as a log field, where there is something."""
    if isinstance(exc, NotInS3):
        return {"hint": MISSING_HINT}
    if isinstance(exc, BucketMissing):
        return {"hint": BUCKET_HINT}
    if isinstance(exc, Taken | OtherRecording):
        return {"hint": TAKEN_HINT}
    if "certificate verify failed" in str(exc):
        return {"hint": UNTRUSTED_HINT}
    return {"hint": REJECTED_HINT} if rejected else {}


@dataclass
class Backoff:
    """One step's failures in a row, and when it may be tried again."""

    attempt: int = 0
    due: float = 0.0  # not before
    since: float = 0.0  # when the failures in a row began
    error: str = ""  # the last one, as logged

    def failed(self, kind: str, now: float, base: float, cap: float) -> float:
        """Count a failure and schedule the next try (full jitter; a rejection waits the
        whole cap, never in a hot loop); return the delay."""
        delay = retry_delay(self.attempt, kind != "transient", base, cap)
        if self.attempt == 0:
            self.since = now
        self.attempt += 1
        self.due = now + delay
        return delay

    def succeeded(self) -> None:
        self.attempt = 0
        self.error = ""

    def retry_now(self) -> None:
        self.due = 0.0
