"""`streamer doctor` (streamer/cli/doctor.py) against a real MinIO, a real checkpoint store
and real mounts: every check passes on a good setup, and each broken part gives its ✗, a
hint and exit 1; and what `run` checks too, `run` says in the same words, with the same
hint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from commands import DOCTOR_CHECKS
from conftest import wait_until
from harness import AT_LEAST_ONE, cli, get_json, scrape

from integration.daemons import FAST_RETRIES
from integration.servers import SECRET_KEY
from streamer.failures import REJECTED_HINT
from streamer.preflight import BUCKET_HINT

pytestmark = pytest.mark.integration

# Root without these meets file permissions as any user does.
NO_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def checks(result) -> dict:
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def doctor_without_override(daemon) -> dict:
    command = [sys.executable, "-m", "streamer", "doctor", "--json", "--config"]
    result = subprocess.run(
        [*NO_OVERRIDE, *command, str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon.env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    return checks(result)


def start_failed(daemon) -> str:
    """Start `run`, which must refuse to: what it says."""
    daemon.expect("start_failed", exit_codes=(3,)).start(wait=False)
    assert daemon.process.wait(30) == 3
    return daemon.find("start_failed", this_run=True)[0]["error"]


def test_every_check_passes_on_a_good_setup_before_and_after_the_first_run(make_daemon, minio):
    daemon = make_daemon()
    before = cli(daemon, "doctor")
    assert before.returncode == 0, before.stdout + before.stderr
    lines = before.stdout.splitlines()
    assert [line[2:].split("  ")[0].strip() for line in lines] == DOCTOR_CHECKS
    assert all(line.startswith("✓ ") for line in lines)
    assert "none yet, created at first start" in before.stdout
    assert "test-host: unclaimed" in before.stdout
    assert "honoured: records are written only over what this store last saw" in before.stdout

    daemon.start()
    during = cli(daemon, "doctor", "--json")
    assert during.returncode == 1, "a second `run` would not start"
    failed = {name: c for name, c in checks(during).items() if c["ok"] is not True}
    assert list(failed) == ["checkpoint store"]
    store = daemon.config_path.parent / "checkpoint"
    assert failed["checkpoint store"]["detail"] == (
        f"another streamer daemon (pid {daemon.process.pid}) runs on the checkpoint store {store}"
    )
    assert (
        checks(during)["instance name"]["detail"]
        == "test-host: claimed by this checkpoint store (generation 1)"
    )
    scratch = [o.object_name for o in minio.client.list_objects(daemon.bucket, recursive=True)]
    assert not [key for key in scratch if "/.doctor/" in key], "scratch objects are deleted"

    daemon.stop()
    after = cli(daemon, "doctor", "--json")
    assert after.returncode == 0, "the store is free again"
    assert checks(after)["checkpoint store"]["detail"] == f"{store}: opened, writable, 0 streams"


def test_doctor_and_run_say_the_same_of_a_store_a_daemon_holds(make_daemon):
    first = make_daemon().start()
    store = first.config_path.parent / "checkpoint"
    said = checks(cli(first, "doctor", "--json"))["checkpoint store"]
    second = make_daemon(home="second", checkpoint={"path": str(store)})
    assert start_failed(second) == f"{said['detail']}: {said['hint']}"
    assert "(checkpoint.path, STREAMER_CHECKPOINT_PATH)" in said["hint"]


def test_doctor_and_run_say_the_same_of_an_unreadable_directory_and_store(make_daemon):
    daemon = make_daemon(wrapper=NO_OVERRIDE)
    daemon.start()
    daemon.stop()
    daemon.watch.chmod(0)
    said = doctor_without_override(daemon)["watch directory"]
    assert said["detail"] == f"watch.directory {daemon.watch} is not readable by uid 0"
    assert start_failed(daemon) == f"{said['detail']}: {said['hint']}"

    daemon.watch.chmod(0o755)
    store = daemon.config_path.parent / "checkpoint"
    (store / "data.mdb").chmod(0o444)
    said = doctor_without_override(daemon)["checkpoint store"]
    assert said["detail"] == (
        f"checkpoint.path {store} is not a directory writable by uid 0, its files too"
    )
    assert start_failed(daemon) == f"{said['detail']}: {said['hint']}"


def test_doctor_and_run_say_the_same_of_another_instance_s_store(make_daemon):
    daemon = make_daemon()
    daemon.start()
    daemon.stop()
    renamed = make_daemon(instance="another-name")  # the same home: the same store
    said = checks(cli(renamed, "doctor", "--json"))["checkpoint store"]
    assert said["ok"] is False and "belongs to instance 'test-host'" in said["detail"]
    assert start_failed(renamed) == f"{said['detail']}: {said['hint']}"


def test_doctor_says_it_created_the_bucket(make_daemon, minio, bucket):
    made = f"{bucket}-made"
    daemon = make_daemon(s3={"bucket": made})
    first = cli(daemon, "doctor", "--json")
    assert first.returncode == 0, first.stdout
    assert checks(first)["bucket"]["detail"] == f"{made}: created"
    assert minio.client.bucket_exists(made)
    again = cli(daemon, "doctor", "--json")
    assert checks(again)["bucket"]["detail"] == f"{made}: present"


def test_run_says_it_created_the_bucket_once(make_daemon, minio, bucket):
    made = f"{bucket}-by-run"
    daemon = make_daemon(s3={"bucket": made}).start()
    for name in ("a.mp4", "b.mp4"):  # one each: both uploaders past their bucket check
        (daemon.watch / name).write_bytes(b"x" * 1024)
    for role in ("uploader.0", "uploader.1"):
        daemon.wait_for("stream_finished", role=role)
    [created] = daemon.find("bucket_created")  # by the one uploader that made it
    assert created["bucket"] == made and minio.client.bucket_exists(made)


def test_run_says_a_missing_bucket_is_missing_not_that_s3_is_unreachable(
    make_daemon, minio, bucket
):
    missing = f"{bucket}-missing"
    s3 = {"bucket": missing, "create_bucket": False, **FAST_RETRIES}
    daemon = make_daemon(s3=s3)
    said = checks(cli(daemon, "doctor", "--json"))
    assert said["S3 reachable"]["ok"] is True and said["bucket"]["ok"] is False
    daemon.expect(s3_rejected=AT_LEAST_ONE).start()
    rejected = daemon.wait_for("s3_rejected")[0]
    assert rejected["error"] == f"BucketMissing: {said['bucket']['detail']}"
    assert rejected["hint"] == said["bucket"]["hint"] == BUCKET_HINT

    def told():
        status, ready = get_json(daemon, "/readyz")
        return (status, ready["checks"]) if not ready["checks"]["bucket"]["ok"] else None

    status, ready = wait_until(told, 30, what="the bucket check in /readyz")
    assert status == 503 and ready["s3"]["ok"] is True
    assert ready["bucket"]["error"] == f"{said['bucket']['detail']}: {BUCKET_HINT}"
    assert scrape(daemon)["streamer_s3_reachable"] == 1
    assert not daemon.find("s3_state", reachable=False)

    minio.client.make_bucket(missing)  # as the hint says: it is taken up
    wait_until(lambda: get_json(daemon, "/readyz")[0] == 200, 30, what="ready")
    assert get_json(daemon, "/readyz")[1]["checks"]["bucket"] == {"ok": True, "error": ""}


def test_s3_away_after_it_said_the_bucket_is_missing_is_unreachable_again(
    make_daemon, bucket, proxy
):
    """Away, then there without the bucket, then away again: each is told, so /readyz and
    the gauge never say S3 is there while it is not."""
    s3 = {"endpoint": proxy.endpoint, "bucket": f"{bucket}-missing", "create_bucket": False}
    daemon = make_daemon(s3={**s3, **FAST_RETRIES})
    proxy.set("refuse")
    daemon.expect(s3_rejected=AT_LEAST_ONE).start()

    def reachable(expected: int):
        return lambda: scrape(daemon).get("streamer_s3_reachable") == expected

    for role in ("uploader.0", "uploader.1"):  # each found S3 away
        daemon.wait_for("s3_unreachable", role=role)
    wait_until(reachable(0), 30, what="S3 unreachable")
    proxy.set("pass")
    wait_until(reachable(1), 30, what="S3 reached, the bucket missing")
    assert get_json(daemon, "/readyz")[1]["checks"]["bucket"]["ok"] is False
    proxy.set("refuse")
    wait_until(reachable(0), 30, what="S3 unreachable again")
    assert get_json(daemon, "/readyz")[1]["checks"]["s3"]["ok"] is False


def test_wrong_credentials_a_missing_bucket_and_another_store_s_instance_each_fail(make_daemon):
    daemon = make_daemon()
    wrong = cli(daemon, "doctor", env={"STREAMER_S3_SECRET_KEY": "not-the-secret-at-all"})
    assert wrong.returncode == 1
    assert "✗ S3 credentials" in wrong.stdout and "hint: check s3.access_key" in wrong.stdout
    assert "not-the-secret-at-all" not in wrong.stdout + wrong.stderr
    assert SECRET_KEY not in wrong.stdout + wrong.stderr
    assert "- scratch object" in wrong.stdout, "what cannot be tried says so"
    assert "- bucket" in wrong.stdout, "every check has its line"

    assert f"hint: {REJECTED_HINT}" in wrong.stdout, "the hint `run` gives its s3_rejected"

    missing = cli(
        daemon,
        "doctor",
        "--json",
        env={"STREAMER_S3_BUCKET": "no-such-bucket-here", "STREAMER_S3_CREATE_BUCKET": "false"},
    )
    assert missing.returncode == 1
    bucket = checks(missing)["bucket"]
    assert bucket["ok"] is False
    assert (
        bucket["detail"]
        == "bucket 'no-such-bucket-here' does not exist and s3.create_bucket is off"
    )
    assert bucket["hint"] == BUCKET_HINT

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
        f"✗ checkpoint store         checkpoint.path {frozen / 'store'} does not exist and "
        f"cannot be created in {frozen}" in result.stdout
    )
    assert (
        f"✗ watch directory          watch.directory {frozen / 'nowhere'} is not a directory"
        in result.stdout
    )
    assert "✓ S3 credentials" in result.stdout, "the rest is still checked"


def test_admin_commands_write_nothing_into_the_daemon_s_metrics_directory(make_daemon):
    daemon = make_daemon().start()
    daemon.wait_for("uploader_started", count=2)
    assert cli(daemon, "doctor").returncode == 1  # a second daemon would not start
    assert cli(daemon, "streams", "list").returncode == 0
    daemons = {e["pid"] for e in daemon.read_events() if "pid" in e}
    written = {
        int(path.stem.rsplit("_", 1)[1])
        for path in (daemon.config_path.parent / "metrics").glob("*.db")
    }
    assert written and written <= daemons, "files of processes that are not the daemon's"
