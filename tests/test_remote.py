"""`streamer remote list` and `streamer restore` (streamer/cli/remote.py) with no S3
server: the TIME --since takes, an output file in the way, and which stream a NAME means,
against a directory-backed bucket (tests/dirstore.py) holding the streams two uploaders in
this process (tests/uploaders.py), under two instance names, uploaded and finished; and the
commands themselves through click's CliRunner on that bucket. Against real servers and
real recordings: tests/integration/test_restore.py."""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import click
import pytest
from commands import configured, streamer
from dirstore import DirectoryStore
from uploaders import INSTANCE, InProcess

from streamer import digests, naming
from streamer.bucket import ListedStream, RemoteStream, listed, read_manifests
from streamer.cli import display
from streamer.cli.common import EXIT_USAGE
from streamer.cli.remote import EXIT_MISSING, EXIT_REFUSED, Moment, candidates, chosen
from streamer.digests import CRC64NVME, SHA256
from streamer.messages import Assign, StreamFinished
from streamer.records import StreamRecord

# The module, not the `remote` group of the same name that streamer.cli holds.
remote_module = importlib.import_module("streamer.cli.remote")

KiB = 1024
OTHER = "other-host"
BUCKET = "recordings"  # DirectoryStore's, and the configuration's default
AT = datetime.fromisoformat

# What the bucket holds, by a name for the tests: (instance, the file below the watch
# directory, first seen, size). cam1 three times (twice on this host, once on the other),
# cam2 once, and yard/garage on both hosts, first seen in the same second: one stream id
# under two instances.
UPLOADS = {
    "cam1 old": (INSTANCE, "cam1.mp4", AT("2026-12-06T10:00:00Z"), 3 * KiB),
    "cam1 new": (INSTANCE, "cam1.mp4", AT("2026-12-06T11:00:00Z"), 2 * KiB),
    "cam2": (INSTANCE, "cam2.mp4", AT("2026-12-06T10:30:00Z"), 1 * KiB),
    "garage": (INSTANCE, "yard/garage.mp4", AT("2026-12-06T09:00:00Z"), 5 * KiB),
    "their cam1": (OTHER, "cam1.mp4", AT("2026-12-06T12:00:00Z"), 4 * KiB),
    "their garage": (OTHER, "yard/garage.mp4", AT("2026-12-06T09:00:00Z"), 6 * KiB),
}


@dataclass
class Bucket:
    """The directory-backed bucket, and each upload's stream id and bytes by its name."""

    s3: DirectoryStore
    ids: dict[str, str]
    data: dict[str, bytes]


def upload(up: InProcess, relative: str, first_seen: datetime, data: bytes) -> str:
    """A recording at `relative` below the watch directory, given the stream id the
    supervisor gives it (InProcess.track's ids are not of that form), assigned, finished
    and its metadata.json written. Each stream's file is in a folder of its own, so that a
    later stream of one name does not write over an earlier one's file."""
    stream_id = naming.stream_id_for(relative, first_seen, up.store.has_stream)
    path = up.watch / f"{len(list(up.store.streams()))}" / relative
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    st = path.stat()
    record = StreamRecord(
        stream_id=stream_id,
        path=str(path),
        relative_path=relative,
        inode=st.st_ino,
        device=st.st_dev,
        chunk_size=up.config.stream.chunk_size,
        first_seen_at=first_seen,
    )
    up.store.create_stream(record)
    up.commands.put(Assign(stream_id=stream_id))
    up.finish(record)
    up.run_until(lambda: any(m.stream_id == stream_id for m in up.of(StreamFinished)))
    return stream_id


