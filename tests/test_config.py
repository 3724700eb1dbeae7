import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from streamer import config

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
    assert cfg.workers == 4 and cfg.s3.secure is True


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
        ({}, {"STREAMER_WORKERS": "many"}, "workers (from STREAMER_WORKERS)"),
        (
            {},
            {"STREAMER_S3_SECRETKEY": "x"},
            "STREAMER_S3_SECRETKEY: unknown setting; did you mean STREAMER_S3_SECRET_KEY?",
        ),
        ({}, {"STREAMER_PORT": "9108"}, "STREAMER_PORT: unknown setting"),
        ({}, {"STREAMER_METRICS_PORT": "http://x:1"}, "metrics.port (from STREAMER_METRICS_PORT)"),
        ({"log": {"format": "xml"}}, {}, "log.format"),
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
    assert cfg.metrics.port == config.Config().metrics.port and cfg.workers == 3


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
