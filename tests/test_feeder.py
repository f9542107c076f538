"""The feeder's frames: what the projector reads back is what the feeder wrote."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runstate.engine._names import Subjects
from runstate.projections._feeder import (
    FeederError,
    FrameReader,
    Mark,
    ShardFolder,
    encode_frame,
    encode_mark,
)
from runstate.projections._store_write import ViewLoader

sequences = st.integers(min_value=1, max_value=2**63)
deliveries = st.lists(
    st.one_of(
        st.tuples(sequences, st.text(min_size=1, max_size=40), st.binary(max_size=300)),
        st.builds(Mark, sequences, st.lists(sequences, max_size=5), st.none(), st.integers(0, 9)),
    ),
    max_size=30,
)


@given(deliveries, st.lists(st.integers(min_value=0, max_value=20_000), max_size=10))
def test_frames_and_marks_read_back_across_any_chunk_boundaries(
    sent: list[tuple[int, str, bytes] | Mark], cuts: list[int]
) -> None:
    stream = b"".join(
        encode_mark(item) if isinstance(item, Mark) else encode_frame(*item) for item in sent
    )
    bounds = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    reader = FrameReader()
    received: list[tuple[int, str, bytes] | Mark] = []
    for start, stop in itertools.pairwise(bounds):
        received += reader.feed(stream[start:stop])
    assert received == sent
    assert not reader.partial


def test_the_feeder_takes_a_run_with_all_its_tasks_or_none_of_it(tmp_path: Path) -> None:
    """Every view an event touches belongs to its run: a run's subjects go to one side."""
    subjects = Subjects("rs")
    loader = ViewLoader.open(str(tmp_path / "store.sqlite3"))
    half = ShardFolder(subjects, 0.5, loader)
    taken = []
    for run in range(200):
        run_side = half.takes(f"rs.ev.Train.{run}.r")
        assert half.takes(f"rs.ev.Train.{run}.t.start.{run * 7}") is run_side
        assert half.takes(f"rs.ev.Train.{run}.t.train.x{run}") is run_side
        taken.append(run_side)
    assert 60 < sum(taken) < 140  # about half of the runs, by a hash of their pathspecs
    # the same runs in another process: the hash is not Python's salted one
    again = ShardFolder(subjects, 0.5, loader)
    assert [again.takes(f"rs.ev.Train.{run}.r") for run in range(200)] == taken
    # a subject that is not a runstate events subject stays with the projector
    for subject in ("other.ev.Train.1.r", "rs.hb.Train.1.r", "rs.ev.Train", "rs.ev.Train.1"):
        assert not ShardFolder(subjects, 0.999, loader).takes(subject)
    assert not any(ShardFolder(subjects, 0.0, loader).takes(f"rs.ev.F.{n}.r") for n in range(99))
    loader.close()


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
        b"\x00\x00\x00\x00\x00\x00\x00\x01\xff\xff\x00\x00\x00\x00",  # a mark, empty
        b"\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01\xff\xff\xff\xff",  # 4 GiB of data
    ],
)
def test_bytes_that_are_no_frame_raise_feeder_error(garbage: bytes) -> None:
    with pytest.raises(FeederError, match="not a frame"):
        FrameReader().feed(garbage)