@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> Bucket:
    """Both hosts' streams in one directory-backed bucket, their uploaders settled and
    closed: nothing changes in it while the tests read it."""
    root = tmp_path_factory.mktemp("remote")
    homes = {INSTANCE: root / "ours", OTHER: root / "theirs"}
    uploaders = {}
    for instance, home in homes.items():
        home.mkdir()
        uploaders[instance] = InProcess(home, DirectoryStore(root / "s3", instance=instance))
    ids, data = {}, {}
    try:
        for name, (instance, relative, first_seen, size) in UPLOADS.items():
            data[name] = os.urandom(size)
            ids[name] = upload(uploaders[instance], relative, first_seen, data[name])
    finally:
        for up in uploaders.values():
            up.close()
    return Bucket(DirectoryStore(root / "s3", instance=INSTANCE), ids, data)


def exited(capsys, call) -> tuple[int, list[str]]:
    """The exit status of `call()`, which must exit, and the lines it wrote on stderr;
    nothing may have gone to stdout."""
    with pytest.raises(SystemExit) as exit_:
        call()
    out, err = capsys.readouterr()
    assert out == ""
    return exit_.value.code, err.splitlines()


def row(bucket: Bucket, name: str) -> list[str]:
    """An upload's line in a list of candidates, split into its cells."""
    instance, _, first_seen, size = UPLOADS[name]
    return [bucket.ids[name], instance, display.timestamp(first_seen), *display.size(size).split()]


# The TIME of --since


@pytest.fixture
def eastern(monkeypatch):
    """Local time five hours behind UTC (a POSIX TZ: no time zone database needed), so
    that local time is not UTC by chance."""
    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    "given, seconds",
    [
        ("45s", 45),
        ("30m", 30 * 60),
        ("30min", 30 * 60),
        ("2h", 2 * 3600),
        ("3d", 3 * 86400),
        ("1w", 7 * 86400),
        (" 2 h ", 2 * 3600),
        ("0s", 0),
    ],
)
def test_a_span_is_that_long_back_from_now(given, seconds):
    before = datetime.now(UTC)
    moment = Moment().convert(given, None, None)
    after = datetime.now(UTC)
    back = timedelta(seconds=seconds)
    assert moment.tzinfo is not None
    assert before - back <= moment <= after - back


@pytest.mark.parametrize(
    "given, meant",
    [
        ("2026-12-06", "2026-12-06T05:00:00+00:00"),  # local midnight
        ("2026-12-06T22:15", "2026-12-07T03:15:00+00:00"),
        ("2026-12-06 22:15:30", "2026-12-07T03:15:30+00:00"),
        ("2026-12-06T22:15Z", "2026-12-06T22:15:00+00:00"),
        ("2026-12-06T22:15+02:00", "2026-12-06T20:15:00+00:00"),
    ],
)
def test_an_iso_time_keeps_its_zone_and_one_without_a_zone_is_local_time(eastern, given, meant):
    moment = Moment().convert(given, None, None)
    assert moment.tzinfo is not None, "comparable with the upload times, which are in UTC"
    assert moment == AT(meant)


def test_a_time_already_converted_is_taken_as_it_is():
    given = AT("2026-12-06T22:15:00+00:00")
    assert Moment().convert(given, None, None) is given


@pytest.mark.parametrize("given", ["yesterday", "2h ago", "30 minutes", "1.5h", "-2h", "2H", ""])
def test_what_is_not_a_time_is_refused_saying_what_a_time_is(given):
    with pytest.raises(click.BadParameter) as refused:
        Moment().convert(given, None, None)
    said = refused.value.message
    assert said.startswith(f"{given!r} is not a time: give an ISO 8601 date or time")
    assert "or a span back from now (30m, 2h, 3d)" in said


@pytest.mark.parametrize("given", ["1000000d", "99999999999w"])
def test_a_span_back_past_the_year_1_is_refused_not_a_traceback(given):
    with pytest.raises(click.BadParameter, match=f"^{given!r} reaches back before the year 1$"):
        Moment().convert(given, None, None)


