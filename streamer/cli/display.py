"""How the admin commands show values to people: sizes, rates, times, tables, bars. (With
`--json` they print raw numbers instead.)"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import click

UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def size(n: int | None) -> str:
    """1536 -> '1.5 KiB'; bytes below one KiB as they are."""
    if n is None:
        return "-"
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    for unit in UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def counted(n: int, thing: str) -> str:
    """'1 chunk', '4 chunks': a number of things, in the number they are."""
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def rate(bytes_per_second: float | None) -> str:
    return "-" if bytes_per_second is None else f"{size(round(bytes_per_second))}/s"


def seconds(value: float | None) -> str:
    """A span of time, to the unit that matters: '45 s', '3 min 5 s', '2 h 10 min'."""
    if value is None:
        return "-"
    value = round(value)
    if value < 60:
        return f"{value} s"
    if value < 3600:
        return f"{value // 60} min {value % 60} s"
    if value < 86400:
        return f"{value // 3600} h {value % 3600 // 60} min"
    return f"{value // 86400} d {value % 86400 // 3600} h"


def timestamp(at: datetime | None) -> str:
    """RFC 3339, in UTC, to the second."""
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    return f"{seconds(max(0.0, (now - at).total_seconds()))} ago"


def value(v) -> str:
    """Any recorded value, as a person reads it: never a Python repr."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, datetime):
        return timestamp(v)
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Aligned columns; `right` holds the positions of right-aligned (numeric) columns. The
    last column is padded only if it is one of them."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i in right else (c if i == len(cells) - 1 else c.ljust(w))
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def bar(done: int, total: int | None, width: int = 24) -> str:
    filled = width if not total else min(width, width * done // total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


class _NoBar:
    def update(self, done: int) -> None:
        pass


@contextlib.contextmanager
def progress(total: int, label: str, shown: bool) -> Iterator:
    """A progress bar on stderr, when `shown` and stderr is a terminal; `update(n)` adds n."""
    if not (shown and sys.stderr.isatty()):
        yield _NoBar()
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar
