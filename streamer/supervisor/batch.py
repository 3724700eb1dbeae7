"""`streamer run --once`: the files found at start, and how each stream of them ended.
When every one has ended the daemon stops; its exit status says whether all finished."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class Batch:
    pending: set[str]  # streams of the batch not finished yet
    # Paths found at start that could not be taken up yet (tried again at each scan).
    missed: set[str] = field(default_factory=set)
    # Streams whose records cannot be read: never finished by this run.
    lost: set[str] = field(default_factory=set)
    ended: dict[str, str] = field(default_factory=dict)  # stream id -> status

    @classmethod
    def of(cls, stream_ids: Iterable[str], missed=(), lost=()) -> Batch:
        return cls(pending=set(stream_ids), missed=set(missed), lost=set(lost))

    def follow(self, tracked: Mapping[str, str], exists: Callable[[str], bool]) -> None:
        """Every stream the daemon tracks (by path) is of the batch: a missed file taken up
        since, or a recording written over one of the batch's. A missed path no longer
        there has nothing left to finish."""
        self.pending.update(s for s in tracked.values() if s not in self.ended)
        for path in list(self.missed):
            if path in tracked or not exists(path):
                self.missed.discard(path)

    def concluded(self, stream_id: str, status: str) -> None:
        if stream_id in self.pending:
            self.pending.discard(stream_id)
            self.ended[stream_id] = status

    @property
    def done(self) -> bool:
        """Nothing left that this run can finish."""
        return not self.pending and not self.missed

    @property
    def all_finished(self) -> bool:
        return self.done and not self.lost

    def summary(self) -> dict:
        unfinished = sorted(self.pending | self.lost) + sorted(self.missed)
        return {
            "streams": len(self.pending) + len(self.lost) + len(self.ended),
            "finished": len(self.ended),
            "by_status": dict(sorted(Counter(self.ended.values()).items())),
            "unfinished": unfinished,
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