def test_a_span_of_more_digits_than_any_time_has_is_not_a_time():
    given = "9" * 5000 + "d"  # more than int() takes from a string
    with pytest.raises(click.BadParameter) as refused:
        Moment().convert(given, None, None)
    assert refused.value.message.startswith(f"{given!r} is not a time")


# An output file in the way


@pytest.mark.parametrize("there", ["a file", "an empty file", "a dangling symlink"])
def test_an_output_that_is_there_is_refused_unless_forced(tmp_path, capsys, there):
    out = tmp_path / "out.mp4"
    if there == "a dangling symlink":
        out.symlink_to(tmp_path / "nowhere.mp4")
    else:
        out.write_bytes(b"kept" if there == "a file" else b"")
    code, err = exited(capsys, lambda: remote_module.refuse_if_there(str(out), False))
    assert code == EXIT_REFUSED
    assert err == [f"streamer: {out} is there already: give --force to replace it"]
    remote_module.refuse_if_there(str(out), True)
    assert capsys.readouterr() == ("", "")
    assert os.path.lexists(out) and not (tmp_path / "nowhere.mp4").exists(), "left as it is"


def test_an_output_that_is_not_there_is_not_refused(tmp_path, capsys):
    remote_module.refuse_if_there(str(tmp_path / "out.mp4"), False)
    assert capsys.readouterr() == ("", "")


# Which stream a NAME means


def test_a_stream_id_means_that_stream_with_its_metadata_json_read(bucket, capsys):
    stream = chosen(bucket.s3, BUCKET, bucket.ids["cam1 old"], None, False)
    assert isinstance(stream, RemoteStream)
    assert (stream.stream_id, stream.instance) == (bucket.ids["cam1 old"], INSTANCE)
    assert stream.manifest is not None and stream.manifest.stream_id == stream.stream_id
    assert stream.size == len(bucket.data["cam1 old"])
    assert sorted(stream.chunks) == [0]
    assert capsys.readouterr() == ("", ""), "not the newest of cam1's streams: no note"


def test_a_stream_id_under_two_instances_is_listed_unless_the_instance_is_given(bucket, capsys):
    stream_id = bucket.ids["garage"]
    assert stream_id == bucket.ids["their garage"]
    code, err = exited(capsys, lambda: chosen(bucket.s3, BUCKET, stream_id, None, False))
    assert code == EXIT_USAGE
    assert err[0] == f"streamer: stream {stream_id!r} is under several instances: give --instance"
    assert err[1].split() == ["STREAM", "INSTANCE", "FIRST", "SEEN", "SIZE"]
    assert sorted(line.split() for line in err[2:]) == sorted(
        [row(bucket, "garage"), row(bucket, "their garage")]
    )
    for instance, name in ((INSTANCE, "garage"), (OTHER, "their garage")):
        stream = chosen(bucket.s3, BUCKET, stream_id, instance, False)
        assert (stream.instance, stream.size) == (instance, len(bucket.data[name]))
    assert capsys.readouterr() == ("", "")


def test_an_instance_given_limits_where_a_stream_id_is_looked_for(bucket, capsys):
    stream_id = bucket.ids["their cam1"]
    code, err = exited(capsys, lambda: chosen(bucket.s3, BUCKET, stream_id, INSTANCE, False))
    assert code == EXIT_MISSING
    assert err == [
        f"streamer: no stream {stream_id!r} of instance {INSTANCE} in s3://{BUCKET}; "
        f"`streamer remote list --instance {INSTANCE}` lists them"
    ]


