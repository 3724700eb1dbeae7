"""The README's lists say what the code does: every log event and every metric, both ways."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from streamer import metrics

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
LOG_METHODS = {"debug", "info", "warning", "error"}


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def logged_events() -> set[str]:
    """Event names the package logs: literals passed to `log.<level>(...)`, literals
    passed to a function that hands its `event` parameter on to one, literals assigned
    to a local `event`, and the values of a `*_EVENTS` mapping."""
    events: set[str] = set()
    trees = [ast.parse(path.read_text()) for path in (ROOT / "streamer").rglob("*.py")]
    forwarders = {}  # function name -> position of its `event` parameter, in any module
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                names = [a.arg for a in node.args.args]
                if "event" in names:
                    forwarders[node.name] = names.index("event") - (names[0] == "self")
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(
                getattr(target, "id", "") == "event" for target in node.targets
            ):
                events.update(
                    c.value
                    for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Dict)
                and any(getattr(t, "id", "").endswith("_EVENTS") for t in node.targets)
            ):
                events.update(
                    v.value
                    for v in node.value.values
                    if isinstance(v, ast.Constant) and isinstance(v.value, str)
                )
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr in LOG_METHODS and _is_log(node.func.value):
                position = 0
            elif node.func.attr in forwarders:
                position = forwarders[node.func.attr]
            else:
                continue
            if len(node.args) > position:
                argument = node.args[position]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    events.add(argument.value)
    return events


def _is_log(receiver: ast.expr) -> bool:
    name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
    return name == "log"


def test_the_event_finder_sees_direct_and_forwarded_events():
    found = logged_events()
    assert {"chunk_uploaded", "stream_finished", "started"} <= found
    assert {"part_copy_failed", "assembly_begin_failed"} <= found  # through copy_failed()
    assert {"s3_unreachable", "s3_rejected", "upload_retry"} <= found  # a `*_EVENTS` map


def test_every_logged_event_is_in_the_readme_and_every_listed_one_is_logged():
    listed = set(re.findall(r"`([a-z][a-z0-9_]*)`", section("Logs")))
    logged = logged_events()
    assert sorted(logged - listed) == [], "logged but not in the README's Logs list"
    # Fields and values the section names beside the events.
    fields = {"ts", "level", "event", "role", "pid", "stream_id", "supervisor", "uploaded"}
    missing = sorted(listed - logged - fields)
    assert missing == [], "in the README's Logs list but never logged"


def test_the_readme_metrics_table_is_the_code_s_metrics():
    table = re.findall(
        r"^\| `(streamer_[a-z0-9_]+)(?:\{([a-z_,]+)\})?` \| (\w+) \|",
        section("Metrics and health"),
        re.M,
    )
    documented = {
        name: (kind, tuple(labels.split(",")) if labels else ()) for name, labels, kind in table
    }
    defined = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            defined[name] = (value._type, tuple(value._labelnames))
    assert documented == defined
