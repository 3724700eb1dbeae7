"""How streamer reaches S3: its own HTTP pool (timeouts, TLS, and no retries behind the
uploader's back), credentials (given, or the AWS chain), server-side encryption, and a
minio client that signs a body by the digest it is given instead of hashing it again.
Build a client in the process that uses it."""

from __future__ import annotations

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
    x-amz-content-sha256 (its sha256, or UNSIGNED-PAYLOAD with a CRC in its checksum
    header), it is signed as it is and the body may be sent in pieces. S3 checks the
    bytes it receives against it."""

    def _build_headers(self, host, headers=None, body=None, creds=None):
        if not headers or "x-amz-content-sha256" not in headers:
            return super()._build_headers(host, headers, body, creds)
        headers["Host"] = host
        headers["User-Agent"] = self._user_agent
        if creds and creds.session_token:
            headers["X-Amz-Security-Token"] = creds.session_token
        date = amz_time.utcnow()
        headers["x-amz-date"] = amz_time.to_amz_date(date)
        return headers, date


def client(config: S3Config, connections: int) -> Client:
    http = http_pool(config, connections)
    return Client(
        config.endpoint,
        secure=config.secure,
        region=config.region,
        http_client=http,
        credentials=credentials(config, http),
    )