@pytest.mark.parametrize(
    "name, instance, meant",
    [
        ("cam2", None, "cam2"),
        ("cam2.mp4", None, "cam2"),
        ("cam2*", INSTANCE, "cam2"),
        ("garage", INSTANCE, "garage"),  # the end of its path
        ("yard/garage.mp4", OTHER, "their garage"),
        ("cam1", OTHER, "their cam1"),
    ],
)
def test_a_name_of_one_stream_means_it_without_a_note(bucket, capsys, name, instance, meant):
    stream = chosen(bucket.s3, BUCKET, name, instance, False)
    assert isinstance(stream, RemoteStream) and stream.manifest is not None
    assert (stream.stream_id, stream.instance) == (bucket.ids[meant], UPLOADS[meant][0])
    assert stream.size == len(bucket.data[meant])
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("name, quoted", [("cam1", "cam1"), ("cam1*", "'cam1*'")])
def test_a_recording_of_several_streams_means_the_newest_saying_so(bucket, capsys, name, quoted):
    stream = chosen(bucket.s3, BUCKET, name, INSTANCE, False)
    newer = bucket.ids["cam1 new"]
    assert (stream.stream_id, stream.instance) == (newer, INSTANCE)
    assert stream.size == len(bucket.data["cam1 new"])
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"restoring {newer} of instance {INSTANCE}, the newest of 2 streams; "
        f"`streamer remote list --instance {INSTANCE} --name {quoted}` lists them\n"
    )


def test_a_glob_of_several_recordings_lists_them_newest_first(bucket, capsys):
    code, err = exited(capsys, lambda: chosen(bucket.s3, BUCKET, "cam*", INSTANCE, False))
    assert code == EXIT_USAGE
    assert err[0] == (
        "streamer: 'cam*' names 3 streams of several recordings: give a stream id, the "
        "recording's path, --instance, or --latest for the newest"
    )
    assert err[1].split() == ["STREAM", "INSTANCE", "FIRST", "SEEN", "SIZE"]
    assert [line.split() for line in err[2:]] == [
        row(bucket, "cam1 new"),
        row(bucket, "cam2"),
        row(bucket, "cam1 old"),
    ]


def test_one_name_under_two_instances_is_two_recordings(bucket, capsys):
    code, err = exited(capsys, lambda: chosen(bucket.s3, BUCKET, "cam1", None, False))
    assert code == EXIT_USAGE
    assert err[0].startswith("streamer: 'cam1' names 3 streams of several recordings")
    assert [line.split()[:2] for line in err[2:]] == [
        [bucket.ids["their cam1"], OTHER],
        [bucket.ids["cam1 new"], INSTANCE],
        [bucket.ids["cam1 old"], INSTANCE],
    ]


@pytest.mark.parametrize(
    "name, instance, meant, among, listing",
    [
        (None, None, "their cam1", 6, "--all-instances"),
        (None, INSTANCE, "cam1 new", 4, f"--instance {INSTANCE}"),
        ("cam*", INSTANCE, "cam1 new", 3, f"--instance {INSTANCE} --name 'cam*'"),
        ("cam1", None, "their cam1", 3, "--all-instances --name cam1"),
    ],
)
def test_latest_means_the_newest_stream_of_whatever_recording(
    bucket, capsys, name, instance, meant, among, listing
):
    stream = chosen(bucket.s3, BUCKET, name, instance, True)
    wanted, where = bucket.ids[meant], UPLOADS[meant][0]
    assert (stream.stream_id, stream.instance) == (wanted, where)
    assert stream.size == len(bucket.data[meant])
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"restoring {wanted} of instance {where}, the newest of {among} streams; "
        f"`streamer remote list {listing}` lists them\n"
    )


def test_a_name_that_matches_nothing_gets_the_nearest_names(bucket, capsys):
    code, err = exited(capsys, lambda: chosen(bucket.s3, BUCKET, "cma1", None, False))
    assert code == EXIT_MISSING
    assert err == [
        f"streamer: no stream 'cma1' of any instance in s3://{BUCKET}; the nearest: cam1"
    ]
    code, err = exited(capsys, lambda: chosen(bucket.s3, BUCKET, "garaeg", OTHER, False))
    assert code == EXIT_MISSING
    assert err == [
        f"streamer: no stream 'garaeg' of instance {OTHER} in s3://{BUCKET}; the nearest: garage"
    ]


