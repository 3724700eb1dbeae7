import json
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import urllib3
from conftest import clean_env
from minio.helpers import check_bucket_name

from streamer import config, s3client
from streamer.layout import Layout

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, data) -> str:
    path = tmp_path / "config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_defaults_need_no_file():
    cfg = config.load(None, environ={})
    assert cfg.stream.chunk_size == 10 * 1024 * 1024
    assert cfg.stream.idle_timeout == 30
    assert cfg.watch.pattern == "*.mp4"
    assert cfg.log.format == "json"


def test_environment_wins_over_the_file(tmp_path):
    path = write(
        tmp_path,
        {"stream": {"idle_timeout": 5}, "s3": {"access_key": "k", "secret_key": "from-file"}},
    )
    env = {
        "STREAMER_STREAM_IDLE_TIMEOUT": "7.5",
        "STREAMER_S3_SECRET_KEY": "from-env",
        "STREAMER_WORKERS": "4",
        "STREAMER_S3_SECURE": "true",
        "STREAMER_CONFIG": path,
    }
    cfg = config.load(path, environ=env)
    assert cfg.stream.idle_timeout == 7.5
    assert cfg.s3.secret_key == "from-env"
    assert cfg.workers.count == 4 and cfg.s3.secure is True


@pytest.mark.parametrize(
    ("data", "env", "expected"),
    [
        ({"stream": {"chunk_size": 100}}, {}, "stream.chunk_size: Expected `int` >= 65536"),
        ({"stream": {"idle_timeout": "soon"}}, {}, "stream.idle_timeout"),
        ({"watch": {"directroy": "/x"}}, {}, "watch: Object contains unknown field `directroy`"),
        (
            {},
            {"STREAMER_STREAM_IDLE_TIMEOUT": "-1"},
            "stream.idle_timeout (from STREAMER_STREAM_IDLE_TIMEOUT): Expected `float` > 0",
        ),
        ({}, {"STREAMER_WORKERS": "many"}, "workers.count (from STREAMER_WORKERS)"),
        (
            {},
            {"STREAMER_S3_SECRETKEY": "x"},
            "STREAMER_S3_SECRETKEY: unknown setting; did you mean STREAMER_S3_SECRET_KEY?",
        ),
        ({}, {"STREAMER_PORT": "9108"}, "STREAMER_PORT: unknown setting"),
        ({}, {"STREAMER_METRICS_PORT": "http://x:1"}, "metrics.port (from STREAMER_METRICS_PORT)"),
        ({"log": {"format": "xml"}}, {}, "log.format"),
        ({"instance": "host\n"}, {}, "instance: Expected `str` matching regex"),
        ({"s3": {"endpoint": "http://minio:9000"}}, {}, "s3.endpoint: give host[:port]"),
        ({"s3": {"endpoint": "minio:99999"}}, {}, "s3.endpoint: 'minio:99999' is not host[:port]"),
        ({"s3": {"endpoint": "minio/path"}}, {}, "is not host[:port]"),
        ({"s3": {"access_key": "only"}}, {}, "s3.access_key, s3.secret_key: give both"),
        ({"s3": {"sse": "kms:"}}, {}, "s3.sse"),
        ({"s3": {"sse": "aes"}}, {}, "s3.sse"),
        ({"s3": {"sse": "kms:key-1"}}, {}, "s3.sse: SSE-KMS needs s3.secure=true"),
        ({"s3": {"ca_file": "/etc/hostname"}}, {}, "s3.ca_file: set s3.secure=true too"),
        ({"s3": {"ca_file": "/nonexistent.pem", "secure": True}}, {}, "cannot read /nonexistent"),
        (
            {},
            {"STREAMER_S3_SECRET_KEY_FILE": "/nonexistent", "STREAMER_S3_ACCESS_KEY": "k"},
            "STREAMER_S3_SECRET_KEY_FILE: cannot read /nonexistent: No such file",
        ),
        (
            {},
            {"STREAMER_S3_SECRET_KEY_FILE": "/etc/hostname", "STREAMER_S3_SECRET_KEY": "x"},
            "STREAMER_S3_SECRET_KEY_FILE: set either it or STREAMER_S3_SECRET_KEY",
        ),
        ({}, {"STREAMER_S3_REGION_FILE": "/etc/hostname"}, "STREAMER_S3_REGION_FILE: unknown"),
        ({"s3": {"max_bytes_per_second": 100}}, {}, "s3.max_bytes_per_second: 100 is below"),
        ({"s3": {"max_bytes_per_second": -1}}, {}, "s3.max_bytes_per_second"),
        ({"retention": {"delete_partial": True}}, {}, "retention.delete_partial: has no effect"),
        ({"retention": {"min_free_percent": 100}}, {}, "retention.min_free_percent"),
        ("{not json", {}, "is not valid JSON"),
        ([1, 2], {}, "must hold a JSON object"),
    ],
)
def test_invalid_settings_name_the_field(tmp_path, data, env, expected):
    with pytest.raises(config.ConfigError) as raised:
        config.load(write(tmp_path, data), environ=env)
    assert expected in str(raised.value)


