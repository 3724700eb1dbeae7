"""`streamer doctor` (streamer/cli/doctor.py) through click's CliRunner in this process,
with no S3 server: the local checks (the watch directory, whether retention sees writers,
the checkpoint store: unusable, another instance's, held by a daemon) each failing with
its ✗, the hint `run` gives and exit 1 while the rest is still checked; S3 where nothing
listens, or with no credentials to be had; the text and --json output; an invalid
configuration. Over the directory-backed S3 (tests/dirstore.py) standing in for the S3
client: every check passing, and scratch objects S3 will not delete. Real servers, mounts
and daemons: tests/integration/test_doctor.py."""

from __future__ import annotations

import importlib
import json
import os

import pytest
from commands import (
    DOCTOR_CHECKS,
    MAP_SIZE,
    configured,
    nothing_listening,
    stored,
    stream,
    streamer,
)
from dirstore import DirectoryStore, s3_error

from streamer import chunkstore, naming, preflight
from streamer.checkpoint import CheckpointStore, lock_store
from streamer.failures import REJECTED_HINT
from streamer.preflight import Unmet

doctor_command = importlib.import_module("streamer.cli.doctor")  # not the command itself

MARKS = {True: "✓", False: "✗", None: "-"}


@pytest.fixture
def s3_away():
    """S3 settings naming an endpoint where nothing listens: refused at once."""
    with nothing_listening() as port:
        yield {"endpoint": f"127.0.0.1:{port}", "access_key": "key", "secret_key": "secret"}


def set_up(tmp_path, monkeypatch, s3: dict, **sections):
    """A config whose watch directory is tmp_path/in (made here), of instance cam-host,
    S3 at `s3`, unless `sections` say otherwise; the watch directory."""
    watch = tmp_path / "in"
    watch.mkdir(exist_ok=True)
    settings = {"watch": {"directory": str(watch)}, "instance": "cam-host", "s3": s3}
    configured(tmp_path, monkeypatch, **{**settings, **sections})
    return watch


def checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def unmet(check, *args) -> Unmet:
    """What the preflight check, which `run` asks too, says of `args`."""
    with pytest.raises(Unmet) as caught:
        check(*args)
    return caught.value


def test_a_good_local_setup_with_s3_away_passes_the_local_checks_and_fails_at_s3(
    tmp_path, monkeypatch, s3_away
):
    watch = set_up(tmp_path, monkeypatch, s3_away)
    for name in ("cam-1.mp4", "cam-2.mp4"):
        (watch / name).write_bytes(b"x")
    result = streamer("doctor", "--json")
    assert result.exit_code == 1, result.stdout + result.stderr
    said = json.loads(result.stdout)
    assert said["ok"] is False
    assert [c["name"] for c in said["checks"]] == DOCTOR_CHECKS
    assert all(set(c) == {"name", "ok", "detail", "hint"} for c in said["checks"])
    [watched, retention, store, reachable, *rest] = said["checks"]
    assert watched["ok"] is True and watched["detail"] == f"{watch}: readable, 2 entries"
    assert retention["ok"] is True, "retention is off"
    assert store["ok"] is True
    assert store["detail"] == f"{tmp_path / 'checkpoint'}: none yet, created at first start"
    assert reachable["ok"] is False and "Connection refused" in reachable["detail"]
    assert reachable["hint"] == preflight.S3_HINT
    assert all(c["ok"] is None and c["detail"].startswith("not tried: ") for c in rest)
    assert sorted(p.name for p in watch.iterdir()) == ["cam-1.mp4", "cam-2.mp4"]
    assert not (tmp_path / "checkpoint").exists(), "a check makes nothing"


def test_the_text_gives_each_check_a_line_with_its_mark_and_a_failure_s_hint_below(
    tmp_path, monkeypatch, s3_away
):
    set_up(tmp_path, monkeypatch, s3_away)
    shown = streamer("doctor")
    said = list(checks(streamer("doctor", "--json")).values())
    assert shown.exit_code == 1
    lines = iter(shown.stdout.splitlines())
    columns = set()
    for check in said:
        line = next(lines)
        assert line.startswith(f"{MARKS[check['ok']]} {check['name']} ")
        assert line.endswith(check["detail"])
        columns.add(line.index(check["detail"]))
        if check["hint"]:
            hinted = next(lines)
            assert hinted.lstrip() == f"hint: {check['hint']}"
            columns.add(hinted.index("hint: "))
    assert next(lines, None) is None
    assert len(columns) == 1, "details and hints start in one column"
    assert [c["name"] for c in said if c["hint"]] == ["S3 reachable"]


