"""`streamer run --once`: the streams found at start, and how each ended. When every one
has ended the daemon stops; its exit status says whether all of them finished."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Batch:
    pending: set[str]  # found at start, not finished yet
    ended: dict[str, str] = field(default_factory=dict)  # stream id -> status

    @classmethod
    def of(cls, stream_ids: Iterable[str]) -> Batch:
        return cls(pending=set(stream_ids))

    def concluded(self, stream_id: str, status: str) -> None:
        if stream_id in self.pending:
            self.pending.discard(stream_id)
            self.ended[stream_id] = status

    @property
    def done(self) -> bool:
        return not self.pending

    def summary(self) -> dict:
        return {
            "streams": len(self.pending) + len(self.ended),
            "finished": len(self.ended),
            "by_status": dict(sorted(Counter(self.ended.values()).items())),
            "unfinished": sorted(self.pending),
        }

    def describe(self) -> str:
        """One line for people."""
        s = self.summary()
        statuses = ", ".join(f"{n} {status}" for status, n in s["by_status"].items())
        line = f"{s['finished']} of {s['streams']} streams finished" + (
            f" ({statuses})" if statuses else ""
        )
        if s["unfinished"]:
            line += "; not finished: " + ", ".join(s["unfinished"])
        return line
