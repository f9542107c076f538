"""Metric rows and points in SQLite, laid out for sampled history, scans and summaries.

::

    metric_streams(id, entity, attempt, stream)             -- one per entity attempt and stream
    metric_rows(stream_id, step, data)                      -- a row as JSON (scans pass it on)
    metric_series(id, stream_id, key, first_step, last_step, count, value, kind)
                                                            -- one per key; value: the latest
    metric_points(series, step, value, kind)                -- a key's points by step
    metric_blocks(series, block, low, low_step, high, high_step, last_step)
                                                            -- per BLOCK steps: min, max, last
    metric_checkpoint(id = 1, applied)                      -- last points sequence applied

``entity`` is a run or task pathspec, ``attempt`` the task's attempt (-1 for
a run). ``kind`` says how ``value`` reads back: 0 a number, 1 a bool
(stored 0/1), 2 NaN (stored NULL: SQLite has no NaN), 3 a string. A row's
JSON keeps NaN and infinities tagged as on the wire, so a scan hands rows
on without decoding them. Blocks let a sampled read of a long series
(``_sampling``) read one summary per ``BLOCK`` steps instead of every
point. A chunk of batches and the checkpoint commit in one transaction:
each points message is applied exactly once.

The store is a file of its own beside the events read store (or
``:memory:``): the metrics projector writes it on its own connection, so
high-volume points never hold the events projector's transactions. The read
store attaches it read-only (``uri``) to filter and sort runs by summary
values; an in-memory store is therefore a named shared-cache database.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from runstate.engine._points import STEP, PointBatch, wire_value
from runstate.engine._private import private_file
from runstate.projections._sampling import BLOCK, bucket_width, orderable, sample_steps

__all__ = ["MetricsStore", "SeriesInfo"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metric_streams (
    id INTEGER PRIMARY KEY,
    entity TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    stream TEXT NOT NULL,
    UNIQUE (entity, attempt, stream)
);
CREATE TABLE IF NOT EXISTS metric_rows (
    stream_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (stream_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metric_series (
    id INTEGER PRIMARY KEY,
    stream_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    first_step INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    count INTEGER NOT NULL,
    value,
    kind INTEGER NOT NULL,
    UNIQUE (stream_id, key)
);
CREATE TABLE IF NOT EXISTS metric_points (
    series INTEGER NOT NULL,
    step INTEGER NOT NULL,
    value,
    kind INTEGER NOT NULL,
    PRIMARY KEY (series, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metric_blocks (
    series INTEGER NOT NULL,
    block INTEGER NOT NULL,
    low,
    low_step INTEGER,
    high,
    high_step INTEGER,
    last_step INTEGER NOT NULL,
    PRIMARY KEY (series, block)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metric_checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    applied INTEGER NOT NULL
);
"""

_NUMBER, _BOOL, _NAN, _TEXT = 0, 1, 2, 3

#: names of in-memory stores in this process (shared cache: the read store attaches them)
_memory_names = itertools.count(1)
_RUN_ATTEMPT = -1

# a block's summary: [low, low_step, high, high_step, last_step]
_Block = list[Any]


def _stored(value: Any) -> tuple[Any, int]:
    kind = type(value)
    if kind is bool:
        return int(value), _BOOL
    if kind is str:
        return value, _TEXT
    if kind is float and value != value:
        return None, _NAN
    return value, _NUMBER


def _read(value: Any, kind: int) -> Any:
    if kind == _NUMBER or kind == _TEXT:
        return value
    if kind == _BOOL:
        return bool(value)
    return math.nan


def _fold(block: _Block | None, step: int, value: Any) -> _Block:
    """A block's summary with one more point (steps arrive in increasing order)."""
    if block is None:
        block = [None, None, None, None, step]
    block[4] = max(block[4], step)
    if orderable(value):
        if block[1] is None or value < block[0]:
            block[0], block[1] = value, step
        if block[3] is None or value > block[2]:
            block[2], block[3] = value, step
    return block