@pytest.mark.parametrize("where", ["missing", "a file", "below a file"])
def test_a_watch_directory_that_is_not_one_fails_as_run_says_and_the_rest_is_checked(
    tmp_path, monkeypatch, s3_away, where
):
    a_file = tmp_path / "cam.mp4"
    a_file.write_bytes(b"")
    path = {"missing": tmp_path / "nowhere", "a file": a_file, "below a file": a_file / "in"}
    watch = {"directory": str(path[where])}
    set_up(tmp_path, monkeypatch, s3_away, watch=watch, retention={"delete_after_upload": True})
    result = streamer("doctor", "--json")
    assert result.exit_code == 1
    said = checks(result)
    expected = unmet(preflight.watch_directory, str(path[where]))
    assert (said["watch directory"]["detail"], said["watch directory"]["hint"]) == (
        expected.detail,
        expected.hint,
    )
    assert said["watch directory"]["ok"] is False
    # Not a failure of its own: a lease is not what would mend it.
    retention = said["retention sees writers"]
    assert retention == {
        "name": "retention sees writers",
        "ok": None,
        "detail": "not tried: the watch directory cannot be used",
        "hint": "",
    }
    assert said["checkpoint store"]["ok"] is True
    assert said["S3 reachable"]["ok"] is False, "S3 is asked all the same"


def test_a_watch_directory_that_cannot_be_listed_fails_with_its_error_not_a_traceback(
    tmp_path, monkeypatch, s3_away
):
    """The access check `run` makes goes by the real uid, a listing by the effective one:
    where they differ, the listing alone is refused."""
    watch = set_up(tmp_path, monkeypatch, s3_away)

    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(doctor_command.os, "listdir", refused)
    result = streamer("doctor", "--json")
    assert result.exit_code == 1
    said = checks(result)
    assert said["watch directory"]["ok"] is False
    assert said["watch directory"]["detail"].startswith(f"{watch}: ")
    assert "Permission denied" in said["watch directory"]["detail"]
    assert said["retention sees writers"]["ok"] is None
    assert list(said) == DOCTOR_CHECKS


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_a_checkpoint_path_that_cannot_be_a_store_fails_as_run_says(
    tmp_path, monkeypatch, s3_away, where
):
    a_file = tmp_path / "taken"
    a_file.write_bytes(b"")
    path = {"a file": a_file, "below a file": a_file / "store"}[where]
    set_up(tmp_path, monkeypatch, s3_away, checkpoint={"path": str(path), "map_size": MAP_SIZE})
    result = streamer("doctor", "--json")
    assert result.exit_code == 1
    said = checks(result)
    expected = unmet(preflight.checkpoint_directory, str(path))
    store = said["checkpoint store"]
    assert (store["ok"], store["detail"], store["hint"]) == (False, expected.detail, expected.hint)
    assert said["watch directory"]["ok"] is True


def test_a_checkpoint_store_that_is_not_one_fails_and_says_it_cannot_be_opened(
    tmp_path, monkeypatch, s3_away
):
    set_up(tmp_path, monkeypatch, s3_away)
    path = tmp_path / "checkpoint"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"not a store" * 1000)
    store = checks(streamer("doctor", "--json"))["checkpoint store"]
    assert store["ok"] is False
    assert store["detail"].startswith(f"cannot open checkpoint store at {path}: ")
    assert "checkpoint.path" in store["hint"]


def test_a_store_a_daemon_holds_fails_and_once_let_go_its_streams_are_counted(
    tmp_path, monkeypatch, s3_away
):
    set_up(tmp_path, monkeypatch, s3_away)
    path = tmp_path / "checkpoint"
    streams = [stream("cam-1"), stream("cam-2"), stream("cam-3")]
    stored(path, *streams)
    daemon = lock_store(str(path))  # as a running daemon holds it
    try:
        held = checks(streamer("doctor", "--json"))["checkpoint store"]
    finally:
        os.close(daemon)
    assert held["ok"] is False
    assert held["detail"] == (
        f"another streamer daemon (pid {os.getpid()}) runs on the checkpoint store {path}"
    )
    assert held["hint"] == preflight.STORE_HELD_HINT
    free = checks(streamer("doctor", "--json"))["checkpoint store"]
    assert free["ok"] is True
    assert free["detail"] == f"{path}: opened, writable, {len(streams)} streams"


def test_another_instance_s_store_fails_and_with_none_configured_s3_is_asked_as_the_store_s(
    tmp_path, monkeypatch, s3_away
):
    path = tmp_path / "checkpoint"
    store = CheckpointStore(str(path), MAP_SIZE)
    store.claim_instance("cam-host", "cam-host")
    store.close()
    set_up(tmp_path, monkeypatch, s3_away, instance="other-host")
    said = checks(streamer("doctor", "--json"))["checkpoint store"]
    expected = unmet(preflight.same_instance, "other-host", "cam-host")
    assert (said["ok"], said["detail"], said["hint"]) == (False, expected.detail, expected.hint)

    asked = []
    real = chunkstore.ChunkStore

    def made(config, instance):
        asked.append(instance)
        return real(config, instance)

    monkeypatch.setattr(chunkstore, "ChunkStore", made)
    set_up(tmp_path, monkeypatch, s3_away, instance="")
    assert checks(streamer("doctor", "--json"))["checkpoint store"]["ok"] is True
    path.rename(tmp_path / "elsewhere")
    streamer("doctor", "--json")
    assert asked == ["cam-host", naming.host_instance()], "a new store: the host's name"


