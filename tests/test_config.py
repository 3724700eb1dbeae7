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
        (
            {},
            {"STREAMER_S3_SECRET": "x"},
            "STREAMER_S3_SECRET: unknown setting; did you mean STREAMER_S3_SECURE or "
            "STREAMER_S3_SECRET_KEY?",
        ),
        (
            {},
            {"STREAMER_S3_KEY": "x"},
            "STREAMER_S3_KEY: unknown setting (every setting, and its variable: "
            "docs/configuration.md)",
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


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"watch": {"directroy": "/x"}},
            "watch.directroy: unknown setting in {path}; did you mean watch.directory?",
        ),
        (
            {"streem": {"chunk_size": 65536}},
            "streem: unknown section in {path}; did you mean stream?",
        ),
        (
            {"stream": {"bucket": "b"}},
            "stream.bucket: unknown setting in {path}; did you mean s3.bucket?",
        ),
        (
            {"chunk_size": 65536},
            "chunk_size: unknown setting in {path}; did you mean stream.chunk_size?",
        ),
        (
            {"metrics": {"prot": 1}},
            "metrics.prot: unknown setting in {path}; did you mean metrics.port?",
        ),
        (
            {"retention": {"delete_after": True}},
            "retention.delete_after: unknown setting in {path}; did you mean "
            "retention.delete_after_upload or retention.delete_partial?",
        ),
        (
            {"s3": {"password": "p"}},
            "s3.password: unknown setting in {path} (every setting, and its variable: "
            "docs/configuration.md)",
        ),
    ],
)
def test_a_mistyped_key_in_the_file_gets_the_nearest_settings(tmp_path, data, expected):
    path = write(tmp_path, data)
    with pytest.raises(config.ConfigError) as raised:
        config.load(path, environ={})
    assert str(raised.value) == expected.format(path=path)


def test_keys_that_start_with_two_slashes_are_comments(tmp_path):
    path = write(
        tmp_path,
        {
            "//": "a comment",
            "// instance": "another",
            "stream": {"//": "in a section", "//idle_timeout": 5, "chunk_size": 65536},
        },
    )
    cfg = config.load(path, environ={})
    assert cfg.stream.chunk_size == 65536
    assert cfg.stream.idle_timeout == config.StreamConfig().idle_timeout, "commented out"


def test_the_config_file_is_the_flag_s_the_variable_s_the_user_s_or_the_system_s(tmp_path):
    user = tmp_path / "xdg" / "streamer" / "config.json"
    system = tmp_path / "etc" / "config.json"
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}

    def found(given=None, **variables):
        return config.locate(given, {**env, **variables}, system=str(system))

    assert found() == (None, f"none at {user} or {system}")
    assert "the defaults and STREAMER_* variables" in str(found())
    system.parent.mkdir()
    system.write_text("{}")
    assert found() == (str(system), "the system's config file")
    user.parent.mkdir(parents=True)
    user.symlink_to(tmp_path / "nowhere")
    shadowed = f"the user's config file; {system} is there too, and not read"
    assert found() == (str(user), shadowed), "a link to nothing is no gap"
    with pytest.raises(config.ConfigError, match=f"cannot read config file {user}: No such"):
        config.load(found().path, environ={})
    assert found(STREAMER_CONFIG="env.json") == ("env.json", "STREAMER_CONFIG")
    assert found("flag.json", STREAMER_CONFIG="env.json") == ("flag.json", "--config")
    assert str(found("flag.json")) == "flag.json (--config)"


@pytest.mark.parametrize("xdg", [None, "", "relative/dir"])
def test_the_user_s_file_is_under_dot_config_without_an_absolute_xdg_config_home(xdg):
    env = {"HOME": "/home/someone"} | ({} if xdg is None else {"XDG_CONFIG_HOME": xdg})
    assert config.user_config(env) == "/home/someone/.config/streamer/config.json"


def test_the_starting_file_is_commented_and_reads_back_as_what_was_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = {
        "watch.directory": "input",
        "s3.access_key": "key",
        "s3.secret_key": "secret",
        "stream.idle_timeout": "5",
        "metrics.port": "0",
        "grace_period": "3",
    }
    text = config.starting_file(values)
    data = json.loads(text)
    assert all(data[s]["//"] for s in ("watch", "stream", "s3", "retention", "checkpoint", "log"))
    assert data["//"] and data["// instance"] and data["instance"] == ""
    assert data["metrics"] == {"port": 0} and data["grace_period"] == 3
    same = {
        "watch": {"directory": str(tmp_path / "input")},
        "s3": {"access_key": "key", "secret_key": "secret"},
        "stream": {"idle_timeout": 5},
        "metrics": {"port": 0},
        "grace_period": 3,
    }
    (tmp_path / "written.json").write_bytes(text)
    (tmp_path / "same.json").write_text(json.dumps(same))
    assert config.load(str(tmp_path / "written.json"), environ={}) == config.load(
        str(tmp_path / "same.json"), environ={}
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"s3.acess_key": "k"},
            "s3.acess_key: unknown setting in --set; did you mean s3.access_key?",
        ),
        ({"stream.idle_timeout": "-1"}, "stream.idle_timeout: Expected `float` > 0"),
        ({"s3.access_key": "k"}, "s3.access_key, s3.secret_key: give both"),
    ],
)
def test_a_starting_file_that_could_not_be_read_is_not_made(values, expected):
    with pytest.raises(config.ConfigError) as raised:
        config.starting_file(values)
    assert str(raised.value).startswith(expected)


