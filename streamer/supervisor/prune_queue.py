"""stream.keep_chunks off: each finished stream's chunk objects are deleted once its
assembled object is proven to hold every byte, by an uploader asked for one stream at a
time. The streams left to prune are found at start (a stop may have come between a
stream's end and its pruning) and as streams finish; one that could not be pruned is
asked for again later."""

from __future__ import annotations

from streamer.messages import Prune, Pruned
from streamer.policy import prunable
from streamer.supervisor.context import SupervisorContext
from streamer.supervisor.errands import OneAtATime
from streamer.supervisor.workers import Workers

PRUNE_RETRY = 60.0  # seconds before a stream whose pruning failed is asked for again


class PruneQueue:
    def __init__(self, ctx: SupervisorContext, workers: Workers):
        self.ctx = ctx
        self.waiting: dict[str, float] = {}  # stream id -> not before
        self.asked = OneAtATime(workers)

    @property
    def enabled(self) -> bool:
        return not self.ctx.config.stream.keep_chunks

    def find_unpruned(self) -> None:
        """At start: the finished streams whose chunks are still there."""
        records, _ = self.ctx.store.every_stream()  # an unreadable one is reported elsewhere
        self.waiting.update((r.stream_id, 0.0) for r in records if prunable(r))

    def finished(self, stream_id: str, now: float) -> None:
        """A stream just finished: pruned next if it may be (assembled, its digest known);
        asking for one that may not would only be answered "kept"."""
        record = self.ctx.store.find_stream(stream_id) if self.enabled else None
        if record is not None and prunable(record):
            self.waiting[stream_id] = now

    def due(self, now: float) -> list[str]:
        """The streams to prune now, the one asked for among them: what `run --once` waits
        for before it stops."""
        return sorted(s for s, at in self.waiting.items() if at <= now)

    def apply(self, now: float, busy: str | None = None) -> None:
        """Ask for the next stream due, unless one is being pruned; not `busy`, the one
        retention is deleting the file of (both rewrite metadata.json)."""
        if self.asked.errand is not None:
            return
        due = next((s for s, at in self.waiting.items() if at <= now and s != busy), None)
        if due is not None:
            self.asked.ask(Prune(stream_id=due))

    def pruned(self, message: Pruned, now: float) -> None:
        self.asked.answered(message.stream_id)
        if message.deleted or message.final:
            self.waiting.pop(message.stream_id, None)
        elif message.stream_id in self.waiting:
            self.waiting[message.stream_id] = now + PRUNE_RETRY

    def uploader_died(self, worker_id: int) -> None:
        """Its pruning, if it was asked for one, will never be answered: asked again."""
        self.asked.uploader_died(worker_id)
