"""Kill streamer again and again, at random moments, while three recordings grow: at the
end every stream is exact in S3, its chunks contiguous, its metadata complete."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import time
from pathlib import Path

import pytest
from conftest import alive, wait_until
from recordings import GrowingFile, sha256_file

from integration.servers import manifest_of, reassemble

pytestmark = pytest.mark.integration

KiB = 1024


def crash_loop(make_daemon, minio, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    daemon = make_daemon(stream={"idle_timeout": 3})
    daemon.start()
    seconds = kills * 0.9 + 5
    writers = [
        GrowingFile(
            daemon.watch / f"loop-{n}.mp4", total=int(seconds * 192 * KiB), rate=192 * KiB
        ).start()
        for n in range(3)
    ]
    killed = {"supervisor": 0, "uploader": 0}
    for _ in range(kills):
        time.sleep(rng.uniform(0.2, 1.2))
        if daemon.process.poll() is not None:  # halted after too many uploader restarts
            daemon.expect("halting", exit_codes=(1,), run=-1).start()
        uploaders = [pid for pid in daemon.uploader_pids() if alive(pid)]
        if rng.random() < 0.5 or not uploaders:
            old = uploaders
            daemon.kill()
            wait_until(lambda old=old: not any(alive(p) for p in old), 10, what="orphans gone")
            killed["supervisor"] += 1
            daemon.start()
        else:
            os.kill(rng.choice(uploaders), signal.SIGKILL)
            daemon.expect(uploader_died=range(0, 2))  # none if its supervisor is killed first
            killed["uploader"] += 1
    for writer in writers:
        writer.wait(120)
    if daemon.process.poll() is not None:
        daemon.expect("halting", exit_codes=(1,), run=-1).start()

    def all_finished():
        done = {e["stream_id"] for e in daemon.find("stream_finished")}
        return done if len(done) >= 3 else None

    streams = wait_until(all_finished, 120, what="all three streams to finish")
    assert sum(killed.values()) == kills and killed["supervisor"] and killed["uploader"]
    assert len(streams) == 3, f"one stream per recording: {streams}"
    for stream_id in streams:
        manifest = manifest_of(minio.client, daemon.bucket, stream_id)
        source = Path(manifest["source"]["path"])
        data = reassemble(minio.client, daemon.bucket, manifest)
        assert hashlib.sha256(data).hexdigest() == sha256_file(source) == manifest["sha256"]
        indices = [c["index"] for c in manifest["chunks"]]
        assert indices == list(range(len(indices))), "no gap, no duplicate"
        ends = [c["offset"] + c["size"] for c in manifest["chunks"]]
        assert [c["offset"] for c in manifest["chunks"]] == [0, *ends[:-1]]
        assert manifest["total_size"] == source.stat().st_size
        assert manifest["completed_at"] and manifest["first_upload_at"]


def test_twenty_random_kills_lose_nothing(make_daemon, minio):
    crash_loop(make_daemon, minio, kills=20, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4])
def test_a_hundred_random_kills_lose_nothing(make_daemon, minio, seed):
    crash_loop(make_daemon, minio, kills=100, seed=seed)
