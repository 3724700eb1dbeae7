"""A fleet on one bucket: several hosts, each its own daemon, checkpoint store, watch
directory and instance, recording files of the same names at the same moments into one
bucket. Against a real MinIO, with recordings written live by ffmpeg."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from harness import cli, port_of, scrape
from recordings import record, sha256_file

from integration.servers import manifest_of, reassemble

pytestmark = pytest.mark.integration

INSTANCES = ("cam-north", "cam-south", "cam-east")
RECORDINGS = {"front.mp4": "plain", "back.mp4": "fragmented"}
# Each host's recordings a little longer than the last: the same names, other bytes, so a
# recording under another host's keys cannot pass for that host's.
SECONDS = {"cam-north": 10, "cam-south": 10.4, "cam-east": 10.8}
DASHBOARD = Path(__file__).parents[2] / "ops" / "grafana" / "dashboards" / "streamer.json"


def test_hosts_on_one_bucket_keep_to_their_own_instance(make_daemon, server, ffmpeg, tmp_path):
    hosts = {name: make_daemon(home=name, instance=name).start() for name in INSTANCES}
    recorders = [
        record(ffmpeg, daemon.watch / file, SECONDS[name], kind)
        for name, daemon in hosts.items()
        for file, kind in RECORDINGS.items()
    ]

    # One host stopped mid-recording and started again: it goes on where it was, and the
    # others go on as if nothing happened.
    stopped = hosts["cam-east"]
    stopped.wait_for("chunk_uploaded", count=len(RECORDINGS) * 2)
    assert all(r.poll() is None for r in recorders), "stopped after the recordings ended"
    assert stopped.stop() == 0
    stopped.start()
    assert all(r.wait(60) == 0 for r in recorders)
    for daemon in hosts.values():
        daemon.wait_for("stream_finished", count=len(RECORDINGS), timeout=60)
    assert stopped.find("stream_resumed", this_run=True)

    # Each recording is exact under its own instance, and each instance's keys hold only
    # its own host's streams.
    ids = {
        name: {Path(e["path"]).name: e["stream_id"] for e in daemon.find("stream_discovered")}
        for name, daemon in hosts.items()
    }
    files = [daemon.watch / file for daemon in hosts.values() for file in RECORDINGS]
    assert len({sha256_file(path) for path in files}) == len(files)
    listing = server.client.list_objects(stopped.bucket, "rec/", recursive=True)
    keys = [o.object_name for o in listing]
    for name, daemon in hosts.items():
        assert set(ids[name]) == set(RECORDINGS)
        for file, stream_id in ids[name].items():
            path = daemon.watch / file
            manifest = manifest_of(server.client, daemon.bucket, stream_id, prefix=f"rec/{name}")
            data = reassemble(server.client, daemon.bucket, manifest)
            assert hashlib.sha256(data).hexdigest() == sha256_file(path) == manifest["sha256"]
            assert manifest["source"]["path"] == str(path)
            assert all(c["key"].startswith(f"rec/{name}/{stream_id}/") for c in manifest["chunks"])
        theirs = {
            k.split("/")[2] for k in keys if k.startswith(f"rec/{name}/") and k.count("/") > 2
        }
        assert theirs == set(ids[name].values())
    assert {k.split("/")[1] for k in keys} == set(INSTANCES)

    # Any host lists every host's streams, and restores any of them by name and instance.
    north = hosts["cam-north"]
    everyone = {(name, stream_id) for name in INSTANCES for stream_id in ids[name].values()}
    listed = cli(north, "remote", "list", "--all-instances")
    assert listed.returncode == 0, listed.stderr
    rows = {tuple(line.split()[:3]) for line in listed.stdout.splitlines()[1:]}
    assert rows == {(stream_id, name, "complete") for name, stream_id in everyone}
    as_json = cli(north, "remote", "list", "--all-instances", "--json")
    assert as_json.returncode == 0, as_json.stderr
    summaries = json.loads(as_json.stdout)
    assert {(s["instance"], s["stream_id"]) for s in summaries} == everyone
    assert len(summaries) == len(everyone)
    own = cli(north, "remote", "list", "--json")
    assert {s["instance"] for s in json.loads(own.stdout)} == {"cam-north"}

    for name, daemon in hosts.items():
        for file in RECORDINGS:
            out = tmp_path / f"{name}-{file}"
            restored = cli(north, "restore", file, "--instance", name, "-o", str(out), "--json")
            assert restored.returncode == 0, restored.stderr
            said = json.loads(restored.stdout)
            assert (said["instance"], said["stream_id"]) == (name, ids[name][file])
            assert out.read_bytes() == (daemon.watch / file).read_bytes()
    # Without --instance a name shared by the hosts is several recordings: each is listed.
    several = cli(north, "restore", "front", "-o", str(tmp_path / "front.mp4"))
    assert several.returncode == 2, several.stderr
    assert {line.split()[1] for line in several.stderr.splitlines()[2:]} == set(INSTANCES)

    # `status` and the metrics tell the hosts apart, by the label the dashboard picks by.
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    [query] = [v["query"] for v in variables if v["name"] == "instance"]
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", query).groups()
    for name, daemon in hosts.items():
        port = {"STREAMER_METRICS_PORT": str(port_of(daemon))}
        shown = cli(daemon, "status", env=port)
        assert shown.returncode == 0, shown.stderr
        assert f"instance:   {name}" in shown.stdout.splitlines()
        shown_json = cli(daemon, "status", "--json", env=port)
        assert json.loads(shown_json.stdout)["instance"] == name
        values = [k for k in scrape(daemon) if k.startswith(f"{metric}{{")]
        assert values == [f"{metric}{{{label}={name}}}"]
