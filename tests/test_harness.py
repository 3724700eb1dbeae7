"""The suite's own safety net: a daemon's log is read so that a traceback or an undeclared
failure cannot pass unseen."""

from conftest import parse_log_line, unexpected_trouble


def test_a_traceback_or_an_undeclared_failure_is_trouble():
    lines = [
        b'{"event": "chunk_uploaded", "index": 0}',
        b"Traceback (most recent call last):",
        b"ts=2026-11-30T02:27:56.371+00:00 level=error event=s3_rejected error=AccessDenied",
        b"ts=2026-11-30T02:27:57.000+00:00 level=info event=stopped role=supervisor pid=7",
        b'{"event": "uploader_died", "exit_code": -9}',
        b'{"event": "stream_failed", "error": "RuntimeError: a bug"}',
    ]
    events = [parse_log_line(line) for line in lines]
    assert [e["event"] for e in events] == [
        "chunk_uploaded",
        "unparsed",
        "s3_rejected",
        "stopped",
        "uploader_died",
        "stream_failed",
    ]
    trouble = unexpected_trouble(events, set())
    assert [e["event"] for e in trouble] == ["unparsed", "uploader_died", "stream_failed"]
    declared = unexpected_trouble(events, {"uploader_died", "stream_failed"})
    assert [e["event"] for e in declared] == ["unparsed"]
