"""The dashboard and the alerts against a real Prometheus scraping a real daemon: every
panel's query, with the dashboard's variables resolved as Grafana resolves them, returns
data, and every alert rule is valid and watches series that exist. A panel that shows
nothing, or an alert that can never fire, fails here."""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, wait_until
from harness import AT_LEAST_ONE, port_of
from recordings import record

from integration.daemons import FAST_RETRIES
from integration.servers import MinioUser, binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "streamer.json"
PROMETHEUS_CONFIG = ROOT / "ops" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
# Longer than what Grafana makes of $__rate_interval for its default 15 s scrape (1m): a
# rate of the uploads must still see them on a loaded machine, where the panels are
# asked a minute or more after the traffic.
RATE_INTERVAL = "10m"
# What Grafana escapes in a value of a multi-value variable put into a PromQL regex.
REGEX_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|\\]")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")
THRESHOLD = re.compile(r"^(.+?)\s*(?:==|!=|>=|<=|>|<)\s*[\d.]+$", re.S)


class Prometheus:
    """A Prometheus server process and its HTTP API."""

    def __init__(self, config: Path, data: Path):
        self.port = free_port()
        self.log = data.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    binary("PROMETHEUS_BIN", "prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.ready, 60, interval=0.5, what="Prometheus to be ready")
        # Its first scrape comes a few seconds later: what happens before it, no rate sees.
        wait_until(lambda: self.query("up == 1"), 60, interval=0.5, what="a first scrape")

    def ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> object:
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def scraping(daemon, directory: Path) -> Path:
    """ops/prometheus/prometheus.yml, aimed at the test daemon, scraping and evaluating
    every second, with ops/prometheus/alerts.yml."""
    text = PROMETHEUS_CONFIG.read_text()
    for shipped, here in (
        ('["streamer:9108"]', f'["127.0.0.1:{port_of(daemon)}"]'),
        ("/etc/prometheus/alerts.yml", str(ALERTS)),
        ("scrape_interval: 10s", "scrape_interval: 1s"),
        ("evaluation_interval: 10s", "evaluation_interval: 1s"),
    ):
        assert text.count(shipped) == 1, f"{shipped} not once in {PROMETHEUS_CONFIG}"
        text = text.replace(shipped, here)
    config = directory / "prometheus.yml"
    config.write_text(text)
    return config


def grafana_regex(values: list[str]) -> str:
    """A multi-value variable's values as Grafana puts them into a PromQL regex."""
    escaped = [REGEX_SPECIAL.sub(lambda m: "\\\\" + m[0], v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${name}", variables[name])
    assert "$" not in expr, f"a variable the dashboard does not define: {expr}"
    return expr


def resolve_variables(dashboard: dict, prometheus: Prometheus) -> dict[str, list[str]]:
    """Each query variable's options, in order, as Grafana asks Prometheus for them (a
    variable set to All stands for all of its options); the data source variable is
    Grafana's own."""
    options: dict[str, list[str]] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "datasource":
            continue
        assert variable["type"] == "query" and variable["current"]["value"] == "$__all"
        selector, label = LABEL_VALUES.match(variable["query"]).groups()
        if not all(options.values()):
            options[variable["name"]] = []  # a variable it depends on has no options yet
            continue
        match = substitute(selector, {name: grafana_regex(v) for name, v in options.items()})
        now = time.time()
        found = prometheus.api(
            f"label/{label}/values", **{"match[]": match, "start": now - 3600, "end": now}
        )
        options[variable["name"]] = found
    return options


def has_data(result: list[dict]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def settle(missing, what: str) -> None:
    """Wait for `missing()` to name nothing (Prometheus has scraped enough); if it still
    names something, fail with what."""
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not missing(), 60, interval=1, what=what)
    left = missing()
    assert not left, f"still waiting for {what}: {', '.join(left)}"


@pytest.fixture
def prometheus(tmp_path):
    servers: list[Prometheus] = []

    def start(daemon) -> Prometheus:
        server = Prometheus(scraping(daemon, tmp_path), tmp_path / "prometheus")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def watched(make_daemon, minio, bucket, ffmpeg, prometheus, tmp_path):
    """A daemon that Prometheus scrapes while it does a bit of everything the panels
    show: a recording uploaded, finished and deleted by retention (with a free-space
    threshold set), another parked by a refusal from S3. Returns both."""
    user = MinioUser(minio, bucket, tmp_path)
    keys = {"access_key": user.access_key, "secret_key": user.secret_key}
    daemon = make_daemon(
        s3={**keys, **FAST_RETRIES},
        retention={"delete_after_upload": True, "min_age": 0, "min_free_bytes": 1},
    ).start()
    server = prometheus(daemon)
    user.refuse_puts("rec/test-host/refused-*/metadata.json")
    daemon.expect(s3_rejected=AT_LEAST_ONE)
    for name in ("refused", "done"):
        made = tmp_path / f"{name}.mp4"
        assert record(ffmpeg, made, 2, "plain", live=False).wait(60) == 0
        made.rename(daemon.watch / made.name)
    daemon.wait_for("source_deleted", path=str(daemon.watch / "done.mp4"), timeout=60)
    daemon.wait_for("s3_rejected", timeout=60)
    return daemon, server


def test_every_panel_shows_data_from_a_real_prometheus(watched):
    daemon, server = watched
    dashboard = json.loads(DASHBOARD.read_text())

    def resolved() -> dict[str, list[str]] | None:
        options = resolve_variables(dashboard, server)
        return options if all(options.values()) else None

    options = wait_until(resolved, 30, interval=0.5, what="every variable to have options")
    assert options["instance"] == ["test-host"], "streamer's instance name, not an address"
    assert options["target"] == [f"127.0.0.1:{port_of(daemon)}"]
    variables = {name: grafana_regex(values) for name, values in options.items()}
    variables["__rate_interval"] = RATE_INTERVAL
    queries = {
        f"{panel['title']} ({target['legendFormat']})": substitute(target["expr"], variables)
        for panel in dashboard["panels"]
        for target in panel["targets"]
    }

    def empty() -> list[str]:
        return [name for name, expr in queries.items() if not has_data(server.query(expr))]

    settle(empty, "every panel to show data")


def test_the_alerts_are_valid_and_watch_series_that_exist(watched):
    _, server = watched
    checked = subprocess.run(
        [binary("PROMTOOL_BIN", "promtool"), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    def rules() -> list[dict]:
        groups = server.api("rules", type="alert")["groups"]
        found = [rule for group in groups for rule in group["rules"]]
        evaluated = all(not r["lastEvaluation"].startswith("0001-") for r in found)
        return found if found and evaluated else []

    evaluated = wait_until(rules, 30, interval=0.5, what="every alert rule to be evaluated")
    assert [
        (r["name"], r["health"], r.get("lastError")) for r in evaluated if r["health"] != "ok"
    ] == []
    assert len(evaluated) == len(re.findall(r"^\s+- alert: ", ALERTS.read_text(), re.M))
    # Each alert fires on a threshold over a series; the series must be there to be watched.
    watched = {r["name"]: THRESHOLD.match(r["query"]).group(1) for r in evaluated}

    def unwatched() -> list[str]:
        return [name for name, expr in watched.items() if not has_data(server.query(expr))]

    settle(unwatched, "every alert to watch a series")
