"""`streamer run` (streamer/cli/run.py) up to where the daemon takes over: its exit status
for a wrong argument, a configuration that does not load and a start that cannot be made
(the contract a service manager goes by: 2 and 3 are not worth a restart), each in a
process of its own, with no S3 to reach; and the metrics directory it starts empty."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import clean_env

from streamer.cli.run import prepare_metrics_dir


def run(tmp_path, *args: str, settings: dict | None = None) -> subprocess.CompletedProcess:
    """`streamer run` on a config file of `settings` whose S3 nobody serves."""
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            settings
            or {
                "watch": {"directory": str(tmp_path / "input")},
                "checkpoint": {"path": str(tmp_path / "checkpoint")},
                "s3": {"endpoint": "127.0.0.1:9"},
                "metrics": {"enabled": False},
            }
        )
    )
    env = clean_env({"STREAMER_CONFIG": str(path), "HOME": str(tmp_path)})
    return subprocess.run(
        [sys.executable, "-m", "streamer", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_timeout_without_once_is_a_wrong_argument_and_nothing_starts(tmp_path):
    done = run(tmp_path, "--timeout", "5")
    assert done.returncode == 2
    assert "--timeout goes with --once" in done.stderr
    assert not (tmp_path / "checkpoint").exists()


def test_a_configuration_that_does_not_load_exits_2_naming_the_setting(tmp_path):
    done = run(tmp_path, settings={"stream": {"chunk_size": "ten"}})
    assert done.returncode == 2
    assert "invalid configuration" in done.stderr and "chunk_size" in done.stderr


def test_a_watch_directory_that_cannot_be_made_exits_3_and_says_why(tmp_path):
    (tmp_path / "input").write_bytes(b"a file where the directory should be")
    done = run(tmp_path)
    assert done.returncode == 3, done.stderr
    assert "start_failed" in done.stderr and str(tmp_path / "input") in done.stderr


def test_the_metrics_directory_is_emptied_of_an_earlier_run_s_values(tmp_path, monkeypatch):
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"old values")
    (directory / "notes.txt").write_text("not the metrics library's")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    prepare_metrics_dir()
    assert sorted(os.listdir(directory)) == ["notes.txt"]


def test_without_a_metrics_directory_one_is_made_and_named_for_the_library(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", None)
    prepare_metrics_dir()
    made = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    assert os.path.isdir(made) and os.path.dirname(made) == str(tmp_path)
    assert os.path.basename(made).startswith("streamer-metrics-")


def test_a_metrics_directory_named_but_not_there_is_made(tmp_path, monkeypatch):
    directory = tmp_path / "not" / "yet"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    prepare_metrics_dir()
    assert directory.is_dir()