def streamer(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(env),
        cwd=cwd,
    )


@pytest.fixture
def home(tmp_path) -> tuple[dict, Path]:
    """A user of their own: their environment, and the path of their config file."""
    env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    return env, tmp_path / "xdg" / "streamer" / "config.json"


def test_config_init_writes_the_user_s_file_once_and_every_command_reads_it(tmp_path, home):
    home, user = home
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    init = ("config", "init", "--set", "watch.directory=input", "--set", "checkpoint.path=store")
    made = streamer(*init, env=home, cwd=here)
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"wrote {user}\n"
    assert user.stat().st_mode & 0o777 == 0o600, "it may hold the secret key"
    written = user.read_bytes()

    again = streamer(*init, env=home, cwd=here)
    assert again.returncode == 1
    assert again.stderr == f"streamer: {user} exists: edit it, or write over it with --force\n"
    bad = streamer(
        "config", "init", "--force", "--set", "stream.idle_timeout=0", env=home, cwd=here
    )
    assert bad.returncode == 2 and "stream.idle_timeout" in bad.stderr
    assert user.read_bytes() == written, "kept"

    shown = streamer("config", "show", env=home, cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["watch"]["directory"] == str(here / "input")
    assert f"config: {user} (the user's config file)\n" in shown.stderr
    status = streamer("status", env=home, cwd=elsewhere)
    assert status.returncode == 1
    assert f"no checkpoint store at {here / 'store'} (checkpoint.path)" in status.stderr
    assert f"config: {user} (the user's config file)" in status.stderr

    forced = streamer("config", "init", "--force", "--set", "log.format=text", env=home, cwd=here)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(user.read_text())["log"]["format"] == "text"
    other = streamer("config", "init", "other.json", env=home, cwd=here)
    assert other.returncode == 0 and (here / "other.json").exists()
    assert f"the commands read {user} (the user's config file); this file with --config " in (
        other.stdout
    )
    unwritable = streamer("config", "init", "other.json/config.json", env=home, cwd=here)
    assert unwritable.returncode == 1
    assert unwritable.stderr == f"streamer: cannot make the folder {here}/other.json: File exists\n"
    too_long = "c" * 300 + ".json"
    unwritable = streamer("config", "init", too_long, env=home, cwd=here)
    assert unwritable.returncode == 1
    assert unwritable.stderr == f"streamer: cannot write {too_long}: File name too long\n"
    no_value = streamer("config", "init", "x.json", "--set", "log.format", env=home, cwd=here)
    assert no_value.returncode == 2 and "'log.format' is not KEY=VALUE" in no_value.stderr
    assert not (here / "x.json").exists()
    named = {**home, "STREAMER_CONFIG": "named.json"}
    assert streamer("config", "init", env=named, cwd=here).stdout == "wrote named.json\n"
    flag = streamer("--config", "flag.json", "config", "init", env=named, cwd=here)
    assert flag.stdout.startswith("wrote flag.json\nthe commands read named.json (STREAMER_CONFIG)")


COMMANDS = [
    ("run",),
    ("run", "--once"),
    ("doctor",),
    ("health",),
    ("status",),
    ("streams", "list"),
    ("streams", "show", "cam1-20261206T221500Z"),
    ("verify", "--all"),
    ("remote", "list"),
    ("restore", "cam1-20261206T221500Z", "-o", "cam1.mp4"),
    ("checkpoint", "backup", "copy"),
    ("config", "show"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_reads_the_config_file_found_the_same_way(tmp_path, home, command):
    home, user = home
    user.parent.mkdir(parents=True)
    user.write_text(json.dumps({"stream": {"idle_timout": 5}}))
    result = streamer(*command, env=home, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"streamer: invalid configuration: stream.idle_timout: unknown setting in {user}; "
        "did you mean stream.idle_timeout?\n"
    )


def test_the_variable_wins_over_the_user_s_file_and_the_flag_over_both(tmp_path, home):
    home, user = home
    user.parent.mkdir(parents=True)
    user.write_text(json.dumps({"instance": "from-user-file"}))
    (tmp_path / "env.json").write_text(json.dumps({"instance": "from-variable"}))
    (tmp_path / "flag.json").write_text(json.dumps({"instance": "from-flag"}))

    def instance(*args: str, **env: str) -> str:
        shown = streamer(*args, "config", "show", env={**home, **env}, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)["instance"]

    assert instance() == "from-user-file"
    assert instance(STREAMER_CONFIG="env.json") == "from-variable"
    assert instance("--config", "flag.json", STREAMER_CONFIG="env.json") == "from-flag"


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
