"""What the daemon shows of itself: whether it is ready (what /readyz answers) and the
gauges of the streams it holds, both as the loop saw them at the end of its last turn."""

from __future__ import annotations

from streamer import metrics
from streamer.policy import oldest_uncommitted_age
from streamer.supervisor.context import Context
from streamer.supervisor.streams import Phase, StreamTable
from streamer.supervisor.workers import Workers


class Readiness:
    def __init__(self, ctx: Context, workers: Workers, table: StreamTable):
        self.ctx = ctx
        self.workers = workers
        self.table = table
        self.started_at = ctx.clock()
        self.last_upload: float | None = None
        self.s3_reachable: bool | None = None
        self.s3_error = "no answer from S3 yet"

    def s3_state(self, reachable: bool, error: str) -> None:
        """As the uploaders last found S3; logged when it changes."""
        if reachable != self.s3_reachable:
            self.ctx.log.info("s3_state", reachable=reachable, error=error)
        self.s3_reachable, self.s3_error = reachable, error

    def checks(self, running: bool) -> tuple[bool, dict]:
        ctx = self.ctx
        alive, expected = self.workers.alive(), ctx.config.workers
        checks = {
            "s3": {"ok": self.s3_reachable is True, "error": self.s3_error},
            "checkpoint": {
                "ok": ctx.store is not None and ctx.checkpoint_writable,
                "error": ctx.checkpoint_error,
            },
            "uploaders": {"ok": alive == expected, "alive": alive, "expected": expected},
            "running": {"ok": running},
        }
        return all(c["ok"] for c in checks.values()), checks

    def update_gauges(self, now: float) -> None:
        streams = self.table.all()
        for phase in Phase:
            metrics.STREAMS.labels(state=phase.value).set(
                sum(1 for t in streams if t.phase is phase)
            )
        live = [t for t in streams if t.phase is not Phase.ABANDONING]
        metrics.BYTES_ON_DISK.set(sum(t.file.size for t in live))
        metrics.BYTES_CONFIRMED.set(sum(t.confirmed for t in live))
        metrics.BYTES_COMMITTED.set(sum(t.committed for t in live))
        metrics.OLDEST_UNCOMMITTED_AGE.set(
            max((oldest_uncommitted_age(t.arrivals, t.committed, now) for t in live), default=0)
        )
        metrics.SINCE_LAST_UPLOAD.set(now - (self.last_upload or self.started_at))
