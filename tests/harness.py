"""The harness for the streamer daemon as a real process: `Daemon` starts `streamer run`,
parses its log as it grows and, when the test ends, fails on trouble the test did not
declare with `expect`; with the admin commands against its configuration (`cli`) and its
metrics and health endpoints. It needs no S3 server (tests/test_harness.py checks it with a
stand-in); `make_daemon` (tests/integration/daemons.py) starts daemons on the test's own."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import clean_env, wait_until
from prometheus_client.parser import text_string_to_metric_families

# Events that mean something went wrong: any event logged at level error, and these
# whatever their level: a line that is not a log event (a traceback), a stream or a
# process that failed. A test that provokes one on purpose declares it, and how many times,
# with `daemon.expect(...)`; any other one fails the test when its daemon is checked.
TROUBLE = ("unparsed", "stream_failed", "supervisor_crashed", "uploader_died", "halting")


def is_trouble(event: dict) -> bool:
    return event.get("level") == "error" or event.get("event") in TROUBLE


def at_least(n: int) -> range:
    """A count for `Daemon.expect` where the test cannot know how many there will be (a
    refused request is logged again at every retry): n or more."""
    return range(n, sys.maxsize)


AT_LEAST_ONE = at_least(1)


def counted(times: int | range) -> range:
    return range(times, times + 1) if isinstance(times, int) else times


def said(times: range) -> str:
    if times.stop >= sys.maxsize:
        return f"at least {times.start}"
    if len(times) == 1:
        return f"exactly {times.start}" if times.start else "none"
    return f"{times.start} to {times.stop - 1}"


def miscounted(events: list[dict], declared: dict[str, range]) -> list[str]:
    """What is wrong in one run's events: trouble not declared, or declared trouble seen
    more or fewer times than declared (one that does not happen was not provoked)."""
    seen: dict[str, list[dict]] = {}
    for event in events:
        if is_trouble(event):
            seen.setdefault(event["event"], []).append(event)
    problems = []
    for name in [*seen, *(name for name in declared if name not in seen)]:
        found, times = seen.get(name, []), declared.get(name, range(1))
        if len(found) not in times:
            shown = 30 if name == "unparsed" else 3  # a traceback's lines, else examples
            problems.append(
                f"{name}: {len(found)} logged, {said(times)} declared"
                + "".join(f"\n    {json.dumps(e)[:1500]}" for e in found[:shown])
            )
    return problems


# What `run --once` prints at the end.
SUMMARY = re.compile(r"^\d+ of \d+ streams finished")


# log.format=text, logfmt: "ts=<ts> level=<level> event=<event> key=value ...".
TEXT_LINE = re.compile(rb"^ts=\S+ level=(debug|info|warning|error) event=([a-z0-9_]+)(?: |$)")


def parse_log_line(line: bytes) -> dict:
    """One line of the daemon's log as an event; any other line (a traceback, say) is an
    `unparsed` event, which fails the test unless it declared it."""
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("event"), str):
        return event
    if text := TEXT_LINE.match(line):
        return {"event": text[2].decode(), "level": text[1].decode(), "text": line.decode()}
    return {"event": "unparsed", "line": line.decode(errors="replace")}


@dataclass(eq=False)
class Declared:
    """The trouble a test provokes in one run on purpose (event -> how many times), and
    the exit codes, besides 0, it may end with."""

    events: dict[str, range] = field(default_factory=dict)
    exit_codes: set[int] = field(default_factory=set)

    def add(self, event: str, times: int | range) -> None:
        times, before = counted(times), self.events.get(event, range(0, 1))
        self.events[event] = range(before.start + times.start, before.stop + times.stop - 1)

    def __bool__(self) -> bool:
        return bool(self.events or self.exit_codes)

    def __str__(self) -> str:
        said_of = [f"{event} {said(times)}" for event, times in self.events.items()]
        return ", ".join(said_of + [f"exit code {code}" for code in sorted(self.exit_codes)])


@dataclass(eq=False)
class Run:
    """One start of the daemon: its process, where its log lines begin, what the test
    declared for it, and whether the test killed it on purpose."""

    process: subprocess.Popen
    first_event: int
    first_output: int = 0  # where what it prints on stdout begins in output_path
    declared: Declared = field(default_factory=Declared)
    killed: bool = False

    @property
    def once(self) -> bool:
        return "--once" in self.process.args


class Log:
    """A log file, parsed as it grows, and the runs that wrote it, in the order they were
    started: daemons on the same home (a restart) share one, and a run's events end where
    the next run's begin, whichever daemon started it."""

    def __init__(self, path: Path):
        self.path = path
        self.events: list[dict] = []
        self.runs: list[Run] = []
        self._offset = 0

    def read(self) -> list[dict]:
        if not self.path.exists():  # never started
            return self.events
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        self.events += [parse_log_line(line) for line in complete.splitlines()]
        return self.events

    def after(self, run: Run) -> Run | None:
        later = self.runs[self.runs.index(run) + 1 :]
        return later[0] if later else None

    def events_of(self, run: Run) -> list[dict]:
        following = self.after(run)
        return self.read()[run.first_event : following.first_event if following else None]


