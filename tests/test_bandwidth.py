"""The upload bandwidth cap's token bucket: its rate after a short burst, and pieces small
enough on a thin link that no request waits long."""

import pytest
from clock import Clock

from streamer.bandwidth import TokenBucket


def test_the_token_bucket_grants_its_rate_after_a_short_burst():
    clock = Clock()
    bucket = TokenBucket(640 * 1024, clock=clock)  # a tenth of a second: one 64 KiB piece
    piece = bucket.piece
    assert piece == 64 * 1024
    assert bucket.take(piece) == 0  # the burst
    assert bucket.take(piece) == pytest.approx(0.1)  # each next piece waits its turn
    assert bucket.take(piece) == pytest.approx(0.2)
    clock.now += 0.2  # the debt is paid
    assert bucket.take(piece) == pytest.approx(0.1)
    clock.now += 60  # idle for a minute: the burst is still one piece, not a minute's worth
    assert bucket.take(piece) == 0
    assert bucket.take(piece) == pytest.approx(0.1)


def test_on_a_thin_link_pieces_are_small_so_no_request_waits_long():
    bucket = TokenBucket(8 * 1024, clock=Clock())
    assert bucket.piece == 4 * 1024
    waits = [bucket.take(bucket.piece) for _ in range(6)]  # six senders at once
    assert max(waits) <= 3.0
