"""TLS with a private CA, encryption at rest, credentials from every source, and secrets
that appear nowhere streamer writes: against MinIO over https with a static KMS key."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request

import pytest
from conftest import free_port, wait_until
from harness import at_least, cli, port_of
from recordings import GrowingFile

from integration.daemons import FAST_RETRIES, assert_exact
from integration.servers import ACCESS_KEY, KMS_KEY_ID, SECRET_KEY, object_bytes, over_tls

pytestmark = pytest.mark.integration

KiB, MiB = 1024, 1024 * 1024
on_tls_minio = pytest.mark.parametrize("server", ["tls_minio"], indirect=True)
NO_KEYS = {"access_key": "", "secret_key": ""}


def get(daemon, path: str) -> bytes:
    port = port_of(daemon)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        return err.read()


@on_tls_minio
@pytest.mark.parametrize(
    "sse, header",
    [("none", None), ("s3", "AES256"), (f"kms:{KMS_KEY_ID}", "aws:kms")],
    ids=["plain", "sse-s3", "sse-kms"],
)
def test_uploads_over_tls_with_a_private_ca_encrypted_at_rest(make_daemon, server, sse, header):
    # 5 MiB chunks, so the assembled object is made by server-side copy, encrypted too.
    daemon = make_daemon(
        s3=over_tls(server, sse=sse), stream={"chunk_size": 5 * MiB, "idle_timeout": 2}
    ).start()
    writer = GrowingFile(daemon.watch / "secret.mp4", total=11 * MiB, rate=20 * MiB).start()
    writer.wait()
    event = daemon.wait_for("stream_finished", timeout=60)[0]
    manifest = assert_exact(server, daemon, event["stream_id"], writer.path)
    assert manifest["assembled"]["method"] == "compose"
    whole = object_bytes(server.client, daemon.bucket, manifest["assembled"]["key"])
    assert hashlib.sha256(whole).hexdigest() == manifest["sha256"]

    keys = [c["key"] for c in manifest["chunks"]]
    keys += [manifest["assembled"]["key"], f"rec/test-host/{event['stream_id']}/metadata.json"]
    for key in keys:
        headers = {
            k.lower(): v for k, v in server.client.stat_object(daemon.bucket, key).metadata.items()
        }
        assert headers.get("x-amz-server-side-encryption") == header, key
        if header == "aws:kms":
            assert KMS_KEY_ID in headers["x-amz-server-side-encryption-aws-kms-key-id"], key


@on_tls_minio
def test_an_untrusted_certificate_is_retried_with_backoff_and_says_why(make_daemon, server):
    daemon = make_daemon(s3={"secure": True, **FAST_RETRIES}).start()
    (daemon.watch / "waiting.mp4").write_bytes(b"w" * 100 * KiB)
    first = daemon.wait_for("s3_unreachable")[0]
    # Each uploader retries on its own jittered schedule: follow one of them.
    failures = daemon.wait_for("s3_unreachable", count=3, timeout=30, pid=first["pid"])
    assert all("certificate verify failed" in f["error"] for f in failures)
    assert "s3.ca_file" in failures[0]["hint"]
    assert [f["attempt"] for f in failures][:3] == [1, 2, 3]
    assert all(0 <= f["delay"] <= FAST_RETRIES["retry_cap"] for f in failures)
    assert b"certificate verify failed" in get(daemon, "/readyz")
    assert not daemon.find("chunk_uploaded")
    assert daemon.stop() == 0, "nothing hangs"


@on_tls_minio
def test_skipping_verification_works_and_warns_loudly(make_daemon, server):
    daemon = make_daemon(s3={"secure": True, "tls_skip_verify": True}).start()
    warning = daemon.find("tls_verification_off")
    assert warning and warning[0]["level"] == "warning" and "development" in warning[0]["message"]
    (daemon.watch / "dev.mp4").write_bytes(b"d" * 100 * KiB)
    event = daemon.wait_for("stream_finished")[0]
    assert_exact(server, daemon, event["stream_id"], daemon.watch / "dev.mp4")


def test_credentials_from_files_docker_secrets_style(make_daemon, server, tmp_path):
    (tmp_path / "access").write_text(ACCESS_KEY + "\n")
    (tmp_path / "secret").write_text(SECRET_KEY + "\n")
    env = {
        "STREAMER_S3_ACCESS_KEY_FILE": str(tmp_path / "access"),
        "STREAMER_S3_SECRET_KEY_FILE": str(tmp_path / "secret"),
    }
    daemon = make_daemon(s3=NO_KEYS, env=env).start()
    source = (
        "static: access_key from the file in STREAMER_S3_ACCESS_KEY_FILE, "
        "secret_key from the file in STREAMER_S3_SECRET_KEY_FILE"
    )
    assert daemon.find("starting")[0]["credentials"] == source
    shown = cli(daemon, "config", "show")
    assert f"credentials: {source}" in shown.stderr and SECRET_KEY not in shown.stdout
    (daemon.watch / "filed.mp4").write_bytes(b"f" * 100 * KiB)
    event = daemon.wait_for("stream_finished")[0]
    assert_exact(server, daemon, event["stream_id"], daemon.watch / "filed.mp4")


@pytest.mark.parametrize("where", ["environment", "shared credentials file"])
def test_credentials_from_the_aws_chain(make_daemon, server, tmp_path, where):
    env = {"HOME": str(tmp_path), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    if where == "environment":
        env |= {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    else:
        shared = tmp_path / "credentials"
        shared.write_text(
            f"[recorder]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        )
        env |= {"AWS_SHARED_CREDENTIALS_FILE": str(shared), "AWS_PROFILE": "recorder"}
    daemon = make_daemon(s3=NO_KEYS, env=env).start()
    assert daemon.find("starting")[0]["credentials"].startswith("AWS chain")
    (daemon.watch / "chained.mp4").write_bytes(b"c" * 100 * KiB)
    event = daemon.wait_for("stream_finished")[0]
    assert_exact(server, daemon, event["stream_id"], daemon.watch / "chained.mp4")


def test_no_credentials_anywhere_is_a_clear_slow_error(make_daemon, tmp_path):
    env = {
        "HOME": str(tmp_path),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        # The role lookup goes to a local port nobody listens on, not to the cloud's.
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{free_port()}/role",
    }
    daemon = make_daemon(s3={**NO_KEYS, **FAST_RETRIES}, env=env).start()
    daemon.expect(s3_rejected=at_least(2))
    rejected = daemon.wait_for("s3_rejected", count=2, timeout=30)
    assert "no S3 credentials" in rejected[0]["error"]
    assert all(r["delay"] == FAST_RETRIES["retry_cap"] for r in rejected)
    assert daemon.process.poll() is None


def test_no_secret_appears_in_anything_streamer_writes(make_daemon, server, tmp_path):
    wrong_secret, token = "Wr0ng-Secret-Never-Shown-8d1f", "Sess10n-Token-Never-Shown-77ac"
    (tmp_path / "secret").write_text(SECRET_KEY)
    good = make_daemon(
        s3={"secret_key": ""}, env={"STREAMER_S3_SECRET_KEY_FILE": str(tmp_path / "secret")}
    ).start()
    (good.watch / "kept.mp4").write_bytes(b"k" * 200 * KiB)
    stream_id = good.wait_for("stream_finished")[0]["stream_id"]
    produced = [get(good, path) for path in ("/metrics", "/healthz", "/readyz")]
    produced.append(
        object_bytes(server.client, good.bucket, f"rec/test-host/{stream_id}/metadata.json")
    )
    commands = [
        ("status",), ("status", "--json"), ("streams", "list"), ("streams", "list", "--json"),
        ("streams", "show", stream_id), ("streams", "show", stream_id, "--json"),
        ("verify", stream_id), ("verify", "--all"), ("config", "show"), ("config", "check"),
        ("checkpoint", "backup", str(tmp_path / "backup")),
    ]  # fmt: skip
    for args in commands:
        result = cli(good, *args)
        assert result.returncode == 0, (args, result.stderr)
        produced.append((result.stdout + result.stderr).encode())
    assert good.stop() == 0
    produced += [good.log_path.read_bytes(), good.output().encode()]
    checkpoint = good.config_path.parent / "checkpoint"
    produced += [p.read_bytes() for p in (*checkpoint.iterdir(), *(tmp_path / "backup").iterdir())]

    # A failed login, logged as text this time, with a session token set too.
    bad = make_daemon(
        home="bad",
        s3={"secret_key": wrong_secret, "session_token": token, **FAST_RETRIES},
        log={"format": "text"},
    )
    bad.expect(s3_rejected=at_least(2)).start(wait=False)
    (bad.watch / "denied.mp4").write_bytes(b"z" * 100 * KiB)
    wait_until(lambda: bad.log_path.read_bytes().count(b"s3_rejected") >= 2, 30, what="rejections")
    (tmp_path / "wrong").write_text(wrong_secret)
    wrong = {"STREAMER_S3_SECRET_KEY_FILE": str(tmp_path / "wrong")}
    failed = [cli(good, "verify", stream_id, env=wrong), cli(bad, "config", "show")]
    assert failed[0].returncode == 3 and "from S3: S3Error" in failed[0].stdout
    produced += [(r.stdout + r.stderr).encode() for r in failed]
    assert bad.stop() == 0
    produced += [bad.log_path.read_bytes(), bad.output().encode()]

    for secret in (SECRET_KEY, wrong_secret, token):
        leaks = [blob[:200] for blob in produced if secret.encode() in blob]
        assert not leaks, secret
