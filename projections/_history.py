"""Metric reads with W&B's names: sampled ``history``, paged ``scan``, keys and summary.

Rows are JSON objects with ``_step``, ``_timestamp`` and the keys logged at
that step, kept as stored (NaN and infinities tagged as in the points
message, ``runstate.engine._points``), so that a scan hands them on
without decoding them; the client turns the tags back into floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from runstate.engine._points import STEP, TIMESTAMP, wire_value
from runstate.engine.errors import BadFilter
from runstate.projections._metrics_store import MetricsStore, SeriesInfo
from runstate.projections._sampling import MIN_SAMPLES

__all__ = ["history_rows", "keys_reply", "scan_page"]


def _wanted(series: dict[str, SeriesInfo], keys: Sequence[str] | None) -> list[str] | None:
    """The keys to read: all logged ones, or ``keys`` (None when one of them was never
    logged, so that no row has all of them)."""
    if keys is None:
        return list(series)
    if any(key not in series for key in keys):
        return None
    return list(dict.fromkeys(keys))


def _only(datas: Sequence[bytes], keys: list[str], extra: Sequence[str] = ()) -> list[bytes]:
    """Rows that have every one of ``keys`` and ``extra``, with only those and the
    underscored keys."""
    result = []
    wanted = {*keys, *extra}
    for data in datas:
        row: dict[str, Any] = orjson.loads(data)
        if all(key in row for key in wanted):
            result.append(
                orjson.dumps({k: v for k, v in row.items() if k in wanted or k[0] == "_"})
            )
    return result


def history_rows(
    store: MetricsStore,
    entity: str,
    attempt: int | None,
    stream: str,
    *,
    samples: int,
    keys: Sequence[str] | None,
    x_axis: str,
) -> list[bytes]:
    """Sampled rows (see ``_sampling``): each key keeps what matters within
    ``samples // len(keys)`` rows (at least 8), so at most ``samples`` rows when
    ``samples >= 8 * len(keys)``. With ``keys``, only rows that have all of them
    (and only those keys); with an ``x_axis`` other than ``_step``, only rows that
    have it."""
    if samples < MIN_SAMPLES:
        raise BadFilter(f"samples must be at least {MIN_SAMPLES} (first, last, and buckets)")
    sid = store.stream_id(entity, attempt, stream)
    if sid is None:
        return []
    series = {info.key: info for info in store.series(sid)}
    wanted = _wanted(series, keys)
    if not wanted or (x_axis not in (STEP, TIMESTAMP) and x_axis not in series):
        return []
    per_key = max(MIN_SAMPLES, samples // len(wanted))
    kept: set[int] = set()
    for key in wanted:
        kept.update(store.sampled_steps(series[key], per_key))
    datas = store.rows_at(sid, sorted(kept))
    extra = [x_axis] if x_axis not in (STEP, TIMESTAMP) else []
    if keys is None and not extra:
        return datas
    return _only(datas, wanted if keys is not None else [], extra)


def scan_page(
    store: MetricsStore,
    entity: str,
    attempt: int | None,
    stream: str,
    *,
    keys: Sequence[str] | None,
    min_step: int | None,
    max_step: int | None,
    page_size: int,
    start: int | None,
    max_bytes: int = 1 << 62,
) -> tuple[list[bytes], int | None]:
    """Rows from ``min_step`` to ``max_step`` (both included), ``page_size`` rows of
    steps at a time from ``start`` (fewer when they would pass ``max_bytes``, a reply's
    limit); the rows and the next page's start (None at the end). With ``keys``, only
    rows that have all of them (and only those keys)."""
    sid = store.stream_id(entity, attempt, stream)
    if sid is None:
        return [], None
    wanted: list[str] | None = None
    if keys is not None:
        wanted = _wanted({info.key: info for info in store.series(sid)}, keys)
        if wanted is None:
            return [], None
    first = -(2**63) if min_step is None else min_step
    if start is not None:
        first = max(first, start)
    last = 2**63 - 1 if max_step is None else max_step
    if first > last:
        return [], None
    page = store.rows_between(sid, first, last, page_size)
    if not page:
        return [], None
    size = 0
    for index, (step, data) in enumerate(page):
        size += len(data) + 1
        if size > max_bytes and index > 0:
            return _kept(page[:index], wanted), step
    high = page[-1][0]
    following = high + 1 if len(page) == page_size and high < last else None
    return _kept(page, wanted), following


def _kept(page: Sequence[tuple[int, bytes]], wanted: list[str] | None) -> list[bytes]:
    datas = [data for _, data in page]
    return datas if wanted is None else _only(datas, wanted)


def keys_reply(
    store: MetricsStore, entity: str, attempt: int | None, stream: str
) -> dict[str, Any]:
    """The keys logged, the last step and the summary (each key's latest value)."""
    sid = store.stream_id(entity, attempt, stream)
    if sid is None:
        return {"keys": [], "last_step": None, "summary": {}}
    series = store.series(sid)
    return {
        "keys": [info.key for info in series],
        "last_step": store.last_step(sid),
        "summary": {info.key: wire_value(info.value) for info in series},
    }