def test_a_name_like_none_of_them_points_to_the_listing(bucket, capsys):
    code, err = exited(capsys, lambda: chosen(bucket.s3, BUCKET, "porch*", None, False))
    assert code == EXIT_MISSING
    assert err == [
        f"streamer: no stream 'porch*' of any instance in s3://{BUCKET}; "
        "`streamer remote list --all-instances` lists them"
    ]


def test_a_stream_gone_between_the_listing_and_its_reading_is_said_to_be_gone(
    bucket, capsys, monkeypatch
):
    monkeypatch.setattr("streamer.bucket.find", lambda s3, stream_id, instance: [])
    code, err = exited(capsys, lambda: chosen(bucket.s3, BUCKET, "cam2", None, False))
    assert code == EXIT_MISSING
    assert err == [
        f"streamer: stream {bucket.ids['cam2']} of instance {INSTANCE} went from "
        f"s3://{BUCKET} while it was being read"
    ]


def test_latest_in_an_empty_bucket_says_there_are_no_streams(tmp_path, capsys):
    empty = DirectoryStore(tmp_path / "s3")
    empty.ensure_bucket(create=True)
    code, err = exited(capsys, lambda: chosen(empty, BUCKET, None, None, True))
    assert code == EXIT_MISSING
    assert err == [f"streamer: no streams of any instance in s3://{BUCKET}"]


def test_candidates_are_a_table_on_stderr_and_exit_2(bucket, capsys):
    theirs = read_manifests(bucket.s3, listed(bucket.s3, [OTHER]))
    nameless = ListedStream("somewhere", "not-a-stream-id")  # no time in its id, no chunks
    code, err = exited(capsys, lambda: candidates("which one?", [*theirs, nameless]))
    assert code == EXIT_USAGE
    assert err[0] == "streamer: which one?"
    assert [line.split() for line in err[1:]] == [
        ["STREAM", "INSTANCE", "FIRST", "SEEN", "SIZE"],
        row(bucket, "their cam1"),  # as given: by instance, then id, as listed
        row(bucket, "their garage"),
        ["not-a-stream-id", "somewhere", "-", "0", "B"],
    ]
    # The columns line up: each row's cells start where their headers do, and its size
    # ends where SIZE does.
    starts = [err[1].index(h) for h in ("STREAM", "INSTANCE", "FIRST SEEN")]
    for line in err[2:]:
        cells = [line[start:].split()[0] for start in starts]
        assert cells == line.split()[:3] and line[starts[1] - 1] == " "
        assert len(line) == len(err[1])


# The commands, on the directory-backed bucket


@pytest.fixture
def commands(bucket, tmp_path, monkeypatch) -> Bucket:
    """A configuration for instance test-host, and the commands' S3 the bucket."""
    configured(tmp_path, monkeypatch, instance=INSTANCE)
    monkeypatch.setattr(remote_module, "s3_of", lambda cfg: bucket.s3)
    return bucket


SUMMARY = {
    "stream_id", "instance", "status", "size", "chunks", "first_seen_at", "first_upload_at",
    "last_upload_at", "assembled",
}  # fmt: skip


def listed_json(*args: str) -> list[dict]:
    shown = streamer("remote", "list", "--json", *args)
    assert shown.exit_code == 0, shown.stderr
    return json.loads(shown.stdout)


def test_remote_list_json_gives_each_stream_s_figures(commands):
    ours = listed_json()
    names = sorted((n for n in UPLOADS if UPLOADS[n][0] == INSTANCE), key=commands.ids.get)
    assert [s["stream_id"] for s in ours] == [commands.ids[n] for n in names]
    for name, said in zip(names, ours, strict=True):
        assert set(said) == SUMMARY
        assert said["instance"] == INSTANCE
        assert said["status"] == "invalid", "finished, and not an MP4"
        assert (said["size"], said["chunks"]) == (len(commands.data[name]), 1)
        assert AT(said["first_seen_at"]) == UPLOADS[name][2]
        assert AT(said["first_upload_at"]) <= AT(said["last_upload_at"])
    every = listed_json("--all-instances")
    assert [(s["instance"], s["stream_id"]) for s in every] == sorted(
        (instance, commands.ids[n]) for n, (instance, *_) in UPLOADS.items()
    )
    assert [s["stream_id"] for s in listed_json("--instance", OTHER, "--name", "yard/*")] == [
        commands.ids["their garage"]
    ]


