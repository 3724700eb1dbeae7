"""`streamer config init|check|show` (streamer/cli/settings.py) on real config files and a
real environment, through click's CliRunner in this process: what each prints on stdout
and on stderr, its exit status, and the file init writes. (How the file is found and what
the settings may be: tests/test_config.py.)"""

from __future__ import annotations

import json
import os

import pytest
from commands import configured, streamer

from streamer import config


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    return configured(
        tmp_path,
        monkeypatch,
        s3={
            "bucket": "from-file",
            "access_key": "file-key",
            "secret_key": "file-secret",
            "session_token": "file-token",
        },
    )


def test_check_says_ok_on_stdout_and_which_file_on_stderr(config_file, tmp_path, monkeypatch):
    checked = streamer("config", "check")
    assert checked.exit_code == 0
    assert checked.stdout == "configuration ok\n"
    assert checked.stderr == f"config: {config_file} (STREAMER_CONFIG)\n"
    flagged = streamer("config", "check", "--config", str(config_file))
    assert flagged.stderr == f"config: {config_file} (--config)\n"
    monkeypatch.delenv("STREAMER_CONFIG")
    if os.path.lexists(config.SYSTEM_CONFIG):
        return  # this machine has a config file of its own
    bare = streamer("config", "check")
    assert bare.exit_code == 0 and bare.stdout == "configuration ok\n"
    assert bare.stderr == (
        f"config: no config file (none at {tmp_path}/.config/streamer/config.json or "
        f"{config.SYSTEM_CONFIG}): the defaults and STREAMER_* variables\n"
    )


def test_check_refuses_an_invalid_setting_with_exit_2_and_never_says_ok(config_file, monkeypatch):
    config_file.write_text(json.dumps({"stream": {"chunk_size": 1}}))
    bad = streamer("config", "check")
    assert bad.exit_code == 2 and bad.stdout == ""
    assert bad.stderr.startswith("streamer: invalid configuration: stream.chunk_size")
    config_file.write_text("{}")
    monkeypatch.setenv("STREAMER_S3_SECURE", "maybe")
    from_env = streamer("config", "check")
    assert from_env.exit_code == 2 and from_env.stdout == ""
    assert "STREAMER_S3_SECURE" in from_env.stderr


def test_show_prints_the_file_and_the_variables_over_it_with_secrets_hidden(
    config_file, monkeypatch
):
    monkeypatch.setenv("STREAMER_S3_BUCKET", "from-variable")
    monkeypatch.setenv("STREAMER_S3_ACCESS_KEY", "variable-key")
    shown = streamer("config", "show")
    assert shown.exit_code == 0, shown.stderr
    effective = json.loads(shown.stdout)
    assert effective["s3"]["bucket"] == "from-variable", "a variable wins over the file"
    assert effective["checkpoint"]["path"] == str(config_file.parent / "checkpoint")
    assert effective["s3"]["access_key"] == "variable-key"
    assert (effective["s3"]["secret_key"], effective["s3"]["session_token"]) == ("***", "***")
    assert "file-secret" not in shown.output and "file-token" not in shown.output
    assert shown.stderr == (
        f"config: {config_file} (STREAMER_CONFIG)\n"
        "credentials: static: access_key from STREAMER_S3_ACCESS_KEY, secret_key from the "
        "config file, session_token from the config file\n"
    )


def test_show_names_the_aws_chain_when_no_keys_are_given(tmp_path, monkeypatch):
    configured(tmp_path, monkeypatch)
    shown = streamer("config", "show")
    assert json.loads(shown.stdout)["s3"]["secret_key"] == "", "nothing to hide"
    assert shown.stderr.endswith(
        "\ncredentials: AWS chain (AWS_* variables, shared "
        "credentials file, instance or container role)\n"
    )


def test_init_writes_a_file_only_its_owner_reads_once_then_only_with_force(tmp_path, monkeypatch):
    configured(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "etc" / "new.json"
    made = streamer("config", "init", str(target), "--set", "watch.directory=input")
    assert made.exit_code == 0, made.stderr
    assert made.stdout == (
        f"wrote {target}\nthe commands read {tmp_path / 'config.json'} (STREAMER_CONFIG); "
        f"this file with --config {target}\n"
    )
    assert target.stat().st_mode & 0o777 == 0o600, "it may hold the secret key"
    assert json.loads(target.read_text())["watch"]["directory"] == str(tmp_path / "input")
    assert streamer("config", "check", "--config", str(target)).exit_code == 0
    written = target.read_bytes()

    again = streamer("config", "init", str(target), "--set", "log.format=text")
    assert again.exit_code == 1
    assert again.stderr == f"streamer: {target} exists: edit it, or write over it with --force\n"
    assert target.read_bytes() == written
    forced = streamer("config", "init", str(target), "--force", "--set", "log.format=text")
    assert forced.exit_code == 0, forced.stderr
    assert json.loads(target.read_text())["log"]["format"] == "text"


def test_init_refuses_a_value_that_is_not_valid_with_exit_2_and_writes_nothing(
    tmp_path, monkeypatch
):
    configured(tmp_path, monkeypatch)
    target = tmp_path / "new.json"
    invalid = streamer("config", "init", str(target), "--set", "stream.idle_timeout=0")
    assert invalid.exit_code == 2
    assert invalid.stderr.startswith("streamer: invalid configuration: stream.idle_timeout")
    no_value = streamer("config", "init", str(target), "--set", "log.format")
    assert no_value.exit_code == 2 and "'log.format' is not KEY=VALUE" in no_value.stderr
    assert not target.exists()
