"""What every role of the supervisor works with: the settings (the instance name is
settled at start), the clock, the log, the watched directory and the checkpoint store,
which is closed around every fork and opened again, and whether that store takes writes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streamer import logs
from streamer.checkpoint import CheckpointStore
from streamer.config import Config
from streamer.watcher import Watcher


@dataclass(eq=False)
class SupervisorContext:
    config: Config
    clock: Callable[[], float]
    log: logs.EventLog
    watcher: Watcher
    store: CheckpointStore | None = None
    checkpoint_writable: bool = True  # the latest write, here or in an uploader, succeeded
    checkpoint_error: str = ""

    def checkpoint_state(self, writable: bool, error: str = "") -> bool:
        """Logged when it changes (the first failed write, the first one after it that
        succeeds); returns whether it did."""
        if writable == self.checkpoint_writable:
            return False
        self.checkpoint_writable, self.checkpoint_error = writable, error
        if writable:
            self.log.info("checkpoint_writable", path=self.config.checkpoint.path)
        else:
            self.log.error("checkpoint_unwritable", path=self.config.checkpoint.path, error=error)
        return True

    def open_store(self) -> None:
        checkpoint = self.config.checkpoint
        self.store = CheckpointStore(checkpoint.path, checkpoint.map_size)

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