def test_kubernetes_service_links_are_not_settings(tmp_path):
    """What a pod gets for the Services `streamer` and `streamer-metrics` in its namespace:
    none of it stops the start, and a real setting beside them still counts."""
    links = {
        "STREAMER_SERVICE_HOST": "10.96.0.7",
        "STREAMER_SERVICE_PORT": "9108",
        "STREAMER_SERVICE_PORT_METRICS": "9108",
        "STREAMER_PORT": "tcp://10.96.0.7:9108",
        "STREAMER_PORT_9108_TCP": "tcp://10.96.0.7:9108",
        "STREAMER_PORT_9108_TCP_PROTO": "tcp",
        "STREAMER_PORT_9108_TCP_PORT": "9108",
        "STREAMER_PORT_9108_TCP_ADDR": "10.96.0.7",
        "STREAMER_METRICS_SERVICE_HOST": "10.96.0.8",
        "STREAMER_METRICS_SERVICE_PORT": "9108",
        "STREAMER_METRICS_PORT": "tcp://10.96.0.8:9108",
        "STREAMER_METRICS_PORT_9108_TCP_ADDR": "10.96.0.8",
    }
    cfg = config.load(write(tmp_path, {}), environ={**links, "STREAMER_WORKERS": "3"})
    assert cfg.metrics.port == config.Config().metrics.port and cfg.workers.count == 3


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read config file"):
        config.load(str(tmp_path / "nope.json"), environ={})


def test_example_config_shows_every_setting_with_its_default():
    example = json.loads((ROOT / "config.example.json").read_text())
    assert example == msgspec.to_builtins(config.Config())


def test_redacted_hides_the_secrets():
    env = {
        "STREAMER_S3_ACCESS_KEY": "key",
        "STREAMER_S3_SECRET_KEY": "hunter2",
        "STREAMER_S3_SESSION_TOKEN": "token-hunter3",
    }
    shown = json.dumps(config.redacted(config.load(None, environ=env)))
    assert "hunter2" not in shown and "hunter3" not in shown


def test_secrets_from_files_lose_the_trailing_newline(tmp_path):
    (tmp_path / "secret").write_text("s3cr3t\n")
    env = {"STREAMER_S3_ACCESS_KEY": "key", "STREAMER_S3_SECRET_KEY_FILE": str(tmp_path / "secret")}
    assert config.load(None, environ=env).s3.secret_key == "s3cr3t"


@pytest.mark.parametrize(
    ("data", "env", "expected"),
    [
        (
            {},
            {},
            "AWS chain (AWS_* variables, shared credentials file, instance or container role)",
        ),
        (
            {"s3": {"access_key": "k", "secret_key": "s"}},
            {"STREAMER_S3_SECRET_KEY": "t"},
            "static: access_key from the config file, secret_key from STREAMER_S3_SECRET_KEY",
        ),
    ],
)
def test_the_credential_source_is_named_never_shown(tmp_path, data, env, expected):
    cfg = config.load(write(tmp_path, data), environ=env)
    assert config.credential_source(cfg, env) == expected


def test_every_setting_has_an_environment_variable_in_the_configuration_docs():
    docs = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        config.env_name(s, k) for s, k in config.settings() if config.env_name(s, k) not in docs
    ]
    assert not missing


