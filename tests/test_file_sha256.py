"""The whole file's sha256 as the sender threads feed it, in turn (`PrefixHash`): it holds
only for the chunks' digests it was fed, and breaks when a turn is given up or never
taken."""

import hashlib
import threading

from sample_records import chunk_record, fed

from streamer.digests import CRC64NVME, of
from streamer.uploader.file_sha256 import PrefixHash


def test_the_prefix_hash_is_fed_in_turn_and_holds_for_the_digests_it_was_fed():
    data = bytes(range(256)) * 40
    parts = [(0, 0, data[:4000]), (1, 4000, data[4000:8000]), (2, 8000, data[8000:])]
    prefix = PrefixHash()
    order, crcs = [], {}

    def send(index: int, offset: int, part: bytes) -> None:
        crcs[offset] = fed(prefix, index, offset, part)
        order.append(offset)

    later = [threading.Thread(target=send, args=part) for part in reversed(parts[1:])]
    for thread in later:
        thread.start()
    send(*parts[0])
    for thread in later:
        thread.join()
    assert order == [0, 4000, 8000]  # each waited for the bytes before its own
    chunks = [chunk_record(o, len(p), crc64nvme=crcs[o]) for _, o, p in parts]
    state = prefix.state(chunks)
    assert state.hexdigest() == hashlib.sha256(data).hexdigest()
    state.update(b"tail")  # a copy: going on with it leaves the prefix as it was
    assert prefix.state(chunks).hexdigest() == hashlib.sha256(data).hexdigest()
    assert prefix.state(chunks[:2]) is None  # it holds more than those
    other = chunk_record(4000, 4000, crc64nvme=of(CRC64NVME, b"other bytes").value)
    assert prefix.state([chunks[0], other, chunks[2]]) is None  # S3 holds other bytes
    prefix.seen(4000, of(CRC64NVME, parts[1][2]).value)  # read again, the same bytes
    assert prefix.state(chunks) is not None
    prefix.seen(4000, of(CRC64NVME, b"rewritten").value)  # read again, other bytes
    assert prefix.state(chunks) is None


def test_a_turn_given_up_or_never_taken_breaks_the_prefix_hash_and_frees_who_waits():
    prefix = PrefixHash()
    waiting = []
    thread = threading.Thread(target=lambda: waiting.append(prefix.take_turn(1, 100)))
    thread.start()
    assert prefix.take_turn(0, 0) is not None
    assert prefix.state([]) is None  # part way through a chunk
    prefix.give_up()  # the chunk's first pass failed part way
    thread.join()
    assert waiting == [None] and prefix.state([]) is None
    lonely = PrefixHash(wait_s=0.01)
    assert lonely.take_turn(1, 100) is None  # the chunk before it never came
    assert lonely.broken
    gap = PrefixHash()
    fed(gap, 0, 0, b"a short tail")  # sent as the tail, then the file grew
    assert gap.take_turn(1, 100) is None and gap.broken  # not where the bytes fed end
