"""streamer makes only the S3 calls docs/s3-servers.md lists, as the server itself records them
(MinIO's own trace, read with `mc admin trace`)."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pytest
from conftest import wait_until
from harness import cli

from integration.servers import Mc

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
S3_SERVERS_DOC = (Path(__file__).resolve().parents[2] / "docs" / "s3-servers.md").read_text()
# MinIO's names for the S3 API calls that it names differently.
S3_NAMES = {
    "PutBucket": "CreateBucket",
    "NewMultipartUpload": "CreateMultipartUpload",
    "PutObjectPart": "UploadPart",
    "CopyObjectPart": "UploadPartCopy",
    "ListObjectsV2M": "ListObjectsV2",
}


class ServerTrace:
    """Every S3 call MinIO serves while it runs, from `mc admin trace --json`."""

    def __init__(self, minio, directory: Path):
        self.minio = minio
        self.path = directory / "trace.json"
        with open(self.path, "wb") as out:
            self.process = Mc(minio, directory).popen("admin", "trace", "--json", "t", stdout=out)
        self.catch_up()

    def catch_up(self) -> None:
        """Wait until the trace shows a call made now, and so every call made before."""
        probe = f"trace-probe-{uuid.uuid4().hex[:8]}"

        def seen() -> bool:
            self.minio.client.bucket_exists(probe)
            return bool(self.calls(probe))

        wait_until(seen, 20, interval=0.5, what="mc admin trace to show a call")

    def records(self) -> list[dict]:
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def calls(self, bucket: str) -> set[str]:
        return {
            S3_NAMES.get(name, name)
            for r in self.records()
            if r.get("type") == "S3" and f"{r.get('path', '')}/".startswith(f"/{bucket}/")
            for name in [r["api"].removeprefix("s3.")]
        }

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def listed_calls() -> set[str]:
    start = S3_SERVERS_DOC.index("\n## S3 calls\n")
    end = S3_SERVERS_DOC.index("\n\n", S3_SERVERS_DOC.index("streamer uses", start))
    paragraph = S3_SERVERS_DOC[start:end]
    return set(re.findall(r"\b(?:[A-Z][a-z]+){2,}(?:V2)?\b", paragraph))


def test_the_docs_name_the_calls_in_s3_s_own_words():
    assert {"PutObject", "UploadPartCopy", "ListObjectsV2", "HeadBucket"} <= listed_calls()


def test_streamer_makes_only_the_s3_calls_the_docs_list(make_daemon, minio, tmp_path):
    trace = ServerTrace(minio, tmp_path)
    try:
        # Chunks of 5 MiB are assembled by server-side copy; smaller ones by a streamed
        # upload, multipart for a file over 5 MiB.
        copied = make_daemon(home="copied", instance="copied", stream={"chunk_size": 5 * MiB})
        streamed = make_daemon(home="streamed", instance="streamed", stream={"chunk_size": MiB})
        for daemon in (copied, streamed):
            daemon.start()
            (daemon.watch / "big.mp4").write_bytes(os.urandom(11 * MiB))
            (daemon.watch / "small.mp4").write_bytes(os.urandom(100 * 1024))
        for daemon in (copied, streamed):
            for event in daemon.wait_for("stream_finished", count=2, timeout=60):
                assert cli(daemon, "verify", event["stream_id"]).returncode == 0
            daemon.stop()
        assert cli(copied, "doctor").returncode == 0
        trace.catch_up()
    finally:
        trace.stop()
    made = trace.calls(copied.bucket)
    assert made - listed_calls() == set(), "calls docs/s3-servers.md does not list"
    assert {"HeadBucket", "PutObject", "HeadObject", "GetObject", "ListObjectsV2"} <= made
    assert {"CreateMultipartUpload", "UploadPartCopy", "UploadPart"} <= made
    assert {"CompleteMultipartUpload", "ListMultipartUploads", "DeleteObject"} <= made
