"""`streamer run --once`: the files found at start, how each stream of them ended, and
what retention and pruning did after. When every stream has ended and no deletion is due
the daemon stops; its exit status says whether all finished and every deletion was done."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field

from streamer.messages import Pruned, Retired


@dataclass
class OneShotRun:
    pending: set[str]  # streams of the run not finished yet
    # Paths found at start that could not be taken up yet (tried again at each scan).
    missed: set[str] = field(default_factory=set)
    # Streams whose records cannot be read: never finished by this run.
    lost: set[str] = field(default_factory=set)
    ended: dict[str, str] = field(default_factory=dict)  # stream id -> status
    files_deleted: set[str] = field(default_factory=set)  # paths retention deleted
    chunks_pruned: set[str] = field(default_factory=set)  # streams pruning deleted chunks of
    # What retention or pruning did not do (a path, or "chunks of <stream id>") -> why.
    left: dict[str, str] = field(default_factory=dict)
    # Set as the run stops: whether no deletion was due any more then.
    deletions_done: bool | None = None

    @classmethod
    def of(cls, stream_ids: Iterable[str], missed=(), lost=()) -> OneShotRun:
        return cls(pending=set(stream_ids), missed=set(missed), lost=set(lost))

    def follow(
        self, tracked: Mapping[str, str], failing: Set[str], exists: Callable[[str], bool]
    ) -> None:
        """Every stream the daemon tracks (by path) is of the run: a missed file taken up
        since, or a recording written over one of the run's. A missed path is missed only
        while discovery's look at it fails (`failing`) and it is there: one looked at
        since and not taken up (a recording finished before) has nothing to finish."""
        self.pending.update(s for s in tracked.values() if s not in self.ended)
        for path in list(self.missed):
            if path in tracked or path not in failing or not exists(path):
                self.missed.discard(path)

    def concluded(self, stream_id: str, status: str) -> None:
        if stream_id in self.pending:
            self.pending.discard(stream_id)
            self.ended[stream_id] = status

    def retired(self, path: str, answer: Retired, exists: Callable[[str], bool]) -> None:
        """Retention's answer for the file at `path`. A file kept only for now (`retry_in`:
        too young to be deleted without a lease) is not due yet, as one younger than
        retention.min_age is not; nothing is left of one gone meanwhile."""
        if answer.deleted:
            self.files_deleted.add(path)
            self.left.pop(path, None)
        elif answer.retry_in == 0 and exists(path):
            self.left[path] = f"kept: {answer.kept_because}"
        else:
            self.left.pop(path, None)

    def pruned(self, answer: Pruned) -> None:
        """Pruning's answer for a stream: chunks kept for good say why in its record
        (chunks_kept); a failure asked again later is not pruned yet."""
        what = f"chunks of {answer.stream_id}"
        if answer.deleted:
            self.chunks_pruned.add(answer.stream_id)
            self.left.pop(what, None)
        elif answer.final:
            self.left[what] = "kept, chunks_kept says why"
        else:
            self.left[what] = "not pruned yet"

    def stopping(self, files: list[str], streams: list[str]) -> None:
        """The deletions still due as the run stops (retention's files, pruning's
        streams); noted at the first stop, not again while its uploaders wind down."""
        if self.deletions_done is not None:
            return
        self.deletions_done = not files and not streams
        for path in files:
            self.left.setdefault(path, "not deleted yet")
        for stream_id in streams:
            self.left.setdefault(f"chunks of {stream_id}", "not pruned yet")

    @property
    def done(self) -> bool:
        """Nothing left that this run can finish."""
        return not self.pending and not self.missed

    @property
    def all_finished(self) -> bool:
        return self.done and not self.lost

    @property
    def succeeded(self) -> bool:
        """Every stream finished, and every deletion due was done."""
        return self.all_finished and self.deletions_done is True and not self.left

    def summary(self) -> dict:
        unfinished = sorted(self.pending | self.lost) + sorted(self.missed)
        return {
            "streams": len(self.pending) + len(self.lost) + len(self.ended) + len(self.missed),
            "finished": len(self.ended),
            "by_status": dict(sorted(Counter(self.ended.values()).items())),
            "unfinished": unfinished,
            "files_deleted": len(self.files_deleted),
            "chunks_pruned": len(self.chunks_pruned),
            "left": dict(sorted(self.left.items())),
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
        if s["files_deleted"]:
            line += f"; {s['files_deleted']} files deleted"
        if s["chunks_pruned"]:
            line += f"; chunks of {s['chunks_pruned']} streams pruned"
        if s["left"]:
            line += "; left: " + ", ".join(f"{what} ({why})" for what, why in s["left"].items())
        elif self.deletions_done is False:  # done since, as its uploaders wound down
            line += "; stopped with deletions still due"
        return line
