"""Before the supervisor's loop, on a real checkpoint store (64 MiB map): the store's
instance name settled at its first start and kept ever after, a start that failed leaving a
fresh store free to take another name, the destination named for it, the directories, and
one daemon per store."""

from __future__ import annotations

import os
import time

import pytest
from prometheus_client import REGISTRY

from streamer import checkpoint, config, logs, naming, preflight
from streamer.supervisor import startup
from streamer.supervisor.context import SupervisorContext
from streamer.watcher import Watcher

MiB = 1024 * 1024


def context(tmp_path, instance: str = "") -> SupervisorContext:
    """What a daemon starting with `instance` configured works with."""
    settings = config.Config(
        instance=instance,
        watch=config.WatchConfig(directory=str(tmp_path / "input")),
        checkpoint=config.CheckpointConfig(path=str(tmp_path / "checkpoint"), map_size=64 * MiB),
        s3=config.S3Config(bucket="cams", prefix="site"),
    )
    watcher = Watcher(settings.watch.directory, settings.watch.pattern, settings.watch.depth)
    return SupervisorContext(settings, time.monotonic, logs.EventLog("supervisor"), watcher)


def stored(ctx: SupervisorContext) -> tuple[str | None, str | None, list[str]]:
    """The store's instance name, its current start, and the starts whose claim is its own."""
    store = checkpoint.CheckpointStore(ctx.config.checkpoint.path, ctx.config.checkpoint.map_size)
    try:
        start, starts, _ = store.claim_starts()
        return store.instance(), start, starts
    finally:
        store.close()


def test_a_fresh_store_takes_the_host_s_name_and_every_later_start_keeps_it(tmp_path):
    first = context(tmp_path)
    assert startup.prepare_store(first) is True, "this start fixed the name"
    host = naming.host_instance()
    assert first.config.instance == host and first.store is None, "closed for the fork"
    instance, start, starts = stored(first)
    assert (instance, starts) == (host, [start])
    assert REGISTRY.get_sample_value("streamer_info", {"instance_name": host}) == 1

    again = context(tmp_path)
    assert startup.prepare_store(again) is False
    assert again.config.instance == host
    instance, second_start, starts = stored(again)
    assert instance == host and second_start != start
    assert starts == [start, second_start], "neither seen to hold the claim yet"


def test_a_configured_name_not_the_store_s_stops_the_start_before_it_begins(tmp_path):
    startup.prepare_store(context(tmp_path, "cam-a"))
    _, start, _ = stored(context(tmp_path))
    other = context(tmp_path, "cam-b")
    with pytest.raises(preflight.Unmet, match="belongs to instance 'cam-a'"):
        startup.prepare_store(other)
    assert other.store is None and other.config.instance == "cam-b"
    assert stored(other)[:2] == ("cam-a", start), "no start begun"


def test_a_first_start_that_failed_frees_the_name_unless_an_uploader_held_the_claim(tmp_path):
    failed = context(tmp_path, "cam-a")
    startup.prepare_store(failed)
    startup.release_instance(failed)
    assert stored(failed)[0] is None and failed.store is None
    retried = context(tmp_path, "cam-b")
    assert startup.prepare_store(retried) is True, "the name was the mistake: another one"
    assert stored(retried)[0] == "cam-b"

    retried.open_store()
    start, _, _ = retried.store.claim_starts()
    retried.store.confirm_claim(start)  # an uploader held the claim in S3 under it
    startup.release_instance(retried)
    assert retried.store is not None, "left open as it was found"
    retried.close_store()
    assert stored(retried)[0] == "cam-b"


def test_the_destination_is_under_the_store_s_name_once_it_has_one(tmp_path):
    ctx = context(tmp_path)
    os.makedirs(ctx.config.checkpoint.path)
    host = naming.host_instance()
    assert startup.destination(ctx.config) == f"s3://cams/site/{host}/"
    configured = context(tmp_path, "cam-a").config
    assert startup.destination(configured) == "s3://cams/site/cam-a/", "before any start"
    startup.prepare_store(context(tmp_path, "cam-a"))
    assert startup.destination(ctx.config) == "s3://cams/site/cam-a/", "not the host's name"


def test_the_checkpoint_directory_is_made_and_a_missing_watch_directory_stops_the_start(
    tmp_path,
):
    ctx = context(tmp_path)
    with pytest.raises(preflight.Unmet, match="is not a directory"):
        startup.check_directories(ctx.config)
    os.mkdir(ctx.config.watch.directory)
    startup.check_directories(ctx.config)
    assert os.path.isdir(ctx.config.checkpoint.path)


def test_a_second_daemon_on_the_same_store_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "LOCK_WAIT", 0.0)  # the first one is not about to exit
    ctx = context(tmp_path)
    os.makedirs(ctx.config.checkpoint.path)
    held = startup.lock_store(ctx.config)
    try:
        with pytest.raises(preflight.Unmet, match=f"pid {os.getpid()}") as refused:
            startup.lock_store(ctx.config)
        assert refused.value.hint == preflight.STORE_HELD_HINT
    finally:
        os.close(held)
    os.close(startup.lock_store(ctx.config))
