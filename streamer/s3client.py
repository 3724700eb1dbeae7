"""How streamer reaches S3: its own HTTP pool (timeouts, TLS, and no retries behind the
uploader's back), credentials (given, or the AWS chain), server-side encryption, and a
minio client that signs a body by the digest it is given instead of hashing it again.
Build a client in the process that uses it."""

from __future__ import annotations

import hashlib
import hmac
import threading

import urllib3
from minio import Minio
from minio import time as amz_time
from minio.credentials import (
    AWSConfigProvider,
    ChainedProvider,
    EnvAWSProvider,
    IamAwsProvider,
    Provider,
    StaticProvider,
)
from minio.sse import Sse, SseKMS, SseS3

from streamer.config import S3Config


def http_pool(config: S3Config, connections: int) -> urllib3.PoolManager:
    # Our own pool: minio-py's default waits 5 minutes and retries behind our back;
    # the uploader owns retries so it can log, count and cancel them.
    tls = {}
    if config.tls_skip_verify:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        tls = {"cert_reqs": "CERT_NONE"}
    elif config.ca_file:
        tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": config.ca_file}
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
        retries=False,
        maxsize=connections,
        **tls,
    )


def credentials(config: S3Config, http: urllib3.PoolManager) -> Provider:
    if config.access_key:
        return StaticProvider(config.access_key, config.secret_key, config.session_token or None)
    return AwsChain([EnvAWSProvider(), AWSConfigProvider(), IamAwsProvider(http_client=http)])


class NoCredentials(Exception):
    """Neither the configuration nor the AWS chain gave S3 credentials."""


class AwsChain(ChainedProvider):
    def retrieve(self):
        try:
            return super().retrieve()
        # The role lookup's own connection errors would read as "S3 unreachable".
        except (ValueError, urllib3.exceptions.HTTPError) as exc:
            raise NoCredentials(
                "no S3 credentials: s3.access_key/s3.secret_key are empty, and the AWS chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the shared credentials file, an "
                f"instance or container role) gave none ({type(exc).__name__}: {exc})"
            ) from None


def server_side_encryption(setting: str) -> Sse | None:
    if setting == "s3":
        return SseS3()
    if setting.startswith("kms:"):
        return SseKMS(setting.removeprefix("kms:"), None)
    return None


class Client(Minio):
    """minio-py signs a body by hashing it again (sha256 over http, MD5 over https), and
    needs it whole in memory to do so. A body's digest is known already: given as
    x-amz-content-sha256 (its sha256, UNSIGNED-PAYLOAD with a CRC in its checksum header,
    or a STREAMING- value whose body is signed or checked as it is sent), it is signed as
    it is and the body may be sent in pieces. S3 checks the bytes it receives against
    it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The credentials the request this thread is sending was signed with: a signed
        # aws-chunked body signs its pieces with them as it is sent, in the same thread.
        self._signing = threading.local()

    def _build_headers(self, host, headers=None, body=None, creds=None):
        if not headers or "x-amz-content-sha256" not in headers:
            return super()._build_headers(host, headers, body, creds)
        self._signing.credentials = creds
        headers["Host"] = host
        headers["User-Agent"] = self._user_agent
        if creds and creds.session_token:
            headers["X-Amz-Security-Token"] = creds.session_token
        date = amz_time.utcnow()
        headers["x-amz-date"] = amz_time.to_amz_date(date)
        return headers, date

    def piece_signer(self, headers: dict) -> PieceSigner:
        """The signer of a body's pieces, from its request's signed `headers`: call it
        only once the body is being sent, in the thread sending it."""
        return PieceSigner(self._signing.credentials.secret_key, headers)


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class PieceSigner:
    """The signatures of an aws-chunked body sent as STREAMING-AWS4-HMAC-SHA256-PAYLOAD-
    TRAILER: each piece's sha256 signed, chained to the signature before it from the
    request's own, and the trailer signed last. A piece can be neither changed nor
    dropped, nor the trailer's checksum forged, without the secret key."""

    def __init__(self, secret_key: str, headers: dict):
        authorization = headers["Authorization"]
        scope = authorization.split("Credential=", 1)[1].split(",", 1)[0].split("/", 1)[1]
        self._prefix = f"{headers['x-amz-date']}\n{scope}\n"
        self._previous = authorization.rsplit("Signature=", 1)[1].strip()
        key = f"AWS4{secret_key}".encode()
        for part in scope.split("/"):
            key = hmac.digest(key, part.encode(), "sha256")
        self._key = key

    def piece(self, data) -> str:
        """The signature of the next piece, `data` (the last is empty)."""
        payload = hashlib.sha256(data).hexdigest()
        return self._sign(
            f"AWS4-HMAC-SHA256-PAYLOAD\n{self._prefix}{self._previous}\n{EMPTY_SHA256}\n{payload}"
        )

    def trailer(self, lines: bytes) -> str:
        """The signature of the trailer, its `lines` each ending in a newline."""
        payload = hashlib.sha256(lines).hexdigest()
        return self._sign(f"AWS4-HMAC-SHA256-TRAILER\n{self._prefix}{self._previous}\n{payload}")

    def _sign(self, text: str) -> str:
        self._previous = hmac.new(self._key, text.encode(), "sha256").hexdigest()
        return self._previous


def client(config: S3Config, connections: int) -> Client:
    http = http_pool(config, connections)
    return Client(
        config.endpoint,
        secure=config.secure,
        region=config.region,
        http_client=http,
        credentials=credentials(config, http),
    )
