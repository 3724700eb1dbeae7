"""The monitoring material in ops/ asks only for series streamer exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

import streamer
from streamer import metrics
from streamer.childproc import EXIT_BOOT_ERROR, EXIT_CONFIG
from streamer.config import Config

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "ops"
DASHBOARD = OPS / "grafana" / "dashboards" / "streamer.json"


def exported_series() -> set[str]:
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
        elif isinstance(metric, metrics.FeatureGauge):
            names.add(metric.name)
    return names


def asked_series() -> dict[str, set[str]]:
    files = [*OPS.rglob("*.yml"), *OPS.rglob("*.json")]
    return {
        str(f.relative_to(ROOT)): set(re.findall(r"\bstreamer_[a-z0-9_]+", f.read_text()))
        for f in files
    }


def test_dashboard_and_alerts_ask_only_for_exported_series():
    exported = exported_series()
    asked = asked_series()
    assert asked[str(DASHBOARD.relative_to(ROOT))], "the dashboard queries nothing"
    unknown = {f: names - exported for f, names in asked.items() if names - exported}
    assert not unknown


def test_dashboard_shows_what_an_operator_asks_first():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for series in (
        "streamer_bytes_uploaded_total",
        "streamer_delivery_bytes_committed",
        "streamer_delivery_oldest_uncommitted_age_seconds",
        "streamer_upload_errors_total",
        "streamer_streams",
        "streamer_streams_finished_total",
    ):
        assert re.search(rf"\b{series}\b", queries), series


def test_the_dashboard_opens_on_a_row_that_answers_at_a_glance():
    """Up, checkpoint writable, S3 reachable, bytes behind, the oldest byte waiting,
    parked and stuck streams: stat panels across the top, the time series below."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    top = [p for p in panels if p["gridPos"]["y"] == 0]
    assert {p["type"] for p in top} == {"stat"}
    assert sum(p["gridPos"]["w"] for p in top) == 24
    asked = [" ".join(t["expr"] for t in p["targets"]) for p in top]
    for wanted in (
        r"\bup\{",
        r"\bstreamer_checkpoint_writable\b",
        r"\bstreamer_s3_reachable\b",
        r"streamer_delivery_bytes_on_disk\{[^}]*\} - streamer_delivery_bytes_committed\b",
        r"\bstreamer_delivery_oldest_uncommitted_age_seconds\b",
        r'\bstreamer_streams\{[^}]*state="parked"',
        r'\bstreamer_streams\{[^}]*state="stuck"',
    ):
        assert sum(bool(re.search(wanted, a)) for a in asked) == 1, wanted
    below = [p for p in panels if p["gridPos"]["y"] > 0]
    assert below and {p["type"] for p in below} == {"timeseries"}
    assert all(p["gridPos"]["y"] >= 4 for p in below)
    # One unit a panel: none set again for some of its series.
    assert all(p["fieldConfig"]["overrides"] == [] for p in panels)


def test_the_dashboard_asks_for_its_data_source_and_the_compose_stack_provides_one():
    """Imported, Grafana asks which Prometheus (`__inputs`); provisioned, the data source
    variable takes the default Prometheus, which the compose stack provisions."""
    dashboard = json.loads(DASHBOARD.read_text())
    [asked] = dashboard["__inputs"]
    assert (asked["name"], asked["type"], asked["pluginId"]) == (
        "DS_PROMETHEUS", "datasource", "prometheus",
    )  # fmt: skip
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    used = [
        *(p["datasource"] for p in dashboard["panels"]),
        *(t["datasource"] for p in dashboard["panels"] for t in p["targets"]),
        *(v["datasource"] for v in variables.values() if v["type"] == "query"),
    ]
    assert all(d == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for d in used)
    provisioned = (OPS / "grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "type: prometheus" in provisioned and "isDefault: true" in provisioned


def test_the_dashboard_picks_hosts_by_streamer_s_instance_name():
    """Prometheus's `instance` label is the address it scrapes; streamer's instance name
    is streamer_info's `instance_name`, and the panels select the addresses it is at."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["instance"]["query"] == "label_values(streamer_info, instance_name)"
    assert variables["instance"]["label"] == "instance"
    assert variables["target"]["query"] == (
        'label_values(streamer_info{instance_name=~"$instance"}, instance)'
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    selectors = re.findall(r"\b(?:streamer_[a-z_]+|up)\{([^}]*)\}", " ".join(exprs))
    assert selectors and all('instance=~"$target"' in s for s in selectors)


def test_stuck_streams_and_stalled_uploaders_are_shown_and_alerted():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert any('state="stuck"' in q and "streamer_streams" in q for q in queries)
    assert any("streamer_uploader_stalls_total" in q for q in queries)
    alerts = (OPS / "prometheus" / "alerts.yml").read_text()
    assert 'expr: streamer_streams{state="stuck"} > 0' in alerts
    assert "expr: increase(streamer_uploader_stalls_total[15m]) > 0" in alerts


def test_compose_mounts_only_files_that_exist():
    compose = (ROOT / "docker-compose.yml").read_text()
    mounted = re.findall(r"- (\./ops/[\w/.-]+):", compose)
    assert mounted
    assert all((ROOT / path).exists() for path in mounted), mounted


def test_compose_secrets_are_files_that_exist_and_no_password_is_an_environment_variable():
    compose = (ROOT / "docker-compose.yml").read_text()
    defaults = re.findall(r"file: \$\{\w+_FILE:-(\./ops/secrets/[\w.]+)\}", compose)
    assert len(defaults) == 2 and all((ROOT / path).exists() for path in defaults)
    assert not re.search(r"^\s+\w*(PASSWORD|SECRET)\w*: (?!/run/secrets/)", compose, re.M)


def test_compose_publishes_ports_on_loopback_unless_told_otherwise():
    compose = (ROOT / "docker-compose.yml").read_text()
    published = re.findall(r'^\s+- "([^"]+):(\d+)"$', compose, re.M)
    assert len(published) == 6
    assert all(host.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:") for host, _ in published)


def test_the_image_is_labelled_with_the_package_s_version():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG VERSION={streamer.__version__}\n" in dockerfile
    labels = set(re.findall(r"org\.opencontainers\.image\.(\w+)=", dockerfile))
    assert {"version", "source", "licenses", "title"} <= labels
    assert 'CMD ["streamer", "health"]' in dockerfile


def test_the_systemd_unit_runs_it_confined_stops_it_gracefully_and_restarts_only_crashes():
    unit = {}
    for line in (OPS / "systemd" / "streamer.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            unit.setdefault(key, []).append(value)
    assert unit["ExecStart"][0].endswith("/streamer run")
    assert unit["User"] == ["streamer"] and unit["StateDirectory"] == ["streamer"]
    assert "STREAMER_CHECKPOINT_PATH=/var/lib/streamer" in unit["Environment"]
    assert unit["ProtectSystem"] == ["strict"] and unit["ReadWritePaths"]
    assert float(unit["TimeoutStopSec"][0]) > Config().grace_period
    assert unit["Restart"] == ["on-failure"]
    prevented = {int(code) for code in unit["RestartPreventExitStatus"][0].split()}
    assert prevented == {EXIT_CONFIG, EXIT_BOOT_ERROR}
    assert unit["AmbientCapabilities"] == ["CAP_LEASE"]
