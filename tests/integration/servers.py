"""The S3 servers the integration tests start: MinIO and versitygw as real processes on
free ports, over http or over https with a certificate from a private CA; the fault proxy
in front of MinIO; MinIO's own client (`mc`) and a user who is not root; and what a server
holds (objects, manifests). tests/conftest.py registers the fixtures."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import urllib3
from conftest import clean_env, free_port, wait_until
from minio import Minio

from integration.faultproxy import FaultProxy

# The root user of every server the tests start, and the keys test daemons sign with.
ACCESS_KEY = "streamer-test"
SECRET_KEY = "streamer-test-secret"


class S3Server:
    """A real S3 server process on a free port, stopped and started again on its data."""

    name = ""

    def __init__(
        self, binary: str, data_dir: Path, env: dict | None = None, ca_file: Path | None = None
    ):
        self.binary, self.data_dir, self.ca_file = binary, data_dir, ca_file
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.env = clean_env(env)
        self.start()
        tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": str(ca_file)} if ca_file else {}
        self.client = Minio(
            self.endpoint,
            ACCESS_KEY,
            SECRET_KEY,
            secure=bool(ca_file),
            region="us-east-1",
            http_client=urllib3.PoolManager(**tls),
        )

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.data_dir.parent / f"{self.name}.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._live, 30, what=f"{self.name} to start")

    def _live(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.process.returncode}) at start")
        scheme = "https" if self.ca_file else "http"
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        try:
            urllib.request.urlopen(f"{scheme}://{self.endpoint}/", timeout=1, context=context)
        except urllib.error.HTTPError as exc:
            # It answers; a 503 (MinIO's object layer not up yet, with a Retry-After the
            # tests' client would wait out) is not ready.
            return exc.code != 503
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class MinioServer(S3Server):
    name = "minio"

    def __init__(
        self, binary: str, data_dir: Path, env: dict | None = None, certs_dir: Path | None = None
    ):
        self.certs_dir = certs_dir
        env = {
            "MINIO_ROOT_USER": ACCESS_KEY,
            "MINIO_ROOT_PASSWORD": SECRET_KEY,
            "MINIO_BROWSER": "off",
            **(env or {}),
        }
        super().__init__(
            binary, data_dir, env, ca_file=certs_dir / "CAs" / "ca.crt" if certs_dir else None
        )

    def command(self) -> list[str]:
        certs = ["--certs-dir", str(self.certs_dir)] if self.certs_dir else []
        return [
            self.binary,
            "server",
            str(self.data_dir),
            "--address",
            self.endpoint,
            "--quiet",
            *certs,
        ]


def make_certificates(directory: Path) -> Path:
    """A private CA and a certificate for 127.0.0.1 signed by it, laid out as MinIO's
    --certs-dir wants them (public.crt, private.key, CAs/ca.crt)."""
    (directory / "CAs").mkdir(parents=True)
    ca_crt, ca_key = directory / "CAs" / "ca.crt", directory / "ca.key"
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        *key,
        "-keyout",
        ca_key,
        "-out",
        ca_crt,
        "-days",
        "2",
        "-subj",
        "/CN=streamer test CA",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    csr = directory / "server.csr"
    openssl(
        "req", *key, "-keyout", directory / "private.key", "-out", csr, "-subj", "/CN=127.0.0.1"
    )
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca_crt,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        directory / "public.crt",
        "-days",
        "2",
        "-extfile",
        extensions,
    )
    return directory


class VersityServer(S3Server):
    """versitygw serving S3 from a plain directory: a second, independent implementation."""

    name = "versitygw"

    def __init__(self, binary: str, data_dir: Path, certs_dir: Path | None = None):
        self.certs_dir = certs_dir
        super().__init__(
            binary,
            data_dir,
            {"ROOT_ACCESS_KEY": ACCESS_KEY, "ROOT_SECRET_KEY": SECRET_KEY},
            ca_file=certs_dir / "CAs" / "ca.crt" if certs_dir else None,
        )

    def command(self) -> list[str]:
        tls = []
        if self.certs_dir:
            tls = ["--cert", str(self.certs_dir / "public.crt")]
            tls += ["--key", str(self.certs_dir / "private.key")]
        return [self.binary, "--port", self.endpoint, *tls, "posix", str(self.data_dir)]


def binary(variable: str, name: str) -> str:
    path = os.environ.get(variable) or shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"no {name} binary: run `make {name}` or set {variable}")
    return path


SERVERS = {
    "minio": lambda data: MinioServer(binary("MINIO_BIN", "minio"), data),
    "versitygw": lambda data: VersityServer(binary("VERSITYGW_BIN", "versitygw"), data),
}


# The cases that matter run against both servers: `@both_servers` on a test that takes
# `server` (and so `make_daemon`, `bucket`); other tests get MinIO.
both_servers = pytest.mark.parametrize("server", sorted(SERVERS), indirect=True)


@pytest.fixture(scope="session")
def minio(tmp_path_factory):
    server = SERVERS["minio"](tmp_path_factory.mktemp("minio") / "data")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def versitygw(tmp_path_factory):
    server = SERVERS["versitygw"](tmp_path_factory.mktemp("versitygw") / "data")
    yield server
    server.stop()


KMS_KEY_ID = "streamer-test-key"


@pytest.fixture(scope="session")
def tls_minio(tmp_path_factory):
    """MinIO over https with a certificate from a private CA, and a static KMS key so it
    can encrypt at rest (SSE-S3 and SSE-KMS)."""
    base = tmp_path_factory.mktemp("tls-minio")
    key = base64.b64encode(hashlib.sha256(b"streamer test kms key").digest()).decode()
    server = MinioServer(
        binary("MINIO_BIN", "minio"),
        base / "data",
        env={"MINIO_KMS_SECRET_KEY": f"{KMS_KEY_ID}:{key}"},
        certs_dir=make_certificates(base / "certs"),
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_versitygw(tmp_path_factory):
    """versitygw over https, with a certificate from a private CA."""
    base = tmp_path_factory.mktemp("tls-versitygw")
    server = VersityServer(
        binary("VERSITYGW_BIN", "versitygw"), base / "data", make_certificates(base / "certs")
    )
    yield server
    server.stop()


@pytest.fixture
def server(request) -> S3Server:
    return request.getfixturevalue(getattr(request, "param", "minio"))


@pytest.fixture
def own_server(server, tmp_path) -> S3Server:
    """A server of the same kind for this test alone, free to be stopped and started."""
    own = SERVERS[server.name](tmp_path / f"own-{server.name}" / "data")
    yield own
    if own.process.poll() is None:
        own.stop()


@pytest.fixture
def bucket(server) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    server.client.make_bucket(name)
    return name


@pytest.fixture
def proxy(minio):
    """A misbehaving network between streamer and the MinIO (tests/integration/faultproxy.py)."""
    proxy = FaultProxy(("127.0.0.1", minio.port), free_port())
    yield proxy
    proxy.close()


@pytest.fixture
def tls_proxy(minio, tmp_path):
    """The fault proxy speaking https to streamer (its own private CA, `ca_file`) and
    plain http to the MinIO: requests are seen, and refused, over https too."""
    certs = make_certificates(tmp_path / "proxy-certs")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "public.crt", certs / "private.key")
    proxy = FaultProxy(("127.0.0.1", minio.port), free_port(), tls=context)
    proxy.ca_file = certs / "CAs" / "ca.crt"
    yield proxy
    proxy.close()


class Mc:
    """MinIO's own client, `mc`, on a server: its admin API and its trace."""

    def __init__(self, server: S3Server, directory: Path):
        self.command = [binary("MC_BIN", "mc"), "--config-dir", str(directory / "mc")]
        self.env = clean_env()
        self("alias", "set", "t", f"http://{server.endpoint}", ACCESS_KEY, SECRET_KEY)

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [*self.command, *args], capture_output=True, text=True, env=self.env, timeout=60
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def popen(self, *args: str, stdout) -> subprocess.Popen:
        return subprocess.Popen(
            [*self.command, *args], stdout=stdout, stderr=subprocess.STDOUT, env=self.env
        )


