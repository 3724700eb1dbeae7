"""Log lines: logfmt for terminals, one line per event whatever the values hold, saying
what the JSON lines say."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from conftest import parse_logfmt

from streamer.logs import JsonFormatter, TextFormatter


def record(event: str, **fields) -> logging.LogRecord:
    line = logging.LogRecord("streamer.uploader.0", logging.WARNING, "", 0, event, None, None)
    line.fields = fields
    return line


def test_text_lines_are_logfmt_and_say_what_the_json_lines_say():
    fields = {
        "stream_id": "cam1-20261130T082940Z",
        "error": 'S3Error: code "AccessDenied"\nmessage=no',
        "attempt": 3,
        "delay": 0.25,
        "hint": "",
        "path": "/in/with space.mp4",
        "config": {"s3": {"bucket": "b"}, "workers": 2},
        "committed": None,
        "ok": False,
        "name": "cam\u2028one\x85two\u2029.mp4",
        "where": Path("/in/a b.mp4"),
        "odd": {(1, 2): "tuple key"},
    }
    text = TextFormatter().format(record("upload_retry", **fields))
    assert len(text.splitlines()) == 1
    parsed = parse_logfmt(text)
    assert text.startswith("ts=") and (parsed["level"], parsed["event"]) == (
        "warning",
        "upload_retry",
    )
    assert parsed["role"] == "uploader.0"
    assert parsed["error"] == fields["error"] and parsed["path"] == fields["path"]
    assert (parsed["attempt"], parsed["delay"], parsed["ok"]) == ("3", "0.25", "false")
    assert "hint" not in parsed and "committed" not in parsed, "no field with nothing in it"
    assert json.loads(parsed["config"]) == fields["config"], "structures as JSON, not Python"
    assert parsed["name"] == fields["name"] and parsed["where"] == "/in/a b.mp4"
    assert parsed["odd"] == "{(1, 2): 'tuple key'}"
    del fields["where"], fields["odd"]
    as_json = json.loads(JsonFormatter().format(record("upload_retry", **fields)))
    assert as_json["error"] == parsed["error"] and as_json["config"] == fields["config"]
    assert (as_json["hint"], as_json["committed"]) == ("", None), "JSON keeps every field"
