"""A stream as the uploader that owns it sees it: its phase, with the moves allowed
between phases, and the work of it under way."""

from __future__ import annotations

import collections
import enum
from concurrent.futures import Future
from dataclasses import dataclass, field

from streamer.failures import Backoff
from streamer.messages import Finish
from streamer.records import ChunkRecord, StreamRecord, StreamState
from streamer.uploader.file_sha256 import PrefixHash
from streamer.uploader.reports import Sent, Survey


class JobPhase(enum.Enum):
    """A stream's life in the uploader that owns it (the supervisor's side of it is
    supervisor.table.StreamPhase). Every change goes through Job.move_to, along _PHASE_MOVES.

    STREAMING   it sends chunks as its file grows
    FINISHING   the supervisor found its file idle: a finisher thread checks, reconciles
                and assembles it; back to STREAMING if the file changes meanwhile
    ABANDONING  its file is gone, or an operator cancelled it: once the chunks on the wire
                have landed, what S3 has is the stream
    CONCLUDED   metadata.json is written and the checkpoint says finished; the job goes
    """

    STREAMING = "streaming"
    FINISHING = "finishing"
    ABANDONING = "abandoning"
    CONCLUDED = "concluded"


_PHASE_MOVES = {
    JobPhase.STREAMING: {JobPhase.FINISHING, JobPhase.ABANDONING},
    JobPhase.FINISHING: {JobPhase.STREAMING, JobPhase.ABANDONING, JobPhase.CONCLUDED},
    JobPhase.ABANDONING: {JobPhase.CONCLUDED},
    JobPhase.CONCLUDED: set(),
}


@dataclass
class Job:
    """One owned stream, as this uploader sees it."""

    record: StreamRecord
    phase: JobPhase = JobPhase.STREAMING
    finish: Finish | None = None  # the idle size and mtime it is finishing at
    # Why it is abandoning, and as what (file gone, or cancelled).
    abandon: tuple[str, StreamState] | None = None
    waiting: bool = False  # nothing to do until the file changes or work comes back
    backoff: Backoff = field(default_factory=Backoff)  # its steps: chunks, completion
    log_fields: dict = field(default_factory=dict)
    # Chunks below this index may be in S3 already, uncommitted (sent before a restart, or
    # before a failed commit): look before sending them.
    probe_below: int = 0
    in_flight: dict[int, Future] = field(default_factory=dict)  # by chunk index
    # Chunks S3 confirmed, waiting for the chunks before them to be committed first.
    arrived: dict[int, Sent] = field(default_factory=dict)
    # The sha256 of what this process sent, from the first byte; None for a resumed
    # stream, whose earlier chunks completion reads again.
    sent_hash: PrefixHash | None = None
    told_parked: bool = False  # the supervisor may hold it parked: a success is told
    shrank: bool = False
    # The file compared with its chunks once it had been quiet a while (in a finisher
    # thread), ahead of completion: used then if the file has not changed since.
    surveying: Future | None = None
    quiet: Survey | None = None
    survey_at: float | None = None  # when the file will have been quiet long enough
    # Committed chunks not copied into the assembly upload yet, oldest first, and the
    # copier's work on them (or on beginning the upload), if under way.
    uncopied: collections.deque[ChunkRecord] = field(default_factory=collections.deque)
    copying: Future | None = None
    copy_backoff: Backoff = field(default_factory=Backoff)
    finishing: Future | None = None  # its completion, under way in a finisher thread

    @property
    def stream_id(self) -> str:
        return self.record.stream_id

    @property
    def held(self) -> int:
        """Its chunks on the wire or waiting for their turn to be committed."""
        return len(self.in_flight) + len(self.arrived)

    def wake(self) -> None:
        self.waiting = False

    def move_to(self, phase: JobPhase) -> None:
        assert phase in _PHASE_MOVES[self.phase], f"{self.stream_id}: {self.phase} -> {phase}"
        self.phase = phase
