"""Deterministic sampling of a metric's history that keeps what matters.

W&B samples history at random: two calls differ and a spike may vanish.
Here the steps of a key are cut into buckets of ``width`` steps, aligned on
multiples of the width (``bucket = step // width``), and kept are:

- the first and the last point, always;
- in every bucket, the point with the minimum, the one with the maximum
  (the earliest on ties; NaN and strings have no order and are never a
  bucket's minimum or maximum) and the last one.

``width`` is the smallest that leaves at most ``buckets(samples)`` buckets
over the key's steps, rounded up to whole blocks of ``block`` steps when
it is wider than one: then a bucket is whole blocks, and the read store
samples a long series from per-block minima, maxima and last steps
(``_metrics_store``) instead of reading every point. That is at most
``3 * buckets + 2 <= samples`` points, and the same points for the same
data every time. With no more than ``samples`` points, all are kept.

This module is the definition; a property test holds the store's
sampling to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["BLOCK", "MIN_SAMPLES", "bucket_width", "buckets", "orderable", "sample_steps"]

#: the fewest samples a sampled read may ask for: first and last, and two buckets' three
#: (aligned buckets over any range need two to be sure of covering it)
MIN_SAMPLES = 8

#: steps per block of the read store's per-block summaries
BLOCK = 256


def buckets(samples: int) -> int:
    """How many buckets ``samples`` points leave room for (each keeps up to 3, plus 2)."""
    return max(1, (samples - 2) // 3)


def bucket_width(lo: int, hi: int, samples: int, block: int = BLOCK) -> int:
    """The width in steps of the buckets over steps ``lo..hi`` (see the module)."""
    count = buckets(samples)
    # (hi - lo) // width <= count - 1 keeps hi // width - lo // width + 1 <= count
    width = max(1, -(-(hi - lo + 1) // max(1, count - 1)))
    if width > block:
        width = -(-width // block) * block
    return width


def orderable(value: Any) -> bool:
    """Whether a value takes part in minima and maxima: a number (bools as 0/1), not NaN."""
    return type(value) is not str and not (type(value) is float and math.isnan(value))


def sample_steps(points: Sequence[tuple[int, Any]], samples: int, block: int = BLOCK) -> list[int]:
    """The steps kept of ``points`` ((step, value), steps increasing), in step order."""
    if len(points) <= samples:
        return [step for step, _ in points]
    lo, hi = points[0][0], points[-1][0]
    width = bucket_width(lo, hi, samples, block)
    kept = {lo, hi}
    # per bucket: (min value, its step), (max value, its step), last step
    lows: dict[int, tuple[Any, int]] = {}
    highs: dict[int, tuple[Any, int]] = {}
    lasts: dict[int, int] = {}
    for step, value in points:
        bucket = step // width
        lasts[bucket] = step
        if not orderable(value):
            continue
        low = lows.get(bucket)
        if low is None or value < low[0]:
            lows[bucket] = (value, step)
        high = highs.get(bucket)
        if high is None or value > high[0]:
            highs[bucket] = (value, step)
    kept.update(lasts.values())
    kept.update(step for _, step in lows.values())
    kept.update(step for _, step in highs.values())
    return sorted(kept)
