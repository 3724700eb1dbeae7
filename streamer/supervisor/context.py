"""What every role of the supervisor works with: the settings (the instance name is
settled at start), the clock, the log, the watched directory and the checkpoint store,
which is closed around every fork and opened again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streamer import logs
from streamer.checkpoint import CheckpointStore
from streamer.config import Config
from streamer.watcher import Watcher


@dataclass(eq=False)
class Context:
    config: Config
    clock: Callable[[], float]
    log: logs.EventLog
    watcher: Watcher
    store: CheckpointStore | None = None

    def open_store(self) -> None:
        checkpoint = self.config.checkpoint
        self.store = CheckpointStore(checkpoint.path, checkpoint.map_size)

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
