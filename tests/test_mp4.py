"""The MP4 box reader, against real ffmpeg recordings and against arbitrary bytes."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recordings import ffprobe_duration, record

from streamer import mp4

FRAME = 1 / 25


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, ffmpeg):
    folder = tmp_path_factory.mktemp("mp4")
    made = {}
    for kind in ("plain", "faststart", "fragmented"):
        for seconds in (1, 3.5):
            path = folder / f"{kind}-{seconds}.mp4"
            assert record(ffmpeg, path, seconds, kind, live=False).wait() == 0
            made[kind, seconds] = path
    return made


@pytest.mark.parametrize("kind", ["plain", "faststart", "fragmented"])
@pytest.mark.parametrize("seconds", [1, 3.5])
def test_facts_of_ffmpeg_recordings(recordings, kind, seconds):
    path = recordings[kind, seconds]
    with open(path, "rb") as f:
        facts = mp4.inspect_file(f)
    assert facts.is_mp4 and facts.has_moov and facts.playable and not facts.truncated
    assert facts.fragmented == (kind == "fragmented")
    assert abs(facts.duration_seconds - ffprobe_duration(path)) <= FRAME
    video, audio = sorted(facts.tracks, key=lambda t: t.kind, reverse=True)
    assert (video.kind, video.codec, video.width, video.height) == ("vide", "avc1", 640, 360)
    assert (audio.kind, audio.codec, audio.sample_rate) == ("soun", "mp4a", 48000)
    assert video.timescale and audio.timescale == 48000


def test_every_prefix_of_a_recording_is_read_without_raising(recordings):
    data = recordings["plain", 1].read_bytes()
    for end in range(0, len(data), 97):
        facts = mp4.inspect_bytes(data[:end])
        assert not facts.playable or end == len(data)
    head = mp4.inspect_bytes(data[: len(data) // 2])
    assert head.is_mp4 and head.truncated and not head.has_moov


def test_a_recording_cut_before_its_moov_is_not_playable(recordings):
    data = recordings["plain", 3.5].read_bytes()
    moov_at = data.index(b"moov") - 4
    facts = mp4.inspect_bytes(data[:moov_at])
    assert facts.is_mp4 and not facts.has_moov and not facts.playable


def test_text_is_not_mp4():
    assert not mp4.inspect_bytes(b"hello, this is not a video\n" * 10).is_mp4
    assert not mp4.inspect_bytes(b"").is_mp4


def test_a_box_of_size_zero_runs_to_the_end():
    data = struct.pack(">I4s4s", 16, b"ftyp", b"isom") + b"\0" * 4 + struct.pack(">I4s", 0, b"mdat")
    facts = mp4.inspect_bytes(data + b"x" * 100)
    assert facts.is_mp4 and not facts.truncated and facts.brand == "isom"


def box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


box_kinds = st.sampled_from(
    [
        b"ftyp",
        b"moov",
        b"mvhd",
        b"trak",
        b"tkhd",
        b"mdia",
        b"mdhd",
        b"hdlr",
        b"minf",
        b"stbl",
        b"stsd",
        b"mvex",
        b"trex",
        b"mehd",
        b"moof",
        b"traf",
        b"tfhd",
        b"tfdt",
        b"trun",
        b"mdat",
        b"free",
    ]
)
boxes = st.recursive(
    st.builds(box, box_kinds, st.binary(max_size=64)),
    lambda children: st.builds(
        lambda k, cs: box(k, b"".join(cs)), box_kinds, st.lists(children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.lists(boxes, max_size=6).map(b"".join))
def test_box_shaped_input_never_raises(data):
    mp4.inspect_bytes(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(data):
    mp4.inspect_bytes(data)


def test_fuzz_mutated_recordings_never_raise(recordings):
    """10,000 mutations of real recordings: flipped bytes, cuts and splices."""
    rng = random.Random(20261125)
    sources = [recordings[k, 1].read_bytes() for k in ("plain", "faststart", "fragmented")]
    for _ in range(10_000):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data))
            match rng.randrange(4):
                case 0:
                    data[at] = rng.randrange(256)
                case 1:
                    data[at : at + 4] = rng.choice(
                        [b"\0\0\0\0", b"\xff\xff\xff\xff", b"\0\0\0\1", b"\0\0\0\x08"]
                    )
                case 2:
                    del data[at:]
                case 3:
                    data[at:at] = rng.randbytes(rng.randint(1, 64))
            if not data:
                break
        facts = mp4.inspect_bytes(bytes(data))
        assert isinstance(facts, mp4.Mp4Facts)
