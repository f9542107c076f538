"""Deterministic sampling of metric history: the definition, and the store's SQL against it."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from runstate.engine._points import PointBatch
from runstate.projections._metrics_store import MetricsStore
from runstate.projections._sampling import (
    MIN_SAMPLES,
    bucket_width,
    orderable,
    sample_steps,
)

values = st.one_of(
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.booleans(),
    st.sampled_from(["a", "b"]),
)


@st.composite
def series(draw: st.DrawFn) -> list[tuple[int, Any]]:
    """Points with increasing steps (gaps allowed) and values of every kind."""
    gaps = draw(st.lists(st.integers(1, 4), min_size=1, max_size=300))
    first = draw(st.integers(0, 50))
    steps = [first + sum(gaps[:i]) for i in range(len(gaps))]
    return [(step, draw(values)) for step in steps]


samples_counts = st.integers(MIN_SAMPLES, 60)
blocks = st.sampled_from([1, 2, 4, 256])


@given(series(), samples_counts)
def test_first_and_last_are_always_kept(points: list[tuple[int, Any]], samples: int) -> None:
    """The first and the last point are in every sample."""
    kept = sample_steps(points, samples)
    assert kept[0] == points[0][0] and kept[-1] == points[-1][0]


@given(series(), samples_counts, blocks)
def test_never_more_than_samples_and_all_when_they_fit(
    points: list[tuple[int, Any]], samples: int, block: int
) -> None:
    """At most ``samples`` steps are kept, in step order; all of them when they fit."""
    kept = sample_steps(points, samples, block)
    assert len(kept) <= samples
    assert kept == sorted(set(kept))
    if len(points) <= samples:
        assert kept == [step for step, _ in points]


@given(series(), samples_counts, blocks)
def test_every_buckets_minimum_maximum_and_last_are_kept(
    points: list[tuple[int, Any]], samples: int, block: int
) -> None:
    """In each bucket the minimum, the maximum (orderable values) and the last point are kept."""
    kept = set(sample_steps(points, samples, block))
    if len(points) <= samples:
        return
    width = bucket_width(points[0][0], points[-1][0], samples, block)
    by_bucket: dict[int, list[tuple[int, Any]]] = {}
    for step, value in points:
        by_bucket.setdefault(step // width, []).append((step, value))
    for members in by_bucket.values():
        assert members[-1][0] in kept
        ordered = [value for _, value in members if orderable(value)]
        if ordered:
            kept_values = [value for step, value in members if step in kept and orderable(value)]
            assert min(ordered) in kept_values and max(ordered) in kept_values


@given(series(), samples_counts)
def test_sampling_is_deterministic(points: list[tuple[int, Any]], samples: int) -> None:
    """The same points give the same sample every time."""
    assert sample_steps(points, samples) == sample_steps(list(points), samples)


def test_nan_and_strings_are_never_a_minimum_or_maximum() -> None:
    """NaN and strings have no order: only numbers (and bools) are compared."""
    assert not orderable(math.nan) and not orderable("x")
    assert orderable(math.inf) and orderable(True) and orderable(-3)


@settings(max_examples=60, deadline=None)
@given(series(), samples_counts, blocks, st.integers(1, 50))
def test_the_store_keeps_the_same_steps_as_the_definition(
    points: list[tuple[int, Any]], samples: int, block: int, batch: int
) -> None:
    """The store's sampling (from points, or from block summaries) keeps what the definition
    keeps, whatever the batches the points came in."""
    store = MetricsStore(":memory:", block=block)
    try:
        rows = [{"_step": step, "_timestamp": 0.0, "m": value} for step, value in points]
        for n, start in enumerate(range(0, len(rows), batch), start=1):
            store.apply([PointBatch("F/1/s/1", 0, "default", rows[start : start + batch])], n)
        stream = store.stream_id("F/1/s/1", 0, "default")
        assert stream is not None
        (info,) = store.series(stream)
        assert info.count == len(points)
        assert store.sampled_steps(info, samples) == sample_steps(points, samples, block)
    finally:
        store.close()
