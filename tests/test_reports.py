"""What an uploader's threads hand back to its main thread: a chunk S3 holds (`Sent`) becomes
the checkpoint's record of it, with the digest S3 checked it by and its crc64nvme; a survey
(`Survey`) holds for a Finish only at the size and mtime it was made at; and reports are
values, never changed once handed over."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from streamer.digests import CRC32C, CRC64NVME, SHA256, Digest, of
from streamer.messages import Finish
from streamer.policy import UploadChunk
from streamer.uploader.reports import Sent, Survey

BYTES = b"a chunk of a recording"
CRC = of(CRC64NVME, BYTES).value


def sent(digest: Digest, revision: int = 0) -> Sent:
    return Sent(
        chunk=UploadChunk(index=3, offset=3 * 4096, size=len(BYTES)),
        revision=revision,
        digest=digest,
        crc64nvme=CRC,
        etag="etag-3",
        head=None,
        seconds=0.2,
        read_at_ns=1_700_000_000_000_000_000,
        read_mtime_ns=1_699_999_999_000_000_000,
    )


def survey(size: int = 300, mtime_ns: int = 5_000) -> Survey:
    return Survey(size=size, mtime_ns=mtime_ns, sha256=None, stale=[], drop_from=None, checked=1)


def test_a_chunk_s3_holds_is_recorded_where_it_is_in_the_file_with_its_etag_and_read_times():
    before = datetime.now(UTC)
    record = sent(of(SHA256, BYTES), revision=2).record("rewritten after it was sent")
    assert (record.index, record.offset, record.size) == (3, 3 * 4096, len(BYTES))
    assert (record.etag, record.revision) == ("etag-3", 2)
    assert record.reason == "rewritten after it was sent"
    assert (record.read_at_ns, record.read_mtime_ns) == (
        1_700_000_000_000_000_000,
        1_699_999_999_000_000_000,
    )
    assert before <= record.uploaded_at <= datetime.now(UTC)
    assert sent(of(SHA256, BYTES)).record().reason is None, "a first revision has no reason"


@pytest.mark.parametrize("algorithm", [SHA256, CRC32C])
def test_a_chunk_keeps_the_digest_s3_checked_it_by_and_its_crc64nvme_beside(algorithm):
    digest = of(algorithm, BYTES)
    record = sent(digest).record()
    assert record.digest == digest, "what the audit checks S3's copy against"
    assert getattr(record, algorithm) == digest.value
    assert record.crc64nvme == CRC, "the whole's crc64nvme is combined from the chunks'"
    others = {SHA256, CRC32C} - {algorithm}
    assert all(getattr(record, other) is None for other in others)


def test_a_chunk_sent_with_crc64nvme_keeps_that_one_digest():
    digest = of(CRC64NVME, BYTES)
    record = sent(digest).record()
    assert record.digest == digest
    assert (record.crc64nvme, record.sha256, record.crc32c) == (CRC, None, None)


@pytest.mark.parametrize(
    ("size", "mtime_ns", "holds"),
    [(300, 5_000, True), (301, 5_000, False), (300, 5_001, False), (299, 4_999, False)],
)
def test_a_survey_holds_for_a_finish_only_at_the_size_and_mtime_it_was_made_at(
    size, mtime_ns, holds
):
    assert survey().holds(Finish(stream_id="cam-1", size=size, mtime_ns=mtime_ns)) is holds


def test_reports_are_values_that_cannot_change_once_handed_over():
    report = sent(of(SHA256, BYTES))
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.etag = "another"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        survey().size = 0  # type: ignore[misc]
