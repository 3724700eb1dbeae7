"""The instance's claim in S3 (`.owner`): which checkpoint store writes under the instance
name, and which of its starts last took it. Each start of the daemon, and each clean stop,
moves the claim on (a conditional write over the one it read), so a store that is a copy
of another (a backup taken while the daemon ran, put back; a store copied to a second
host) finds the claim moved on by a start it never made, and stops before it writes
anything: it is behind S3."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from streamer import digests
from streamer.bodies import InMemory
from streamer.checkpoint import CheckpointStore
from streamer.digests import SHA256
from streamer.logs import describe
from streamer.objectstore import ABSENT, ObjectStore, Taken
from streamer.policy import ClaimVerdict, claim_verdict

ATTEMPTS = 5


class InstanceTaken(Exception):
    """Another checkpoint store claims this instance name in the bucket: two hosts under
    one name would write over each other's streams."""


class Behind(Exception):
    """The claim names this store, moved on by a start this store never made: this store
    is a copy, behind what S3 records."""


class NotMoved(Exception):
    """The claim is this store's to move on (it is not behind), but S3 refused the write
    (writes refused, or away since the read): the daemon goes on, and tries again."""


class Claim(msgspec.Struct, kw_only=True):
    store: str
    generation: int  # one more at every start that moves it on
    start: str | None  # None: a claim from before starts were named
    claimed_at: datetime | None = None


def decode(data: bytes) -> Claim:
    """A claim; one from before claims were JSON is the store's id alone."""
    try:
        return msgspec.json.decode(data, type=Claim)
    except msgspec.DecodeError:
        return Claim(store=data.decode(errors="replace").strip(), generation=0, start=None)


def hold(s3: ObjectStore, store: CheckpointStore, take_over: bool = False) -> Claim:
    """Make sure this start holds the instance's claim, moving it on where it is this
    store's from an earlier start. Raises InstanceTaken or Behind where it is not;
    `take_over` (`streamer checkpoint adopt`): moves on a claim this store is behind."""
    key = s3.layout.owner_key()
    mine = store.store_id()
    for _ in range(ATTEMPTS):
        found = s3.read(key)
        # After S3's claim: a start moves it on only once begun in the store, so a start
        # of this store's that moved it meanwhile (a stop, in another uploader) is known.
        this_start, own_starts, confirmed = store.claim_starts()
        assert this_start is not None, "a start is begun before the claim is held"
        claim = decode(found[0]) if found is not None else None
        verdict = claim_verdict(
            claim.store if claim else None,
            claim.start if claim else None,
            mine,
            this_start,
            own_starts,
            confirmed,
        )
        if verdict is ClaimVerdict.TAKEN:
            raise InstanceTaken(taken_message(s3, key, claim.store, mine))
        if verdict is ClaimVerdict.BEHIND and not take_over:
            raise Behind(behind_message(s3, key, claim))
        if verdict is not ClaimVerdict.HELD:
            claim = Claim(
                store=mine,
                generation=(claim.generation if claim else 0) + 1,
                start=this_start,
                claimed_at=datetime.now(UTC),
            )
            body = msgspec.json.encode(claim)
            expect = found[1] if found is not None else ABSENT
            try:
                s3.put(key, InMemory(body), digests.of(SHA256, body), "application/json", expect)
            except Taken:
                continue  # another uploader of this start, or another store: read again
            except Exception as exc:
                raise NotMoved(f"the claim could not be moved on: {describe(exc)}") from exc
        if own_starts != [this_start] or not confirmed:
            store.confirm_claim(this_start)
        return claim
    raise Taken(key)


def check_owner(s3: ObjectStore, store: CheckpointStore) -> None:
    """Raise InstanceTaken where another checkpoint store claims the instance name."""
    key = s3.layout.owner_key()
    found = s3.read(key)
    mine = store.store_id()
    if found is not None and (owner := decode(found[0]).store) != mine:
        raise InstanceTaken(taken_message(s3, key, owner, mine))


def move_on(s3: ObjectStore, store: CheckpointStore) -> Claim:
    """Move the claim on from this start to a new token of this store's (a clean stop)."""
    store.begin_start()
    return hold(s3, store)


def taken_message(s3: ObjectStore, key: str, owner: str, mine: str) -> str:
    where = f"s3://{s3.bucket}/{key}"
    return (
        f"instance {s3.layout.instance!r} is claimed by another checkpoint store ({owner}; "
        f"this one is {mine}), in {where}: give this host an instance name of its own "
        f"(instance, STREAMER_INSTANCE), or, if that store is gone for good, delete {where} "
        "and start again"
    )


def behind_message(s3: ObjectStore, key: str, claim: Claim) -> str:
    when = f" at {claim.claimed_at:%Y-%m-%d %H:%M:%S} UTC" if claim.claimed_at else ""
    return (
        f"this checkpoint store is behind S3: the claim on instance {s3.layout.instance!r} "
        f"(s3://{s3.bucket}/{key}) was moved on{when} (generation {claim.generation}) by a "
        "start this store never made. It is a restored backup, or a copy of a store that "
        "another host runs. Nothing was written. If that host runs on, give this one an "
        "instance name of its own (instance, STREAMER_INSTANCE) and a new checkpoint "
        "store; if it is gone for good and this store is to carry on in its place, run "
        "`streamer checkpoint adopt`, which brings every stream up to S3's records first"
    )
