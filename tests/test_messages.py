"""The messages between the supervisor and its uploaders, and the mailbox that carries them
(streamer/messages.py): every command and every event comes out of a real Mailbox pipe, in
this process, as it went in; a message of the wrong kind for a mailbox is refused; a full
pipe refuses put_nowait at once rather than block the writer; get waits as long as told."""

from __future__ import annotations

import multiprocessing
import threading
import time
import typing

import msgspec
import pytest

from streamer.messages import (
    Abandon,
    Assign,
    CheckpointState,
    ChunkCommitted,
    ChunkUploaded,
    Command,
    Event,
    Finish,
    FinishDeclined,
    Grow,
    Mailbox,
    Moved,
    Prune,
    Pruned,
    Retire,
    Retired,
    S3State,
    SourceRewritten,
    Stop,
    StreamFinished,
    StreamParked,
    StreamResumed,
)

FORK = multiprocessing.get_context("fork")

COMMANDS = [
    Assign("cam-1"),
    Grow("cam-1", 10 * 1024**3),
    Finish("cam-1", 4096, 1_765_000_000_123_456_789),
    Moved("cam-1"),
    Abandon("cam-1", "its file is gone"),
    Abandon("cam-1", "cancelled by an operator", status="cancelled"),
    Retire("cam-1", "disk_pressure"),
    Prune("cam-1"),
    Stop(),
]
EVENTS = [
    ChunkUploaded("cam-1", 65536),
    ChunkCommitted("cam-1", 65536),
    S3State(True),
    S3State(False, error="timeout", bucket_missing="create it"),
    CheckpointState(False, "disk full"),
    FinishDeclined("cam-1"),
    SourceRewritten("cam-1"),
    StreamParked("cam-1", "S3 away", 2.5, 30.25, heals=True, bug=True),
    StreamResumed("cam-1"),
    StreamFinished("cam-1", "complete", 4096, -1),
    Retired("cam-1", False, final=True, kept_because="not proven in S3", retry_in=60.0),
    Pruned("cam-1", True),
]


@pytest.fixture
def commands():
    mailbox = Mailbox.for_commands(FORK)
    yield mailbox
    mailbox.close()


@pytest.fixture
def events():
    mailbox = Mailbox.for_events(FORK)
    yield mailbox
    mailbox.close()


def received(mailbox: Mailbox, messages: list) -> list:
    for message in messages:
        mailbox.put(message)
    return [mailbox.get(1.0) for _ in messages]


def test_every_command_comes_out_of_its_mailbox_as_it_went_in(commands):
    assert {type(m) for m in COMMANDS} == set(typing.get_args(Command)), "one of each"
    came = received(commands, COMMANDS)
    assert came == COMMANDS
    assert [type(m) for m in came] == [type(m) for m in COMMANDS]
    assert commands.get() is None, "nothing more"


def test_every_event_comes_out_of_its_mailbox_as_it_went_in(events):
    assert {type(m) for m in EVENTS} == set(typing.get_args(Event)), "one of each"
    assert received(events, EVENTS) == EVENTS
    assert events.get() is None


def test_a_message_of_the_wrong_kind_for_a_mailbox_is_refused(commands, events):
    commands.put(ChunkCommitted("cam-1", 100))
    with pytest.raises(msgspec.ValidationError):
        commands.get(1.0)
    events.put(Assign("cam-1"))
    with pytest.raises(msgspec.ValidationError):
        events.get(1.0)
    commands.put(Assign("cam-2"))
    assert commands.get(1.0) == Assign("cam-2"), "the refused one took nothing else with it"


def test_get_waits_for_a_message_as_long_as_told_and_no_longer(commands):
    started, got = time.monotonic(), []
    waiting = threading.Thread(target=lambda: got.append(commands.get(0.3)), daemon=True)
    waiting.start()
    waiting.join(30)  # a bound on a hang, not a speed: the machine may be busy
    assert not waiting.is_alive() and got == [None]
    assert time.monotonic() - started >= 0.3
    threading.Timer(0.1, commands.put, [Stop()]).start()
    assert commands.get(5.0) == Stop(), "what arrives while it waits"


def test_a_full_pipe_refuses_put_nowait_at_once_and_takes_messages_again_once_read(events):
    sent, refused = [], threading.Event()

    def fill() -> None:
        for n in range(1_000_000):
            message = ChunkCommitted("cam-1", n)
            if not events.put_nowait(message):
                refused.set()
                return
            sent.append(message)

    filler = threading.Thread(target=fill, daemon=True)  # a blocked put must not hang the run
    filler.start()
    filler.join(10)
    assert not filler.is_alive(), "put_nowait blocked on a full pipe"
    assert refused.is_set() and len(sent) > 100
    assert [events.get() for _ in sent] == sent, "every message whole, in order"
    assert events.put_nowait(StreamResumed("cam-1")) is True
    assert events.get(1.0) == StreamResumed("cam-1")
