"""The suite's own safety net: a daemon's log is read so that a traceback or an undeclared
failure cannot pass unseen, and a declared one happens as many times as declared, in the
run it was declared for.

The daemon here is a stand-in run through the real `Daemon`: a process that logs the lines
the test gives it, says `started`, and waits for SIGTERM (or exits with the code given)."""

import json
import sys

import pytest
from harness import AT_LEAST_ONE, Daemon, at_least, parse_log_line

STAND_IN = """
import json, os, pathlib, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
config = pathlib.Path(sys.argv[sys.argv.index("--config") + 1])
started = {"event": "started", "level": "info", "pid": os.getpid()}
sys.stderr.write(json.dumps(started) + "\\n" + config.with_name("to_log").read_text())
sys.stderr.flush()
code = config.with_name("exit_code")
sys.exit(int(code.read_text())) if code.exists() else signal.pause()
"""


class StandIn:
    """A `Daemon` whose runs log what the test says."""

    def __init__(self, home):
        self.home = home
        home.mkdir(exist_ok=True)
        self.daemon = Daemon(
            home / "config.json", home / "streamer.log", wrapper=[sys.executable, "-c", STAND_IN]
        )

    def run(self, *events: str | dict, exit_code: int | None = None) -> Daemon:
        """Start a run that logs `events` (a name: at level error), then waits, or exits
        with `exit_code`."""
        lines = [e if isinstance(e, dict) else {"event": e, "level": "error"} for e in events]
        (self.home / "to_log").write_text("".join(json.dumps(e) + "\n" for e in lines))
        (self.home / "exit_code").unlink(missing_ok=True)
        if exit_code is not None:
            (self.home / "exit_code").write_text(str(exit_code))
        return self.daemon.start(wait=exit_code is None)


@pytest.fixture
def make_stand_in(tmp_path):
    """Makes stand-ins, each in a directory of its own (or one shared: a restart), and
    stops what a failed test left running."""
    made = []

    def make(home: str = "") -> StandIn:
        made.append(StandIn(tmp_path / home))
        return made[-1]

    yield make
    for each in made:
        each.daemon.stop()


def fails(daemon: Daemon, *saying: str) -> str:
    """`check()` fails the test, saying all of `saying`: what it says."""
    with pytest.raises(pytest.fail.Exception) as failed:
        daemon.check()
    for words in saying:
        assert words in str(failed.value)
    return str(failed.value)


def test_a_traceback_a_line_at_level_error_or_a_failure_is_trouble(make_stand_in):
    lines = [
        b'{"event": "chunk_uploaded", "index": 0}',
        b"Traceback (most recent call last):",
        b"ts=2026-11-30T02:27:56.371+00:00 level=error event=s3_rejected error=AccessDenied",
        b"ts=2026-11-30T02:27:57.000+00:00 level=info event=stopped role=supervisor pid=7",
        b'{"event": "uploader_died", "level": "warning", "exit_code": -9}',
        b'{"event": "file_failed", "level": "error", "error": "PermissionError"}',
        b"12",
    ]
    events = [parse_log_line(line) for line in lines]
    assert [e["event"] for e in events] == [
        "chunk_uploaded",
        "unparsed",
        "s3_rejected",
        "stopped",
        "uploader_died",
        "file_failed",
        "unparsed",
    ]
    stand_in = make_stand_in()
    stand_in.run(*events)
    said = fails(
        stand_in.daemon,
        "unparsed: 2 logged",
        "s3_rejected: 1",
        "uploader_died: 1",
        "file_failed: 1",
    )
    assert "chunk_uploaded" not in said and "stopped" not in said


def test_an_undeclared_event_at_level_error_fails_and_a_declared_one_passes(make_stand_in):
    undeclared = make_stand_in("undeclared")
    undeclared.run("manifest_update_failed", {"event": "stream_finished", "level": "info"})
    fails(undeclared.daemon, "manifest_update_failed: 1 logged, none declared")

    declared = make_stand_in("declared")
    declared.daemon.expect("manifest_update_failed")
    declared.run("manifest_update_failed")
    declared.daemon.check()


def test_one_declared_uploader_died_does_not_cover_two(make_stand_in):
    stand_in = make_stand_in()
    stand_in.daemon.expect("uploader_died")
    stand_in.run("uploader_died", "uploader_died")
    fails(stand_in.daemon, "uploader_died: 2 logged, exactly 1 declared")


def test_a_declared_count_is_exact_and_too_few_fails(make_stand_in):
    too_few = make_stand_in("few")
    too_few.daemon.expect(uploader_died=2, halting=1)
    too_few.run("uploader_died", "halting")
    fails(too_few.daemon, "uploader_died: 1 logged, exactly 2 declared")

    never = make_stand_in("never")
    never.daemon.expect("halting", exit_codes=(1,))
    never.run()
    fails(never.daemon, "halting: 0 logged, exactly 1 declared")

    exact = make_stand_in("exact")
    exact.daemon.expect("uploader_died").expect("uploader_died", "halting")
    exact.run("uploader_died", "halting", "uploader_died")
    exact.daemon.check()


def test_at_least_takes_any_number_from_its_least(make_stand_in):
    many = make_stand_in("many")
    many.daemon.expect(s3_rejected=AT_LEAST_ONE)
    many.run(*["s3_rejected"] * 7)
    many.daemon.check()

    none = make_stand_in("none")
    none.daemon.expect(s3_rejected=at_least(1), upload_retry=range(0, 3))
    none.run()
    fails(none.daemon, "s3_rejected: 0 logged, at least 1 declared")


def test_a_declaration_is_for_one_run(make_stand_in):
    stand_in = make_stand_in()
    stand_in.daemon.expect("uploader_died")
    stand_in.run("uploader_died")
    stand_in.daemon.stop()
    stand_in.run("uploader_died")
    said = fails(stand_in.daemon, "run 1 (pid", "uploader_died: 1 logged, none declared")
    assert "run 0" not in said


def test_a_declaration_made_while_a_run_goes_is_for_that_run_or_the_one_named(make_stand_in):
    stand_in = make_stand_in()
    stand_in.run("uploader_died")
    stand_in.daemon.expect("uploader_died")  # the run going
    stand_in.daemon.stop()
    stand_in.run("halting", exit_code=1)
    stand_in.daemon.process.wait()
    stand_in.daemon.expect("halting", exit_codes=(1,), run=-1)  # it has ended: named
    stand_in.daemon.check()


def test_a_declaration_for_a_run_never_started_fails(make_stand_in):
    stand_in = make_stand_in()
    stand_in.run()
    stand_in.daemon.stop()
    stand_in.daemon.expect("halting")
    fails(stand_in.daemon, "declared for a run never started")


def test_an_exit_code_is_declared_for_its_run(make_stand_in):
    stand_in = make_stand_in()
    stand_in.daemon.expect(exit_codes=(3,))
    stand_in.run(exit_code=3).process.wait()
    stand_in.run(exit_code=3).process.wait()
    said = fails(stand_in.daemon, "run 1 (pid")
    assert "run 0" not in said


def test_daemons_on_one_log_each_answer_for_their_own_runs(make_stand_in):
    """A restart with other settings is another `Daemon` on the same log: the events of
    the second's run are not the first's."""
    first = make_stand_in()
    first.run({"event": "stopped", "level": "info"})
    first.daemon.stop()
    second = make_stand_in()
    second.daemon.expect("chunks_kept")
    second.run("chunks_kept")
    first.daemon.check()
    second.daemon.check()
