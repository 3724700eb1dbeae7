"""How the admin commands show values to people, and complete in a shell."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from streamer.cli import display


def test_sizes_rates_and_spans_read_as_people_say_them():
    assert [display.size(n) for n in (0, 1023, 1536, 10 * 1024**2, 3 * 1024**4)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "10.0 MiB",
        "3.0 TiB",
    ]
    assert (display.size(None), display.rate(None)) == ("-", "-")
    assert display.rate(12.6 * 1024**2) == "12.6 MiB/s"
    assert [display.seconds(s) for s in (4.4, 185, 7800, 200000)] == [
        "4 s",
        "3 min 5 s",
        "2 h 10 min",
        "2 d 7 h",
    ]


def test_times_are_rfc_3339_or_relative_and_values_never_python_reprs():
    now = datetime(2026, 11, 30, 8, 30, tzinfo=UTC)
    assert display.timestamp(now) == "2026-11-30T08:30:00Z"
    assert display.ago(now - timedelta(seconds=125), now) == "2 min 5 s ago"
    assert [display.value(v) for v in (None, True, False, now, 3)] == [
        "-",
        "yes",
        "no",
        "2026-11-30T08:30:00Z",
        "3",
    ]


def test_table_columns_line_up_whatever_their_width():
    lines = display.table(
        ("NAME", "SIZE", "FILE"), [("a", "1 B", "/x"), ("longer", "10.0 MiB", "/y z")], right={1}
    )
    assert lines == [
        "NAME        SIZE  FILE",
        "a            1 B  /x",
        "longer  10.0 MiB  /y z",
    ]
    last = display.table(("NAME", "SIZE"), [("a", "1 B"), ("b", "10.0 MiB")], right={1})
    assert last == ["NAME      SIZE", "a          1 B", "b     10.0 MiB"]
    assert display.bar(5, 10, width=10) == "[#####.....]"
    assert display.bar(0, 0, width=4) == "[####]"


def test_the_installed_command_completes_its_subcommands_in_a_shell():
    command = Path(sys.executable).parent / "streamer"
    env = {"COMP_WORDS": "streamer st", "COMP_CWORD": "1", "_STREAMER_COMPLETE": "bash_complete"}
    done = subprocess.run([command], env=env, capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["plain,status", "plain,streams"]
    source = subprocess.run(
        [command], env={"_STREAMER_COMPLETE": "zsh_source"}, capture_output=True, text=True
    )
    assert "compdef _streamer_completion streamer" in source.stdout