class MinioUser:
    """A MinIO user that is not root (root passes every policy), whose rights on one
    bucket a test narrows and widens while streamer uses it."""

    def __init__(self, server: S3Server, bucket: str, directory: Path):
        self.mc = Mc(server, directory)
        self.bucket = bucket
        self.access_key = f"user-{uuid.uuid4().hex[:8]}"
        self.secret_key = uuid.uuid4().hex
        self.policy_file = directory / "policy.json"
        self.mc("admin", "user", "add", "t", self.access_key, self.secret_key)
        self.refuse_puts()
        self.mc("admin", "policy", "attach", "t", self.access_key, "--user", self.access_key)

    def refuse_puts(self, *patterns: str, action: str = "s3:PutObject") -> None:
        """Everything on the bucket, but `action` on keys matching `patterns` (none: no
        refusal)."""
        bucket = f"arn:aws:s3:::{self.bucket}"
        statements = [{"Effect": "Allow", "Action": ["s3:*"], "Resource": [bucket, f"{bucket}/*"]}]
        if patterns:
            denied = [f"{bucket}/{pattern}" for pattern in patterns]
            statements.append({"Effect": "Deny", "Action": [action], "Resource": denied})
        self.policy_file.write_text(json.dumps({"Version": "2012-10-17", "Statement": statements}))
        self.mc("admin", "policy", "create", "t", self.access_key, str(self.policy_file))


def over_tls(server, **s3) -> dict:
    """The `s3` settings to reach `server` (or a TLS proxy) over https with its CA."""
    return {"secure": True, "ca_file": str(server.ca_file), **s3}


def chunk_store(server, bucket: str, **s3):
    """The test's own S3 side of streamer, on `server`, with the tests' key layout."""
    from streamer.chunkstore import ChunkStore
    from streamer.config import S3Config

    config = S3Config(
        endpoint=server.endpoint,
        bucket=bucket,
        prefix="rec",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        **s3,
    )
    return ChunkStore(config, "test-host")


def object_bytes(client: Minio, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def objects(server: S3Server, bucket: str, stream_id: str, prefix: str = "rec/test-host") -> dict:
    """The stream's objects as S3 last wrote them: key -> (ETag, last modified). Compared
    before and after, it shows from S3's side whether anything was written again."""
    return {
        o.object_name: (o.etag, o.last_modified)
        for o in server.client.list_objects(bucket, prefix=f"{prefix}/{stream_id}/", recursive=True)
    }


def manifest_of(client: Minio, bucket: str, stream_id: str, prefix: str = "rec/test-host") -> dict:
    return json.loads(object_bytes(client, bucket, f"{prefix}/{stream_id}/metadata.json"))


def reassemble(client: Minio, bucket: str, manifest: dict) -> bytes:
    return b"".join(object_bytes(client, bucket, c["key"]) for c in manifest["chunks"])
