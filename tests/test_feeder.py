"""The feeder's frames: what the projector reads back is what the feeder wrote."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runstate.projections._feeder import FeederError, FrameReader, encode_frame

deliveries = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=2**63),
        st.text(min_size=1, max_size=40),
        st.binary(max_size=300),
    ),
    max_size=30,
)


@given(deliveries, st.lists(st.integers(min_value=0, max_value=20_000), max_size=10))
def test_frames_read_back_across_any_chunk_boundaries(
    sent: list[tuple[int, str, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(*delivery) for delivery in sent)
    bounds = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    reader = FrameReader()
    received: list[tuple[int, str, bytes]] = []
    for start, stop in itertools.pairwise(bounds):
        received += reader.feed(stream[start:stop])
    assert received == sent
    assert not reader.partial


def test_a_cut_frame_is_held_until_its_end_arrives() -> None:
    frame = encode_frame(7, "rs.ev.F.1", b'[{"x": 1}]')
    reader = FrameReader()
    assert reader.feed(frame[:-3]) == []
    assert reader.partial
    assert reader.feed(frame[-3:]) == [(7, "rs.ev.F.1", b'[{"x": 1}]')]
    assert not reader.partial


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 14,  # sequence 0
        b"\x00\x00\x00\x00\x00\x00\x00\x01\xff\xff\x00\x00\x00\x00",  # 65,535-byte subject
        b"\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01\xff\xff\xff\xff",  # 4 GiB of data
    ],
)
def test_bytes_that_are_no_frame_raise_feeder_error(garbage: bytes) -> None:
    with pytest.raises(FeederError, match="not a frame"):
        FrameReader().feed(garbage)
