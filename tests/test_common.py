"""What the admin commands share (streamer/cli/common.py): --config and --json given before
the command or after it, a configuration that does not load, a checkpoint store that is not
there or does not open, a stream that is not in it, and a stream as --json gives it. Through
click's CliRunner, in this process, on real config files and a real checkpoint store; no
daemon and no S3 (tests/commands.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from commands import configured, stored, stream, streamer

from streamer.cli.common import get_or_exit, open_store, summary
from streamer.records import StreamState


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    return configured(tmp_path, monkeypatch)


def test_config_and_json_before_the_command_count_and_after_it_win(config, tmp_path):
    stored(tmp_path / "checkpoint", stream("cam-1"))
    missing = str(tmp_path / "missing.json")
    before = streamer("--config", str(config), "--json", "streams", "list")
    assert before.exit_code == 0, before.stderr
    assert [s["stream_id"] for s in json.loads(before.stdout)] == ["cam-1"]
    after = streamer("--config", missing, "streams", "list", "--config", str(config))
    assert after.exit_code == 0, after.stderr
    assert "cam-1" in after.stdout and not after.stdout.startswith("[")
    wrong = streamer("streams", "list", "--config", missing)
    assert wrong.exit_code == 2
    assert f"cannot read config file {missing}" in wrong.stderr


def test_a_json_the_command_does_not_take_is_refused_before_it_does_anything(config, tmp_path):
    stored(tmp_path / "checkpoint", stream("cam-1"))
    copy = tmp_path / "backup"
    refused = streamer("--json", "checkpoint", "backup", str(copy))
    assert refused.exit_code == 2
    assert "`streamer checkpoint backup` has no --json: leave it out" in refused.stderr
    assert not copy.exists()
    assert streamer("--json", "checkpoint", "backup", "--help").exit_code == 0


def test_a_configuration_that_does_not_load_exits_2_naming_the_setting(config, monkeypatch):
    config.write_text('{"workers": {"count": 0}}')
    bad = streamer("streams", "list")
    assert bad.exit_code == 2
    assert bad.stderr.startswith("streamer: invalid configuration: ") and "workers" in bad.stderr
    config.write_text("{}")
    monkeypatch.setenv("STREAMER_WORKERS_COUNT", "many")
    from_env = streamer("config", "check")
    assert from_env.exit_code == 2 and "STREAMER_WORKERS_COUNT" in from_env.stderr


def test_without_a_store_the_command_says_where_it_looked_and_which_config(config, tmp_path):
    missing = streamer("streams", "show", "cam-1")
    assert missing.exit_code == 1
    assert missing.stderr == (
        f"streamer: no checkpoint store at {tmp_path / 'checkpoint'} (checkpoint.path): has "
        f"streamer run here? config: {config} (STREAMER_CONFIG)\n"
    )
    with pytest.raises(SystemExit) as exited, open_store(None, code=3):
        pass
    assert exited.value.code == 3, "the code the command asks for"


def test_a_store_that_does_not_open_is_said_so_not_a_traceback(config, tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    broken = streamer("streams", "list")
    assert broken.exit_code == 1
    assert broken.stderr.startswith(
        f"streamer: cannot open checkpoint store at {tmp_path / 'checkpoint'}: "
    )


def test_an_unknown_stream_is_named_with_where_to_find_the_others(config, tmp_path, capsys):
    stored(tmp_path / "checkpoint", stream("cam-1"))
    with open_store(None, readonly=True) as store:
        assert get_or_exit(store, "cam-1").stream_id == "cam-1"
        with pytest.raises(SystemExit) as exited:
            get_or_exit(store, "nope", code=2)
    assert exited.value.code == 2
    said = capsys.readouterr().err
    assert said == "streamer: no stream 'nope'; `streamer streams list` shows them\n"


def test_a_stream_as_json_gives_it_has_raw_numbers_and_its_state_by_name():
    record = stream("cam-1", StreamState.PARTIAL, reuploaded_chunks=2, status_reason="gone")
    said = summary(record)
    assert said["state"] == "partial" and said["reason"] == "gone"
    assert (said["uploaded_bytes"], said["total_size"], said["chunks"]) == (300, 300, 3)
    assert said["reuploaded_chunks"] == 2 and said["completed_at"] == record.completed_at
    assert said["path"] == "/in/cam-1.mp4" and said["cancel_requested"] is False