def test_run_with_an_invalid_config_exits_2_naming_the_field(tmp_path):
    path = write(tmp_path, {"stream": {"chunk_size": 1}})
    result = subprocess.run(
        [sys.executable, "-m", "streamer", "run", "--config", path],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "stream.chunk_size" in result.stderr
    assert result.stderr.count("\n") == 1, "one clear message"


# Values the daemon cannot run with: minio-py or urllib3 refuses them in every uploader,
# or S3 refuses every request, or they would quietly do nothing.
CANNOT_RUN = [
    ({"s3": {"endpoint": "minio:9000#part"}}, {}, "s3.endpoint"),
    ({"s3": {"endpoint": "user@minio:9000"}}, {}, "s3.endpoint"),
    ({"s3": {"endpoint": "[::1"}}, {}, "s3.endpoint"),
    ({"s3": {"endpoint": "[zz]:9000"}}, {}, "s3.endpoint"),
    ({"s3": {"endpoint": "min io:9000"}}, {}, "s3.endpoint"),
    ({"s3": {"endpoint": "minio:"}}, {}, "s3.endpoint"),
    ({"s3": {"endpoint": "minio:0"}}, {}, "s3.endpoint"),
    ({"s3": {"endpoint": "recordings.s3.amazonaws.com"}}, {}, "s3.endpoint"),
    ({"s3": {"endpoint": "s3-accesspoint.us-east-1.amazonaws.com"}}, {}, "s3.endpoint"),
    ({"s3": {"endpoint": "s3-accelerate.amazonaws.com", "bucket": "rec.ordings"}}, {}, "s3.bucket"),
    ({"s3": {"region": "us east-1"}}, {}, "s3.region"),
    ({"s3": {"bucket": "My_Bucket"}}, {}, "s3.bucket"),
    ({"s3": {"bucket": "192.168.5.4"}}, {}, "s3.bucket"),
    ({"s3": {"bucket": "xn--recordings"}}, {}, "s3.bucket"),
    ({"instance": "."}, {}, "instance"),
    ({"instance": ".."}, {}, "instance"),
    ({"s3": {"prefix": "streams/../other"}}, {}, "s3.prefix"),
    ({"s3": {"prefix": "streams/./here"}}, {}, "s3.prefix"),
    ({"s3": {"prefix": "streams/ .. /x"}}, {}, "s3.prefix"),
    ({"s3": {"prefix": "streams//here"}}, {}, "s3.prefix"),
    ({"s3": {"prefix": "streams\u0000here"}}, {}, "s3.prefix"),
    ({"s3": {"prefix": "p" * 513}}, {}, "s3.prefix"),
    ({}, {"STREAMER_S3_PREFIX": "str\udcffeams"}, "s3.prefix"),  # bytes that are not UTF-8
    ({"stream": {"keep_chunks": False, "assemble": False}}, {}, "stream.keep_chunks"),
    ({"s3": {"secure": True, "ca_file": "/etc/hostname"}}, {}, "s3.ca_file"),
    ({"s3": {"secure": True, "ca_file": "/etc/ca\u0000.pem"}}, {}, "s3.ca_file"),
    ({"s3": {"access_key": "key\nmore"}}, {}, "s3.access_key"),
    ({"s3": {"session_token": "token\r\n"}}, {}, "s3.session_token"),
    ({"watch": {"directory": "/in\u0000put"}}, {}, "watch.directory"),
    ({"checkpoint": {"path": "/var/lib/str\u0000eamer"}}, {}, "checkpoint.path"),
]


@pytest.fixture
def s3_listener():
    """Where S3 would be: a socket that accepts nothing, so a connection stays pending."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


@pytest.mark.parametrize(
    ("data", "env", "setting"), CANNOT_RUN, ids=[json.dumps(d or e)[:60] for d, e, _ in CANNOT_RUN]
)
@pytest.mark.parametrize("command", [("config", "check"), ("run",)], ids=["check", "run"])
def test_what_the_daemon_cannot_run_is_refused_by_check_and_run(
    tmp_path, s3_listener, command, data, env, setting
):
    base = {
        "watch": {"directory": str(tmp_path)},
        "checkpoint": {"path": str(tmp_path / "checkpoint")},
        "metrics": {"enabled": False},
        "s3": {
            "endpoint": f"127.0.0.1:{s3_listener.getsockname()[1]}",
            "access_key": "key",
            "secret_key": "secret",
        },
    }
    for section, value in data.items():
        base[section] = {**base.get(section, {}), **value} if isinstance(value, dict) else value
    result = subprocess.run(
        [sys.executable, "-m", "streamer", *command, "--config", write(tmp_path, base)],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(env),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"streamer: invalid configuration: {setting}: ")
    assert result.stderr.count("\n") == 1, "one line"
    assert not (tmp_path / "checkpoint").exists(), "no checkpoint store was made"
    with pytest.raises(BlockingIOError):
        s3_listener.accept()  # nothing asked S3


# Unusual values that work: each goes through minio-py and urllib3 as a request to S3.
RUNNABLE = [
    {"endpoint": "minio"},
    {"endpoint": "my_minio.local.:65535"},
    {"endpoint": "10.0.0.7:9000"},
    {"endpoint": "[::1]:9000"},
    {"endpoint": "[::ffff:10.0.0.7]"},
    {"endpoint": "s3.eu-west-1.amazonaws.com", "region": "eu-west-1"},
    {"endpoint": "s3.dualstack.eu-west-1.amazonaws.com"},
    {"endpoint": "s3-accelerate.amazonaws.com"},
    {"endpoint": "s3-accesspoint.us-east-1.amazonaws.com", "secure": True},
    {"endpoint": "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"},
    {"endpoint": "s3.cn-north-1.amazonaws.com.cn", "region": "cn-north-1"},
    {"endpoint": "ec2-10-0-0-7.compute-1.amazonaws.com"},
    {"endpoint": "minio.my-lb.elb.amazonaws.com"},
    {"region": "Local_Region-2"},
    {"bucket": "rec.ord-ings.2"},
    {"bucket": "a" * 63},
    {"prefix": ""},
    {"prefix": "/"},
    {"prefix": "/streams/"},
    {"prefix": "a/.../b. c/..x"},
    {"prefix": "récords/" + "p" * 500},
]


@pytest.mark.parametrize("s3", RUNNABLE, ids=[json.dumps(s3)[:60] for s3 in RUNNABLE])
@pytest.mark.parametrize("instance", ["...", "a..b", ""])
def test_what_check_accepts_the_s3_client_takes(tmp_path, s3, instance):
    keys = {"access_key": "key", "secret_key": "secret"}
    cfg = config.load(write(tmp_path, {"s3": {**keys, **s3}, "instance": instance}), environ={})
    client = s3client.client(cfg.s3, 1)
    key = Layout(cfg.s3.prefix, instance or "host").owner_key()
    url = client.get_presigned_url("PUT", cfg.s3.bucket, key)
    assert urllib3.util.parse_url(url).host


VALID_BUCKETS = ["recordings", "abc", "a" * 63, "rec.ord-ings.2", "1-2", "192.168.5", "xn-a"]
INVALID_BUCKETS = [
    "ab",
    "a" * 64,
    "My_Bucket",
    "rec_ordings",
    "Recordings",
    "-recordings",
    "recordings-",
    "recordings.",
    "rec..ordings",
    "rec.-ordings",
    "rec-.ordings",
    "192.168.5.4",
    "xn--recordings",
    "sthree-recordings",
    "amzn-s3-demo-recordings",
    "recordings-s3alias",
    "recordings--ol-s3",
    "recordings.mrap",
    "recordings--x-s3",
    "recordings--table-s3",
    "récordings",
]


@pytest.mark.parametrize("name", VALID_BUCKETS)
def test_bucket_names_within_s3_s_rules_are_accepted(name):
    assert config.bucket_name_problem(name) is None
    check_bucket_name(name, strict=True, s3_check=True)  # minio-py takes it too


@pytest.mark.parametrize("name", INVALID_BUCKETS)
def test_bucket_names_outside_s3_s_rules_say_which_rule(name):
    assert config.bucket_name_problem(name).startswith("must")