def test_no_credentials_to_be_had_fails_with_the_hint_run_gives_a_refusal(
    tmp_path, monkeypatch, s3_away
):
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    set_up(tmp_path, monkeypatch, {**s3_away, "access_key": "", "secret_key": ""})
    with nothing_listening() as port:  # the container role's endpoint, not answering
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{port}/")
        result = streamer("doctor", "--json")
    assert result.exit_code == 1
    said = checks(result)
    credentials = said["S3 credentials"]
    assert credentials["ok"] is False and credentials["detail"].startswith("no S3 credentials")
    assert credentials["hint"] == doctor_command.rejected_hint() == REJECTED_HINT
    # No request was sent: whether S3 answers is not known, and no bucket was asked for.
    assert said["S3 reachable"]["ok"] is None and said["bucket"]["ok"] is None
    assert said["scratch object"]["ok"] is None and said["instance name"]["ok"] is None
    assert list(said) == DOCTOR_CHECKS


def test_an_invalid_configuration_exits_2_before_any_check(tmp_path, monkeypatch, s3_away):
    set_up(tmp_path, monkeypatch, {**s3_away, "connect_timeout": 0})
    for args in (["doctor"], ["doctor", "--json"]):
        refused = streamer(*args)
        assert refused.exit_code == 2
        assert refused.stdout == ""
        assert refused.stderr.startswith("streamer: invalid configuration: ")
        assert "connect_timeout" in refused.stderr


class Undeletable(DirectoryStore):
    """S3 that refuses DeleteObject, as a bucket policy may."""

    def remove(self, key: str) -> None:
        raise s3_error("AccessDenied", 403, key)


def in_place_of_s3(monkeypatch, tmp_path, kind=DirectoryStore) -> None:
    """The S3 client doctor makes is a directory-backed store in tmp_path/s3."""

    def made(config, instance):
        return kind(tmp_path / "s3", bucket=config.bucket, prefix=config.prefix, instance=instance)

    monkeypatch.setattr(chunkstore, "ChunkStore", made)


def test_every_check_passing_exits_0_and_leaves_no_scratch_object(tmp_path, monkeypatch, s3_away):
    set_up(tmp_path, monkeypatch, {**s3_away, "bucket": "cams"})
    in_place_of_s3(monkeypatch, tmp_path)
    result = streamer("doctor", "--json")
    said = json.loads(result.stdout)
    assert result.exit_code == 0, result.stdout
    assert said["ok"] is True
    assert [c["name"] for c in said["checks"] if c["ok"] is True] == DOCTOR_CHECKS
    assert checks(result)["bucket"]["detail"] == "cams: created"
    left = [p for p in (tmp_path / "s3" / "cams").rglob("*") if p.is_file()]
    assert left == [], "scratch objects are deleted"


def test_scratch_objects_s3_will_not_delete_fail_only_where_run_deletes_chunks(
    tmp_path, monkeypatch, s3_away
):
    in_place_of_s3(monkeypatch, tmp_path, Undeletable)
    set_up(tmp_path, monkeypatch, s3_away)
    kept = checks(streamer("doctor", "--json"))
    scratch = kept["scratch object"]
    assert scratch["ok"] is True
    assert "could not delete" in scratch["detail"] and "delete it by hand" in scratch["detail"]
    assert "could not delete" in kept["multipart copy"]["detail"]

    set_up(tmp_path, monkeypatch, s3_away, stream={"keep_chunks": False})
    result = streamer("doctor", "--json")
    assert result.exit_code == 1
    scratch = checks(result)["scratch object"]
    assert scratch["ok"] is False and "allow DeleteObject" in scratch["detail"]
    assert scratch["hint"] == REJECTED_HINT


class Refusing:
    """Removes the keys it is given, but for those in `refused`."""

    def __init__(self, refused: set[str]):
        self.refused, self.removed = refused, []

    def remove(self, key: str) -> None:
        if key in self.refused:
            raise s3_error("AccessDenied", 403, key)
        self.removed.append(key)


def test_clean_up_tries_every_key_and_names_those_left():
    s3 = Refusing({"a", "c"})
    assert doctor_command.Doctor.clean_up(s3, ["a", "b", "c", "d"]) == (
        "could not delete a, c: delete it by hand"
    )
    assert s3.removed == ["b", "d"]
    assert doctor_command.Doctor.clean_up(Refusing(set()), ["a"]) == ""
