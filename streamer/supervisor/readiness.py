"""What the daemon shows of itself: whether it is ready (what /readyz answers) and the
gauges of the streams it holds, both as the loop saw them at the end of its last turn."""

from __future__ import annotations

from streamer import metrics
from streamer.policy import oldest_uncommitted_age
from streamer.supervisor.context import SupervisorContext
from streamer.supervisor.table import StreamPhase, StreamTable
from streamer.supervisor.workers import Workers


class Readiness:
    def __init__(self, ctx: SupervisorContext, workers: Workers, table: StreamTable):
        self.ctx = ctx
        self.workers = workers
        self.table = table
        self.started_at = ctx.clock()
        self.last_upload: float | None = None
        self.s3_reachable: bool | None = None
        self.s3_error = "no answer from S3 yet"
        self.bucket_missing = ""

    def s3_state(self, reachable: bool, error: str, bucket_missing: str) -> None:
        """As the uploaders last found S3; logged when it changes."""
        if reachable != self.s3_reachable:
            self.ctx.log.info("s3_state", reachable=reachable, error=error)
        self.s3_reachable, self.s3_error = reachable, error
        if reachable:  # an answer says whether the bucket is there; no answer says nothing
            self.bucket_missing = bucket_missing

    def checks(self, running: bool) -> tuple[bool, dict]:
        ctx = self.ctx
        alive, expected = self.workers.alive(), ctx.config.workers.count
        checks = {
            "s3": {"ok": self.s3_reachable is True, "error": self.s3_error},
            "bucket": {"ok": not self.bucket_missing, "error": self.bucket_missing},
            "checkpoint": {
                "ok": ctx.store is not None and ctx.checkpoint_writable,
                "error": ctx.checkpoint_error,
            },
            "uploaders": {"ok": alive == expected, "alive": alive, "expected": expected},
            "running": {"ok": running},
            "streams": self.waiting(ctx.clock()),
        }
        return all(c["ok"] for c in checks.values()), checks

    def waiting(self, now: float) -> dict:
        """The streams parked and stuck, with why and until when; none stuck is ok."""
        stuck_after = self.ctx.config.stream.stuck_after
        shown: dict[str, list] = {"parked": [], "stuck": []}
        for t in self.table.all():
            if (condition := t.condition(now, stuck_after)) is not None:
                p = t.parking
                shown[condition].append(
                    {
                        "stream_id": t.stream_id,
                        "path": t.file.path,
                        "reason": p.reason,
                        "heals": p.heals,
                        "failing_for": round(now - p.since, 1),
                        "due_in": round(max(0.0, p.due - now), 1),
                    }
                )
        return {"ok": not shown["stuck"], **shown}

    def update_gauges(self, now: float) -> None:
        streams = self.table.all()
        stuck_after = self.ctx.config.stream.stuck_after
        states = [t.condition(now, stuck_after) or t.phase.value for t in streams]
        for state in [*(p.value for p in StreamPhase), "parked", "stuck"]:
            metrics.STREAMS.labels(state=state).set(states.count(state))
        live = [t for t in streams if t.phase is not StreamPhase.ABANDONING]
        metrics.BYTES_ON_DISK.set(sum(t.file.size for t in live))
        metrics.BYTES_CONFIRMED.set(sum(t.confirmed for t in live))
        metrics.BYTES_COMMITTED.set(sum(t.committed for t in live))
        metrics.OLDEST_UNCOMMITTED_AGE.set(
            max((oldest_uncommitted_age(t.arrivals, t.committed, now) for t in live), default=0)
        )
        metrics.SINCE_LAST_UPLOAD.set(now - (self.last_upload or self.started_at))
        metrics.S3_REACHABLE.set(1 if self.s3_reachable else 0)
        writable = self.ctx.store is not None and self.ctx.checkpoint_writable
        metrics.CHECKPOINT_WRITABLE.set(1 if writable else 0)
