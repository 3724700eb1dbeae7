"""A supervisor in this process, without its loop or its uploaders: its pieces on a real
checkpoint store and real files (the `supervisor` fixture, registered for every test), and
`recording`, a file written in its watch directory with the stream the supervisor would
create for it; `workers`, two uploaders in its real `Workers` whose command pipes no
process reads (`sent` reads back what each was told). For the tests of its modules
(test_table.py, test_discovery.py, ...)."""

from __future__ import annotations

import multiprocessing
import os
from datetime import UTC, datetime

import msgspec
import pytest

from streamer import config
from streamer.messages import Mailbox
from streamer.records import StreamRecord
from streamer.supervisor.daemon import Supervisor
from streamer.supervisor.workers import Worker
from streamer.watcher import Watcher


@pytest.fixture
def supervisor(tmp_path):
    (tmp_path / "input").mkdir()
    settings = config.load(
        None,
        environ={
            "STREAMER_WATCH_DIRECTORY": str(tmp_path / "input"),
            "STREAMER_CHECKPOINT_PATH": str(tmp_path / "checkpoint"),
        },
    )
    supervisor = Supervisor(settings)
    supervisor.ctx.open_store()
    yield supervisor
    supervisor.ctx.close_store()


def recording(supervisor, name: str) -> tuple[StreamRecord, object]:
    path = os.path.join(supervisor.config.watch.directory, name)
    with open(path, "wb") as f:
        f.write(b"r" * 1000)
    file = Watcher.stat(path)
    record = StreamRecord(
        stream_id=name, path=path, inode=file.inode, device=file.device, chunk_size=4096,
        first_seen_at=datetime.now(UTC),
    )  # fmt: skip
    supervisor.ctx.store.create_stream(record)
    return record, file


FORK = multiprocessing.get_context("fork")


class Up:
    """An uploader's process as `Workers` asks after it: running."""

    pid = 0

    def is_alive(self) -> bool:
        return True


@pytest.fixture
def workers(supervisor):
    """Two running uploaders in the supervisor's `Workers`."""
    for worker_id in (0, 1):
        commands = Mailbox.for_commands(FORK)
        supervisor.workers.workers[worker_id] = Worker(worker_id, Up(), commands, None, None)
    yield supervisor.workers
    for worker in supervisor.workers.workers.values():
        worker.commands.close()
    supervisor.workers.workers.clear()


def sent(workers, worker_id: int) -> list:
    """What the uploader was told since the last look."""
    commands = workers[worker_id].commands
    return list(iter(lambda: commands.get(0), None))


def configure(supervisor, section: str, **changes) -> None:
    """The supervisor's settings with `changes` to one section, as every role reads them."""
    config = supervisor.ctx.config
    changed = msgspec.structs.replace(getattr(config, section), **changes)
    supervisor.ctx.config = msgspec.structs.replace(config, **{section: changed})