def _fold_chunk(block: _Block | None, chunk: list[tuple[int, Any]]) -> _Block:
    """A block's summary with points that come after its own (``_fold`` for each)."""
    ordered = [(value, step) for step, value in chunk if orderable(value)]
    last = chunk[-1][0]
    if block is None:
        block = [None, None, None, None, last]
    block[4] = max(block[4], last)
    if ordered:
        low = min(ordered)  # the least value, the earliest step on ties
        high = max(ordered, key=_highest_first)
        if block[1] is None or low[0] < block[0]:
            block[0], block[1] = low
        if block[3] is None or high[0] > block[2]:
            block[2], block[3] = high
    return block


def _highest_first(point: tuple[Any, int]) -> tuple[Any, int]:
    return point[0], -point[1]


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """One key of an entity's stream: its steps, how many points, its latest value."""

    id: int
    key: str
    first_step: int
    last_step: int
    count: int
    value: Any


class MetricsStore:
    """Metric rows, series and points in SQLite; one writer (the metrics projector),
    reads on the event loop. ``block``: steps per block summary (tests make it small)."""

    def __init__(self, path: Path | str, *, block: int = BLOCK) -> None:
        self.path = str(path)
        self.block = block
        if self.path == ":memory:":
            name = f"runstate-metrics-{id(self)}-{next(_memory_names)}"
            target = f"file:{name}?mode=memory&cache=shared"
            #: where a reader attaches this store (read-only for a file)
            self.uri = target
        else:
            target = self.path
            private_file(Path(self.path))  # 0600; SQLite gives its -wal and -shm the same mode
            self.uri = Path(self.path).resolve().as_uri() + "?mode=ro"
        self._db = sqlite3.connect(
            target,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=256,
            uri=self.path == ":memory:",
        )
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA cache_size = -65536")
        self._db.execute("PRAGMA temp_store = MEMORY")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def checkpoint(self) -> int:
        """The last points sequence whose batch is committed (0 for none)."""
        row = self._db.execute("SELECT applied FROM metric_checkpoint WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def clear(self) -> None:
        """Forget every row and point and the checkpoint (for a rebuild)."""
        self._db.executescript(
            "DELETE FROM metric_blocks; DELETE FROM metric_points; DELETE FROM metric_series;"
            "DELETE FROM metric_rows; DELETE FROM metric_streams; DELETE FROM metric_checkpoint;"
        )

    # -- writing ---------------------------------------------------------------

    def apply(self, batches: Iterable[PointBatch], checkpoint: int) -> int:
        """Store the batches' rows and the new checkpoint in one transaction; returns
        the points stored."""
        db = self._db
        stored = 0
        db.execute("BEGIN")
        try:
            for batch in batches:
                stored += self._apply_batch(batch)
            db.execute(
                "INSERT INTO metric_checkpoint (id, applied) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET applied = excluded.applied",
                (checkpoint,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return stored

    def _stream_id(self, batch: PointBatch) -> int:
        where = (batch.pathspec, _RUN_ATTEMPT if batch.attempt is None else batch.attempt)
        found = self._db.execute(
            "SELECT id FROM metric_streams WHERE entity = ? AND attempt = ? AND stream = ?",
            (*where, batch.stream),
        ).fetchone()
        if found is not None:
            return int(found[0])
        cursor = self._db.execute(
            "INSERT INTO metric_streams (entity, attempt, stream) VALUES (?, ?, ?)",
            (*where, batch.stream),
        )
        return int(cursor.lastrowid or 0)

    def _apply_batch(self, batch: PointBatch) -> int:
        db = self._db
        stream_id = self._stream_id(batch)
        last_row = db.execute(
            "SELECT max(step) FROM metric_rows WHERE stream_id = ?", (stream_id,)
        ).fetchone()[0]
        # the points of each key, in row order; rows as stored (merged at a repeated step)
        by_key: dict[str, list[tuple[int, Any]]] = {}
        fresh: list[tuple[int, int, bytes]] = []
        merged: list[tuple[bytes, int, int]] = []
        tagged = batch.tagged
        for row in batch.rows:
            step = row[STEP]
            for key, value in row.items():
                if key[0] != "_":  # _step and _timestamp live in the row only
                    points = by_key.get(key)
                    if points is None:
                        points = by_key[key] = []
                    points.append((step, value))
            # the row as it travelled: NaN and infinities tagged again, if it had any
            data = orjson.dumps(
                {key: wire_value(value) for key, value in row.items()} if tagged else row
            )
            if last_row is not None and step <= last_row:
                merged.append((data, stream_id, step))
            else:
                fresh.append((stream_id, step, data))
        db.executemany("INSERT INTO metric_rows (stream_id, step, data) VALUES (?, ?, ?)", fresh)
        for data, sid, step in merged:  # a step logged again: keys added to its row
            db.execute(
                "INSERT INTO metric_rows (stream_id, step, data) VALUES (?, ?, ?) "
                "ON CONFLICT (stream_id, step) DO UPDATE SET data = CAST(json_patch("
                "CAST(data AS TEXT), CAST(excluded.data AS TEXT)) AS BLOB)",
                (sid, step, data),
            )
        count = 0
        for key, points in by_key.items():
            count += len(points)
            self._apply_points(stream_id, key, points)
        return count

    def _apply_points(self, stream_id: int, key: str, points: list[tuple[int, Any]]) -> None:
        db = self._db
        found = db.execute(
            "SELECT id, first_step, last_step, count FROM metric_series "
            "WHERE stream_id = ? AND key = ?",
            (stream_id, key),
        ).fetchone()
        steps = [step for step, _ in points]
        if found is None:
            series, first, last, seen = None, steps[0], -1, 0
        else:
            series, first, last, seen = found
        # a step not after the series' last may be stored already (logged again): counted
        # once, and its block summed up again from its points
        again = {step for step in steps if step <= last}
        new = len(set(steps)) - len(again)
        for step in again:
            exists = db.execute(
                "SELECT 1 FROM metric_points WHERE series = ? AND step = ?", (series, step)
            ).fetchone()
            new += exists is None
        latest_step = steps[-1]
        latest = points[-1][1]
        value, kind = _stored(latest)
        if series is None:
            series = db.execute(
                "INSERT INTO metric_series (stream_id, key, first_step, last_step, count, "
                "value, kind) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stream_id, key, first, latest_step, new, value, kind),
            ).lastrowid
        else:
            if latest_step < last:  # a foreign writer's step went back: keep the latest
                kept = db.execute(
                    "SELECT value, kind FROM metric_series WHERE id = ?", (series,)
                ).fetchone()
                latest_step, value, kind = last, kept[0], kept[1]
            db.execute(
                "UPDATE metric_series SET first_step = ?, last_step = ?, count = ?, "
                "value = ?, kind = ? WHERE id = ?",
                (min(first, steps[0]), latest_step, seen + new, value, kind, series),
            )
        db.executemany(
            "INSERT OR REPLACE INTO metric_points (series, step, value, kind) VALUES (?, ?, ?, ?)",
            [
                (series, step, value, _NUMBER)
                if type(value) is float and value == value
                else (series, step, *_stored(value))
                for step, value in points
            ],
        )
        self._apply_blocks(int(series or 0), points, again)

    def _apply_blocks(self, series: int, points: list[tuple[int, Any]], again: set[int]) -> None:
        db = self._db
        size = self.block
        touched: dict[int, _Block | None] = {}
        redo = {step // size for step in again}
        # the points of each block (they come in step order), folded with the builtins
        start = 0
        while start < len(points):
            number = points[start][0] // size
            end = start + 1
            while end < len(points) and points[end][0] // size == number:
                end += 1
            chunk = points[start:end]
            start = end
            if number in redo:
                continue
            row = db.execute(
                "SELECT low, low_step, high, high_step, last_step FROM metric_blocks "
                "WHERE series = ? AND block = ?",
                (series, number),
            ).fetchone()
            touched[number] = _fold_chunk(list(row) if row is not None else None, chunk)
        for number in redo:  # summed up again from the points now stored
            block: _Block | None = None
            for step, value, kind in db.execute(
                "SELECT step, value, kind FROM metric_points WHERE series = ? "
                "AND step BETWEEN ? AND ? ORDER BY step",
                (series, number * size, number * size + size - 1),
            ):
                block = _fold(block, step, _read(value, kind))
            touched[number] = block
        db.executemany(
            "INSERT OR REPLACE INTO metric_blocks (series, block, low, low_step, high, "
            "high_step, last_step) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(series, number, *block) for number, block in touched.items() if block is not None],
        )

    # -- reading ---------------------------------------------------------------

    def stream_id(self, entity: str, attempt: int | None, stream: str) -> int | None:
        """The id of an entity attempt's stream, None if it logged nothing there."""
        row = self._db.execute(
            "SELECT id FROM metric_streams WHERE entity = ? AND attempt = ? AND stream = ?",
            (entity, _RUN_ATTEMPT if attempt is None else attempt, stream),
        ).fetchone()
        return None if row is None else int(row[0])

    def series(self, stream_id: int) -> list[SeriesInfo]:
        """Every key of a stream, by key."""
        rows = self._db.execute(
            "SELECT id, key, first_step, last_step, count, value, kind FROM metric_series "
            "WHERE stream_id = ? ORDER BY key",
            (stream_id,),
        ).fetchall()
        return [SeriesInfo(r[0], r[1], r[2], r[3], r[4], _read(r[5], r[6])) for r in rows]

    def last_step(self, stream_id: int) -> int | None:
        """The step of a stream's last row."""
        row = self._db.execute(
            "SELECT max(step) FROM metric_rows WHERE stream_id = ?", (stream_id,)
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def attempts(self, entity: str) -> list[int]:
        """The attempts of a task that logged metrics."""
        rows = self._db.execute(
            "SELECT DISTINCT attempt FROM metric_streams WHERE entity = ? ORDER BY attempt",
            (entity,),
        ).fetchall()
        return [row[0] for row in rows]

    def sampled_steps(self, info: SeriesInfo, samples: int) -> list[int]:
        """The steps ``_sampling.sample_steps`` keeps of a series: from its points when
        its buckets are narrower than a block, else from its block summaries."""
        lo, hi = info.first_step, info.last_step
        width = bucket_width(lo, hi, samples, self.block)
        if info.count <= samples or width < self.block:
            points = [
                (step, _read(value, kind))
                for step, value, kind in self._db.execute(
                    "SELECT step, value, kind FROM metric_points WHERE series = ? ORDER BY step",
                    (info.id,),
                )
            ]
            return sample_steps(points, samples, self.block)
        per_bucket = width // self.block
        kept = {lo, hi}
        lows: dict[int, tuple[Any, int]] = {}
        highs: dict[int, tuple[Any, int]] = {}
        lasts: dict[int, int] = {}
        for number, low, low_step, high, high_step, last_step in self._db.execute(
            "SELECT block, low, low_step, high, high_step, last_step FROM metric_blocks "
            "WHERE series = ? ORDER BY block",
            (info.id,),
        ):
            bucket = number // per_bucket
            lasts[bucket] = last_step
            if low_step is None:
                continue
            best = lows.get(bucket)
            if best is None or low < best[0]:
                lows[bucket] = (low, low_step)
            best = highs.get(bucket)
            if best is None or high > best[0]:
                highs[bucket] = (high, high_step)
        kept.update(lasts.values())
        kept.update(step for _, step in lows.values())
        kept.update(step for _, step in highs.values())
        return sorted(kept)

    def rows_at(self, stream_id: int, steps: Sequence[int]) -> list[bytes]:
        """A stream's rows (JSON) at some steps, in step order."""
        result: list[bytes] = []
        for start in range(0, len(steps), 500):
            chunk = steps[start : start + 500]
            marks = ",".join("?" * len(chunk))
            result.extend(
                row[0]
                for row in self._db.execute(
                    f"SELECT data FROM metric_rows WHERE stream_id = ? AND step IN ({marks}) "
                    "ORDER BY step",
                    (stream_id, *chunk),
                )
            )
        return result

    def rows_between(
        self, stream_id: int, first: int, last: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` of a stream's (step, row JSON) from ``first`` to ``last``."""
        return self._db.execute(
            "SELECT step, data FROM metric_rows WHERE stream_id = ? AND step BETWEEN ? AND ? "
            "ORDER BY step LIMIT ?",
            (stream_id, first, last, limit),
        ).fetchall()