_LOGS: weakref.WeakValueDictionary[Path, Log] = weakref.WeakValueDictionary()


class Daemon:
    """`streamer run` as a real process, with its JSON log lines parsed as they come.
    Every start is awaited (this run's own `started` line, after its first scan), and at
    the end `check()` fails the test on trouble it did not declare or a wrong exit code.

    Trouble is any event logged at level error, and the `TROUBLE` events whatever their
    level (a line that is not a log event, such as a traceback, among them). A test that
    provokes it on purpose declares it, for one run, with how many times:

        daemon.expect("uploader_died")          # exactly once
        daemon.expect("uploader_died", "halting", exit_codes=(1,))
        daemon.expect(uploader_died=2)          # exactly twice
        daemon.expect(s3_rejected=AT_LEAST_ONE) # once or more: a refused request is
                                                # logged again at every retry
        daemon.expect(s3_rejected=at_least(2), chunks_kept=range(1, 3))

    A count is an int (exactly) or a range (`at_least(n)`, or any range of counts): a range
    only where the count depends on timing, `at_least(0)` for a consequence of what the
    test does that its timing may or may not bring about. Declarations add up. They apply
    to the run going when they are made, else to the next one started; `run=n` names a run
    already started (`run=-1`: the last). Each run's events are checked against that run's
    declarations: undeclared trouble fails, and so does declared trouble seen more or fewer
    times than declared. A run ends with 0, or an exit code declared for it, unless the
    test killed it."""

    def __init__(self, config_path: Path, log_path: Path, env: dict | None = None, wrapper=()):
        self.config_path = config_path
        self.wrapper = list(wrapper)
        self.log_path = log_path
        self.output_path = log_path.with_suffix(".out")
        self.env = clean_env(env)
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(config_path.parent / "metrics")
        self.runs: list[Run] = []
        self._log = _LOGS.setdefault(log_path, Log(log_path))
        self._next = Declared()  # for the next run started

    @property
    def process(self) -> subprocess.Popen | None:
        return self.runs[-1].process if self.runs else None

    def expect(
        self,
        *events: str,
        exit_codes: tuple[int, ...] = (),
        run: int | None = None,
        **times: int | range,
    ) -> Daemon:
        """Declare trouble this test provokes on purpose: see the class's docstring."""
        if run is not None:
            declared = self.runs[run].declared
        elif self.process is not None and self.process.poll() is None:
            declared = self.runs[-1].declared
        else:
            declared = self._next
        for event in events:
            declared.add(event, 1)
        for event, count in times.items():
            declared.add(event, count)
        declared.exit_codes.update(exit_codes)
        return self

    def start(self, wait: bool = True, timeout: float = 30, args=()) -> Daemon:
        """`args` go to `streamer run` (`--once`); what it prints on stdout, beside the
        log on stderr, is in `output_path`."""
        assert self.process is None or self.process.poll() is not None, "already running"
        first_event = len(self.read_events())
        first_output = self.output_path.stat().st_size if self.output_path.exists() else 0
        with open(self.log_path, "ab") as log, open(self.output_path, "ab") as output:
            process = subprocess.Popen(
                [
                    *self.wrapper,
                    sys.executable,
                    "-m",
                    "streamer",
                    "run",
                    "--config",
                    str(self.config_path),
                    *args,
                ],
                env=self.env,
                stdout=output,
                stderr=log,
            )
        run, self._next = Run(process, first_event, first_output, self._next), Declared()
        self.runs.append(run)
        self._log.runs.append(run)
        if wait:
            self.wait_for("started", timeout, pid=process.pid, this_run=True)
        return self

    def read_events(self) -> list[dict]:
        return self._log.read()

    def find(self, event: str, this_run: bool = False, **fields) -> list[dict]:
        events = self.read_events()
        if this_run:
            events = events[self.runs[-1].first_event :]
        return [
            e
            for e in events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_for(
        self, event: str, timeout: float = 30, count: int = 1, this_run: bool = False, **fields
    ) -> list[dict]:
        def seen():
            found = self.find(event, this_run, **fields)
            if len(found) >= count:
                return found
            if self.process.poll() is not None:
                raise AssertionError(
                    f"streamer exited ({self.process.returncode}) before "
                    f"{event}; log:\n{self.log_path.read_text()[-4000:]}"
                )
            return None

        try:
            return wait_until(seen, timeout, what=f"{count} x {event} {fields}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the log's last lines:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 40) -> str:
        """What the daemon said last, each line cut short: why a wait timed out."""
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(line[:300] for line in text)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, on purpose: this run's exit code is not checked."""
        self.runs[-1].killed = True
        self.process.kill()
        self.process.wait()

    def uploader_pids(self) -> list[int]:
        return [e["pid"] for e in self.find("uploader_spawned")]

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self, run: int = -1) -> str:
        """What a run printed on stdout (only `run --once` prints: its summary)."""
        if not self.output_path.exists():
            return ""
        printed = self.output_path.read_bytes()
        following = self._log.after(self.runs[run])
        end = following.first_output if following else None
        return printed[self.runs[run].first_output : end].decode(errors="replace")

    def unexpected_output(self) -> list[str]:
        problems = []
        for n, run in enumerate(self.runs):
            lines = self.output(n).splitlines()
            if run.once and (run.killed or SUMMARY.match(lines[0] if lines else "")):
                lines = lines[1:]
            problems += [f"run {n} printed on stdout: {line[:300]}" for line in lines[:5]]
        return problems

    def check(self) -> None:
        """Stop it, then fail on trouble in a run's log other than what the test declared
        for that run, or an exit code it did not declare."""
        self.stop()
        problems = []
        for n, run in enumerate(self.runs):
            where = f"run {n} (pid {run.process.pid})"
            code = run.process.returncode
            if not run.killed and code != 0 and code not in run.declared.exit_codes:
                problems.append(f"{where} exited with {code}")
            events = self._log.events_of(run)
            problems += [f"{where}: {p}" for p in miscounted(events, run.declared.events)]
        if self._next:
            problems.append(f"declared for a run never started: {self._next}")
        problems += self.unexpected_output()
        if problems:
            pytest.fail(f"{self.log_path}:\n" + "\n".join(problems), pytrace=False)


def port_of(daemon) -> int:
    """The metrics port this run of the daemon bound (the tests configure port 0)."""
    return daemon.find("metrics_listening", this_run=True)[-1]["port"]


def get_json(daemon, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port_of(daemon)}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def scrape(daemon) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port_of(daemon)}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def cli(daemon, *args, stdin: str | None = None, env=None) -> subprocess.CompletedProcess:
    """An admin command against the daemon's configuration."""
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args, "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        env={**daemon.env, **(env or {})},
    )
