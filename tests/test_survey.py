"""A survey made ahead of completion: used only while the file is as it was surveyed, its
chunks' bytes still hold and the file's sha256 is known, or not wanted."""

import hashlib

import msgspec
from sample_records import chunk_record, fed

from streamer.digests import CRC64NVME, of
from streamer.messages import Finish
from streamer.uploader.file_sha256 import PrefixHash
from streamer.uploader.reports import Survey
from streamer.uploader.survey import still_holds

SECOND = 1_000_000_000


def test_a_survey_made_ahead_is_used_only_while_it_holds_and_its_sha256_is_known():
    data = b"x" * 300
    sent = PrefixHash()
    first = fed(sent, 0, 0, data[:200])
    mtime = 7 * SECOND
    head = chunk_record(
        0, 200, crc64nvme=first, read_at_ns=mtime - SECOND, read_mtime_ns=mtime - SECOND
    )
    ahead = Survey(size=300, mtime_ns=mtime, sha256=None, stale=[], drop_from=None, checked=1)
    finish = Finish(stream_id="s", size=300, mtime_ns=mtime)
    assert still_holds(None, finish, [head], sent) is None
    assert (
        still_holds(ahead, Finish(stream_id="s", size=300, mtime_ns=mtime + 1), [head], sent)
        is None
    )
    # The tail not sent yet: its sha256 is not known.
    assert still_holds(ahead, finish, [head], sent) is None
    last = fed(sent, 1, 200, data[200:])
    tail = chunk_record(
        200, 100, crc64nvme=last, read_at_ns=mtime + 2 * SECOND, read_mtime_ns=mtime
    )
    used = still_holds(ahead, finish, [head, tail], sent)
    assert used.sha256 == hashlib.sha256(data).hexdigest() and used.stale == ahead.stale
    assert still_holds(used, finish, [head, tail], None) is used
    # A chunk the survey did not compare, read before the file's last write: its bytes
    # may have been rewritten since (a recorder that went on after the survey was planned).
    early = chunk_record(
        200, 100, crc64nvme=last, read_at_ns=mtime - SECOND, read_mtime_ns=mtime - SECOND
    )
    assert still_holds(used, finish, [head, early], None) is None
    sent.seen(
        200, of(CRC64NVME, b"y" * 100).value
    )  # the tail read again, rewritten: not the file's
    assert still_holds(ahead, finish, [head, tail], sent) is None
    assert still_holds(ahead, finish, [head, tail], None) is None


def test_without_the_file_s_sha256_a_survey_made_ahead_holds_without_one():
    from streamer.config import Config, IntegrityConfig
    from streamer.uploader.file_sha256 import wanted

    mtime = 7 * SECOND
    head = chunk_record(
        0, 200, crc64nvme="0" * 16, read_at_ns=mtime - SECOND, read_mtime_ns=mtime - SECOND
    )
    tail = chunk_record(
        200, 100, crc64nvme="1" * 16, read_at_ns=mtime + 2 * SECOND, read_mtime_ns=mtime
    )
    ahead = Survey(size=300, mtime_ns=mtime, sha256=None, stale=[], drop_from=None, checked=1)
    finish = Finish(stream_id="s", size=300, mtime_ns=mtime)
    assert still_holds(ahead, finish, [head, tail], None) is None, "a sha256 is wanted"
    assert still_holds(ahead, finish, [head, tail], None, sha256=False) is ahead
    off = Config(integrity=IntegrityConfig(file_sha256=False))
    assert not wanted(off, [head, tail])
    # A chunk from before crc64nvme: the whole cannot be combined, so its sha256 is taken.
    older = chunk_record(200, 100, read_at_ns=mtime + 2 * SECOND, read_mtime_ns=mtime)
    assert wanted(off, [head, msgspec.structs.replace(older, crc64nvme=None)])
    assert wanted(Config(), [head, tail])
