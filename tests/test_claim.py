"""The instance's claim in S3: held by the store that starts, moved on at each start, so a
copy of the store (a restored backup, a second host) knows it is behind before it writes.
On the directory-backed store (tests/dirstore.py) and real checkpoint stores."""

from __future__ import annotations

import pytest
from dirstore import DirectoryStore

from streamer import claim
from streamer.checkpoint import CheckpointStore

MAP_SIZE = 64 * 1024 * 1024


def started(path) -> CheckpointStore:
    """A checkpoint store as the supervisor leaves it at a start: instance named, a start
    begun."""
    store = CheckpointStore(str(path), MAP_SIZE)
    store.claim_instance("test-host", "test-host")
    store.begin_start()
    return store


@pytest.fixture
def s3(tmp_path):
    made = DirectoryStore(tmp_path / "s3", prefix="rec", instance="test-host")
    made.ensure_bucket(create=True)
    return made


def test_each_start_moves_the_claim_on_and_a_held_one_stays(s3, tmp_path):
    store = started(tmp_path / "store")
    first = claim.hold(s3, store)
    assert (first.store, first.generation) == (store.store_id(), 1)
    assert claim.hold(s3, store) == first, "held: not moved again in the same start"
    store.begin_start()
    assert claim.hold(s3, store).generation == 2


def test_another_store_under_the_same_instance_is_refused_and_writes_nothing(s3, tmp_path):
    claim.hold(s3, started(tmp_path / "one"))
    before = s3.read(s3.layout.owner_key())
    with pytest.raises(claim.InstanceTaken, match="claimed by another checkpoint store"):
        claim.hold(s3, started(tmp_path / "two"))
    assert s3.read(s3.layout.owner_key()) == before


def test_a_backup_put_back_is_behind_and_only_adopt_takes_the_claim_over(s3, tmp_path):
    store = started(tmp_path / "store")
    claim.hold(s3, store)
    store.backup(str(tmp_path / "backup"))
    store.begin_start()
    moved = claim.hold(s3, store)  # the store goes on after the backup was taken
    store.close()
    restored = CheckpointStore(str(tmp_path / "backup"), MAP_SIZE)
    restored.begin_start()
    with pytest.raises(claim.Behind, match="behind S3"):
        claim.hold(s3, restored)
    assert claim.decode(s3.read(s3.layout.owner_key())[0]) == moved
    taken = claim.hold(s3, restored, take_over=True)
    assert (taken.store, taken.generation) == (moved.store, moved.generation + 1)
