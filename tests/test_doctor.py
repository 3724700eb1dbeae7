"""`streamer doctor` against a real MinIO, a real checkpoint store and real mounts: every
check passes on a good setup, and each broken part gives its ✗, a hint and exit 1."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import SECRET_KEY, cli

pytestmark = pytest.mark.integration


def checks(result) -> dict:
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_every_check_passes_on_a_good_setup_before_and_after_the_first_run(make_daemon, minio):
    daemon = make_daemon()
    before = cli(daemon, "doctor")
    assert before.returncode == 0, before.stdout + before.stderr
    lines = before.stdout.splitlines()
    names = [
        "watch directory",
        "retention sees writers",
        "checkpoint store",
        "S3 reachable",
        "S3 credentials",
        "bucket",
        "scratch object",
        "conditional writes",
        "multipart copy",
        "instance name",
    ]
    assert [line[2:].split("  ")[0].strip() for line in lines] == names
    assert all(line.startswith("✓ ") for line in lines)
    assert "none yet, created at first start" in before.stdout
    assert "test-host: unclaimed" in before.stdout
    assert "honoured: records are written only over what this store last saw" in before.stdout

    daemon.start()
    during = cli(daemon, "doctor", "--json")
    assert during.returncode == 0 and json.loads(during.stdout)["ok"] is True
    assert (
        checks(during)["instance name"]["detail"]
        == "test-host: claimed by this checkpoint store (generation 1)"
    )
    assert "opened, writable, 0 streams" in checks(during)["checkpoint store"]["detail"]
    scratch = [o.object_name for o in minio.client.list_objects(daemon.bucket, recursive=True)]
    assert not [key for key in scratch if "/.doctor/" in key], "scratch objects are deleted"


def test_wrong_credentials_a_missing_bucket_and_another_store_s_instance_each_fail(make_daemon):
    daemon = make_daemon()
    wrong = cli(daemon, "doctor", env={"STREAMER_S3_SECRET_KEY": "not-the-secret-at-all"})
    assert wrong.returncode == 1
    assert "✗ S3 credentials" in wrong.stdout and "hint: check s3.access_key" in wrong.stdout
    assert "not-the-secret-at-all" not in wrong.stdout + wrong.stderr
    assert SECRET_KEY not in wrong.stdout + wrong.stderr
    assert "- scratch object" in wrong.stdout, "what cannot be tried says so"

    missing = cli(
        daemon,
        "doctor",
        "--json",
        env={"STREAMER_S3_BUCKET": "no-such-bucket-here", "STREAMER_S3_CREATE_BUCKET": "false"},
    )
    assert missing.returncode == 1
    bucket = checks(missing)["bucket"]
    assert (
        bucket["ok"] is False and "does not exist and s3.create_bucket is off" in bucket["detail"]
    )
    assert bucket["hint"] == "create the bucket, or set s3.create_bucket=true"

    daemon.start()
    daemon.stop()
    other = make_daemon(home="other")  # another store, the same instance name
    taken = cli(other, "doctor", "--json")
    assert taken.returncode == 1
    claim = checks(taken)["instance name"]
    assert claim["ok"] is False and "claimed by another checkpoint store" in claim["detail"]


def test_an_unwritable_checkpoint_path_and_a_missing_directory_fail(make_daemon, tmpfs):
    frozen = tmpfs("frozen", "1m")
    subprocess.run(["mount", "-o", "remount,ro", str(frozen)], check=True)
    daemon = make_daemon(checkpoint={"path": str(frozen / "store")}, instance="frozen-host")
    result = cli(daemon, "doctor", env={"STREAMER_WATCH_DIRECTORY": str(frozen / "nowhere")})
    assert result.returncode == 1
    assert (
        f"✗ checkpoint store         {frozen / 'store'} does not exist and {frozen} is not writable"
        in result.stdout
    )
    assert f"✗ watch directory          {frozen / 'nowhere'} is not a directory" in result.stdout
    assert "✓ S3 credentials" in result.stdout, "the rest is still checked"


def test_admin_commands_write_nothing_into_the_daemon_s_metrics_directory(make_daemon):
    daemon = make_daemon().start()
    daemon.wait_for("uploader_started", count=2)
    assert cli(daemon, "doctor").returncode == 0
    assert cli(daemon, "streams", "list").returncode == 0
    daemons = {e["pid"] for e in daemon.read_events() if "pid" in e}
    written = {
        int(path.stem.rsplit("_", 1)[1])
        for path in (daemon.config_path.parent / "metrics").glob("*.db")
    }
    assert written and written <= daemons, "files of processes that are not the daemon's"
