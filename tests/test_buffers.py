"""The read buffers' pool: a buffer given back is taken again when large enough, and all
are let go when the pool is told to."""

from streamer.buffers import BufferPool


def test_the_buffer_pool_reuses_what_is_given_back_and_lets_it_go_when_told():
    pool = BufferPool()
    one, two = pool.take(10), pool.take(10)
    assert one is not two and len(one) == 10
    pool.give(one)
    assert pool.take(8) is one  # large enough
    pool.give(one)
    assert pool.take(11) is not one  # too small: a new one
    pool.give(two)
    pool.give(pool.take(4))  # a tail's buffer, given back last
    assert pool.take(10) is two  # a buffer large enough is found behind it
    pool.give(two)
    pool.release()
    assert pool.take(10) is not two
