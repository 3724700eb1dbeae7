"""Structured logs: one line per event, JSON by default, logfmt (`key=value`) for terminals."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

import msgspec

MAX_ERROR = 500  # characters of an error's text


def describe(exc: BaseException) -> str:
    """An error as one line of at most MAX_ERROR characters, for logs, /readyz and the
    events between processes (each of which must fit one pipe write): a proxy's error
    page or a long message is cut, saying how much."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) <= MAX_ERROR:
        return text
    return f"{text[:MAX_ERROR]}... ({len(text) - MAX_ERROR} more characters)"


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = _line(record)
        try:
            return msgspec.json.encode(line).decode()
        except (TypeError, UnicodeEncodeError):
            # A value msgspec cannot take, such as a file name that is not UTF-8.
            return json.dumps(line, default=repr)


EMPTY = (None, "")  # a field with nothing in it


class TextFormatter(logging.Formatter):
    """logfmt: `ts=… level=info event=chunk_uploaded role=uploader.0 stream_id=… index=3`,
    one line per event whatever the values hold. A field with nothing in it (no error, no
    hint) is left out: JSON keeps it."""

    def format(self, record: logging.LogRecord) -> str:
        line = _line(record)
        return " ".join(
            f"{key}={logfmt_value(value)}" for key, value in line.items() if value not in EMPTY
        )


def flat(settings: dict) -> dict:
    """Settings as one `section.key` field each, for a text line: `{"s3": {"bucket": "b"},
    "instance": ""}` -> `{"s3.bucket": "b", "instance": ""}`."""
    fields = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            fields.update({f"{key}.{k}": v for k, v in flat(value).items()})
        else:
            fields[key] = value
    return fields


def logfmt_value(value) -> str:
    """A value as logfmt writes it: bare when it can be, else double-quoted with JSON's
    escapes (so no line break of any kind stays in it); structures as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict | list | tuple):
        try:
            value = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError):  # keys JSON cannot take
            value = repr(value)
    elif not isinstance(value, str):
        value = str(value)
    if value and value.isprintable() and not any(c in value for c in ' ="\\'):
        return value
    return json.dumps(value, ensure_ascii=False).translate(LINE_BREAKS)


# Line breaks to str.splitlines() that JSON leaves as they are.
LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class EventLog:
    """`log.info("chunk_uploaded", stream_id=..., index=...)`: an event name and its fields."""

    def __init__(self, role: str):
        self._logger = logging.getLogger(f"streamer.{role}")

    def debug(self, event: str, **fields) -> None:
        self._logger.debug(event, extra={"fields": fields})

    def info(self, event: str, **fields) -> None:
        self._logger.info(event, extra={"fields": fields})

    def warning(self, event: str, **fields) -> None:
        self._logger.warning(event, extra={"fields": fields})

    def error(self, event: str, **fields) -> None:
        self._logger.error(event, extra={"fields": fields})


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("streamer")
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    root.propagate = False


def _line(record: logging.LogRecord) -> dict:
    """An event's fields, in the order both formats write them."""
    return {
        "ts": _timestamp(record),
        "level": record.levelname.lower(),
        "event": record.getMessage(),
        "role": record.name.removeprefix("streamer."),
        "pid": record.process,
        **getattr(record, "fields", {}),
    }


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
