"""Every gauge tells the truth from the first scrape: set at start, as /readyz says, and
absent (not 0) where its feature is off."""

from __future__ import annotations

import os
import urllib.request

import pytest
from conftest import free_port
from harness import get_json, port_of
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

STATES = ("streaming", "finishing", "abandoning", "parked", "stuck")
FEATURES = ("streamer_retention_blind", "streamer_disk_free_bytes", "streamer_disk_pressure")


def gauges(daemon) -> dict[str, float]:
    """The first scrape's gauges, by sample name (with its labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port_of(daemon)}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        if family.type == "gauge":
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


def test_a_fresh_daemon_s_gauges_agree_with_readyz(make_daemon):
    daemon = make_daemon().start()
    first, (_, ready) = gauges(daemon), get_json(daemon, "/readyz")
    checks = ready["checks"]
    assert first["streamer_s3_reachable"] == (1 if checks["s3"]["ok"] else 0)
    assert first["streamer_checkpoint_writable"] == 1 == checks["checkpoint"]["ok"]
    for state in STATES:
        assert first[f"streamer_streams{{state={state}}}"] == 0
    assert not [name for name in first if name.startswith(FEATURES)], "retention is off"
    told = {f"streamer_streams{{state={state}}}" for state in STATES} | {
        "streamer_s3_reachable",
        "streamer_checkpoint_writable",
        "streamer_delivery_bytes_on_disk",
        "streamer_delivery_bytes_uploaded",
        "streamer_delivery_bytes_committed",
        "streamer_delivery_oldest_uncommitted_age_seconds",
        "streamer_seconds_since_last_upload",
        "streamer_info{instance_name=test-host}",
    }
    assert set(first) == told, "a gauge this test does not check"
    assert first["streamer_info{instance_name=test-host}"] == 1
    assert first["streamer_delivery_bytes_on_disk"] == 0
    assert 0 <= first["streamer_seconds_since_last_upload"] < 30


def test_s3_unreachable_reads_0_from_the_first_scrape(make_daemon):
    dead = f"127.0.0.1:{free_port()}"
    daemon = make_daemon(s3={"endpoint": dead, "connect_timeout": 1}).start()
    status, ready = get_json(daemon, "/readyz")
    assert status == 503 and not ready["checks"]["s3"]["ok"]
    assert gauges(daemon)["streamer_s3_reachable"] == 0
    assert gauges(daemon)["streamer_checkpoint_writable"] == 1


def test_retention_s_gauges_are_there_from_the_first_scrape_when_it_is_on(make_daemon):
    daemon = make_daemon(retention={"min_free_percent": 1}).start()
    first = gauges(daemon)
    st = os.statvfs(daemon.watch)
    assert first["streamer_disk_free_bytes"] == pytest.approx(st.f_bavail * st.f_frsize, rel=0.05)
    assert first["streamer_disk_pressure"] == 0
    assert first["streamer_retention_blind"] == 0  # root takes a lease on any file
