"""One request in flight per kind of errand (retention's deletions, pruning): asked of the
least loaded uploader, held until its answer, dropped when that uploader dies."""

from __future__ import annotations

from streamer.messages import Prune, Retire
from streamer.supervisor.errands import Errand, OneAtATime


class Uploaders:
    """What `OneAtATime` asks of the supervisor's workers: the least loaded one, and each
    one's outbox."""

    def __init__(self, *loads: int):
        self.loads = dict(enumerate(loads))
        self.sent: dict[int, list] = {worker: [] for worker in self.loads}

    def least_loaded(self) -> int | None:
        return min(self.loads, key=self.loads.get, default=None)

    def __getitem__(self, worker_id: int):
        outbox = self.sent[worker_id]

        class Worker:
            send = staticmethod(outbox.append)

        return Worker()


def test_one_errand_is_asked_of_the_least_loaded_uploader_and_held_until_answered():
    uploaders = Uploaders(3, 1)
    asked = OneAtATime(uploaders)
    assert asked.ask(Retire(stream_id="a", reason="age"), "/in/a.mp4")
    assert asked.stream_id == "a"
    assert uploaders.sent == {0: [], 1: [Retire(stream_id="a", reason="age")]}
    assert not asked.ask(Prune(stream_id="b")), "one at a time"
    assert asked.answered("b") is None, "an answer about another stream ends nothing"
    assert asked.stream_id == "a"
    assert asked.answered("a") == Errand("a", 1, "/in/a.mp4")
    assert asked.stream_id is None and asked.answered("a") is None
    assert asked.ask(Prune(stream_id="b"))
    assert uploaders.sent[1][-1] == Prune(stream_id="b")


def test_an_errand_whose_uploader_died_is_dropped_and_may_be_asked_again():
    uploaders = Uploaders(0, 5)
    asked = OneAtATime(uploaders)
    asked.ask(Prune(stream_id="a"))
    asked.uploader_died(1)
    assert asked.stream_id == "a", "another uploader's death changes nothing"
    asked.uploader_died(0)
    assert asked.stream_id is None
    del uploaders.loads[0]
    assert asked.ask(Prune(stream_id="a"))
    assert asked.errand == Errand("a", 1)


def test_nothing_is_asked_while_no_uploader_is_up():
    asked = OneAtATime(Uploaders())
    assert not asked.ask(Prune(stream_id="a"))
    assert asked.errand is None
