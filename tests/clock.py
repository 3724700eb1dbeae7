"""A clock the test holds, for the loops and token buckets that take one."""


class Clock:
    """The loop's time, moved by the test; it starts at 1000 (any time will do)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
