"""A list of runs as columns, for ``Client.runs_frame``: one reply per many thousand runs.

W&B's export of runs to a DataFrame pages them 50 at a time over GraphQL,
each run a nested object. Here one query selects the runs (the same SQL as
``list_runs_json``, with the columns of the table instead of each view's
JSON), and three more read the config, explicit summary and logged summary
values of all of them at once, by primary key. The reply is column lists,
which pandas takes as they are::

    {"columns": {"pathspec": [...], "flow": [...], ...},
     "config": {"lr": [...], ...}, "summary": {"acc": [...], ...},
     "next_cursor": null}

Times are microseconds since the epoch (null: not finished), ``duration``
microseconds; a run without a config or summary key has null there; NaN and
infinities are tagged as in a points batch. A reply stays under the bytes
it may carry: it then ends early, with a cursor to continue.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from runstate.engine._points import wire_value
from runstate.projections._queries import RunQuery, encode_cursor
from runstate.projections._schema import MISSING
from runstate.projections._store_query import runs_sql

__all__ = ["BASE_COLUMNS", "frame_page"]

#: the columns every frame has, in order (then ``config.<key>``, ``summary.<key>``)
BASE_COLUMNS = (
    "pathspec",
    "flow",
    "run_id",
    "display_name",
    "state",
    "user",
    "tags",
    "created_at",
    "finished_at",
    "duration",
)
_SELECT = ", ".join(f"r.{name}" for name in BASE_COLUMNS)
_TIMES = ("finished_at", "duration")

_NAN = {"$f": "nan"}


def _value(value: Any, kind: int) -> Any:
    """A stored (value, kind) (``_conditions.stored_value``) as JSON carries it."""
    if kind == 0:
        return wire_value(value)
    if kind == 1:
        return bool(value)
    if kind == 2:
        return _NAN
    if kind == 5:
        return orjson.loads(value)
    return value


def frame_page(conn: sqlite3.Connection, q: RunQuery, metrics: str | None, max_bytes: int) -> bytes:
    """The reply (JSON) for the first ``q.limit`` runs ``q`` selects, at most ``max_bytes``.

    ``metrics``: the schema name of the attached metrics store, or None.
    """
    sql, args = runs_sql(q, metrics, _SELECT)
    rows = conn.execute(sql, args).fetchall()
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    width = len(BASE_COLUMNS)
    names = orjson.dumps([row[0] for row in rows]).decode()
    picked = "(SELECT value FROM json_each(?))"
    config = conn.execute(
        f"SELECT pathspec, key, value, kind FROM run_config WHERE pathspec IN {picked}", (names,)
    ).fetchall()
    summary = []
    if metrics is not None:
        summary = conn.execute(
            f"SELECT ms.entity, s.key, s.value, s.kind FROM {metrics}.metric_streams AS ms "
            f"JOIN {metrics}.metric_series AS s ON s.stream_id = ms.id "
            f"WHERE ms.entity IN {picked} AND ms.attempt = -1 AND ms.stream = 'default'",
            (names,),
        ).fetchall()
    # explicit values after the logged ones: they win
    summary += conn.execute(
        f"SELECT pathspec, key, value, kind FROM run_summary WHERE pathspec IN {picked}", (names,)
    ).fetchall()
    count = len(rows)
    while True:
        reply = _encode(rows[:count], config, summary, width, q.sort, more or count < len(rows))
        if len(reply) <= max_bytes or count == 1:
            return reply
        count = max(1, int(count * max_bytes * 0.9 / len(reply)))


def _encode(
    rows: list[Any],
    config: list[Any],
    summary: list[Any],
    width: int,
    sort: str,
    more: bool,
) -> bytes:
    index = {row[0]: i for i, row in enumerate(rows)}
    columns: dict[str, list[Any]] = {}
    for name, column in zip(BASE_COLUMNS, zip(*rows, strict=False), strict=False):
        values = list(column)
        if name in _TIMES:
            values = [None if value == MISSING else value for value in values]
        elif name == "tags":
            values = [orjson.loads(value) for value in values]
        columns[name] = values
    if not rows:
        columns = {name: [] for name in BASE_COLUMNS}
    cursor = encode_cursor(sort, tuple(rows[-1][width:])) if more and rows else None
    return orjson.dumps(
        {
            "columns": columns,
            "config": _keyed(config, index),
            "summary": _keyed(summary, index),
            "next_cursor": cursor,
        }
    )


def _keyed(values: list[Any], index: dict[str, int]) -> dict[str, list[Any]]:
    """Rows of (pathspec, key, value, kind) as a column per key, in ``index``'s order."""
    result: dict[str, list[Any]] = {}
    size = len(index)
    for pathspec, key, value, kind in values:
        i = index.get(pathspec)
        if i is None:
            continue  # a run cut from this page
        column = result.get(key)
        if column is None:
            column = result[key] = [None] * size
        column[i] = _value(value, kind)
    return result