def test_remote_list_takes_one_instance_or_all_not_both(commands):
    both = streamer("remote", "list", "--instance", OTHER, "--all-instances")
    assert both.exit_code == EXIT_USAGE
    assert "give --instance or --all-instances, not both" in both.stderr
    assert both.stdout == ""


def test_remote_list_of_an_instance_with_no_streams_says_where_it_looked(commands):
    none = streamer("remote", "list", "--instance", "nobody", "--name", "cam*")
    assert none.exit_code == 0, none.stderr
    prefix = commands.s3.layout.instances_prefix()
    assert none.stdout == f"no streams named 'cam*' of instance nobody in s3://{BUCKET}/{prefix}\n"


def test_restore_writes_a_recording_into_a_directory_under_its_file_name(commands, tmp_path):
    into = tmp_path / "restored"
    into.mkdir()
    done = streamer("restore", "garage", "--instance", OTHER, "-o", str(into), "--json")
    assert done.exit_code == 0, done.stderr
    data = commands.data["their garage"]
    assert (into / "garage.mp4").read_bytes() == data
    assert sorted(p.name for p in into.iterdir()) == ["garage.mp4"], "nothing left beside it"
    said = json.loads(done.stdout)
    assert set(said) == {
        "stream_id", "instance", "status", "output", "size", "pieces", "reused", SHA256,
        CRC64NVME, "cut", "stopped",
    }  # fmt: skip
    assert (said["stream_id"], said["instance"], said["output"], said["size"]) == (
        commands.ids["their garage"], OTHER, str(into / "garage.mp4"), len(data)
    )  # fmt: skip
    [algorithm] = [a for a in (SHA256, CRC64NVME) if said[a] is not None]
    assert said[algorithm] == digests.of(algorithm, data).value


def test_restore_refuses_a_file_there_before_s3_is_asked_and_replaces_it_with_force(
    commands, tmp_path, monkeypatch
):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"not to be lost")

    def not_asked(cfg):
        raise AssertionError("S3 asked before the output was looked at")

    monkeypatch.setattr(remote_module, "s3_of", not_asked)
    refused = streamer("restore", "cam2", "-o", str(out))
    assert refused.exit_code == EXIT_REFUSED
    assert refused.stderr == f"streamer: {out} is there already: give --force to replace it\n"
    assert out.read_bytes() == b"not to be lost"
    monkeypatch.setattr(remote_module, "s3_of", lambda cfg: commands.s3)
    forced = streamer("restore", "cam2", "-o", str(out), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert out.read_bytes() == commands.data["cam2"]
    assert forced.stdout.startswith(f"{commands.ids['cam2']}: invalid, ")
    assert forced.stdout.rstrip().endswith(f"-> {out}")


@pytest.mark.parametrize(
    "args, code",
    [
        pytest.param(["cam*"], EXIT_USAGE, id="several recordings"),
        pytest.param(["porch"], EXIT_MISSING, id="no such name"),
        pytest.param(["--latest", "--instance", "nobody"], EXIT_MISSING, id="no streams"),
    ],
)
def test_restore_of_no_one_stream_writes_nothing(commands, tmp_path, args, code):
    out = tmp_path / "out.mp4"
    failed = streamer("restore", *args, "-o", str(out))
    assert failed.exit_code == code, failed.stderr
    assert failed.stderr.startswith("streamer: ")
    assert list(tmp_path.glob("out.mp4*")) == []
