"""One request at a time to the uploaders about a stream, where its answer must come before
the next is asked for: retention's deletion of a file, pruning's of a stream's chunks. It
is held until that answer comes, or until the uploader asked dies (the answer will never
come, and the stream may be asked for again)."""

from __future__ import annotations

from dataclasses import dataclass

from streamer.messages import Prune, Retire
from streamer.supervisor.workers import Workers


@dataclass(frozen=True)
class Errand:
    stream_id: str
    uploader: int
    path: str = ""  # the file it is about, where there is one


class OneAtATime:
    def __init__(self, workers: Workers):
        self.workers = workers
        self.errand: Errand | None = None

    @property
    def stream_id(self) -> str | None:
        """The stream asked about, if an answer is awaited."""
        return self.errand.stream_id if self.errand is not None else None

    def ask(self, message: Retire | Prune, path: str = "") -> bool:
        """Send `message` to the least loaded uploader, unless an answer is awaited or no
        uploader is up; was it sent?"""
        uploader = self.workers.least_loaded() if self.errand is None else None
        if uploader is None:
            return False
        self.errand = Errand(message.stream_id, uploader, path)
        self.workers[uploader].send(message)
        return True

    def answered(self, stream_id: str) -> Errand | None:
        """The errand an answer about `stream_id` ends, if it is the one awaited."""
        errand = self.errand
        if errand is None or errand.stream_id != stream_id:
            return None
        self.errand = None
        return errand

    def uploader_died(self, worker_id: int) -> None:
        """Its answer will never come: the stream may be asked for again."""
        if self.errand is not None and self.errand.uploader == worker_id:
            self.errand = None
