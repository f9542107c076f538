"""A list of runs as columns, for ``Client.runs_frame``: one reply per many thousand runs.

W&B's export of runs to a DataFrame pages them 50 at a time over GraphQL,
each run a nested object. Here one query selects the runs (the same SQL as
``list_runs_json``, with the columns of the table instead of each view's
JSON), and three more read the config, explicit summary and logged summary
values of all of them at once, by primary key. The reply is column lists,
and the values of each key by the run's index in the page, made JSON by
SQLite itself (a Python object per value cost more than all the rest)::

    {"next_cursor": null, "count": 3,
     "columns": {"pathspec": [...], "flow": [...], ...},
     "config": {"lr": {"0": 0.1, "2": 0.2}, ...},
     "logged": {"acc": {...}}, "explicit": {"acc": {...}}}

Times are microseconds since the epoch (null: not finished), ``duration``
microseconds; ``logged`` are the latest logged values of the run's own
metrics, ``explicit`` its explicit summary values (which win); NaN and
infinities are tagged as in a points batch. A reply stays under the bytes
it may carry: it then holds fewer runs, with a cursor to continue. The
cursor and the count come first, so that a client can ask for the next
page before it reads this one.
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


#: a stored (value, kind) of ``{a}`` (``_conditions.stored_value``) as JSON, in SQL:
#: NaN and infinities tagged as in a points batch, a REAL with 17 digits (SQLite's JSON
#: writes 15, which may read back as another float)
_JSON_VALUE = """CASE {a}.kind
    WHEN 0 THEN (CASE
        WHEN typeof({a}.value) = 'integer' THEN {a}.value
        WHEN {a}.value > 1.7976931348623157e308 THEN json('{{"$f":"inf"}}')
        WHEN {a}.value < -1.7976931348623157e308 THEN json('{{"$f":"-inf"}}')
        ELSE json(printf('%!.17g', {a}.value)) END)
    WHEN 1 THEN json(CASE WHEN {a}.value THEN 'true' ELSE 'false' END)
    WHEN 2 THEN json('{{"$f":"nan"}}')
    WHEN 5 THEN json({a}.value)
    ELSE {a}.value END"""

#: the REALs SQLite's printf writes exactly in 17 digits: from 1e-30 to 1e30 (0.0 too).
#: Checked against Python's parser on a million values; beyond, some came back one
#: unit off in the last place, so keys with such values are written by Python.
_UNSAFE_REAL = """{a}.kind = 0 AND typeof({a}.value) = 'real' AND {a}.value != 0
    AND abs({a}.value) <= 1.7976931348623157e308
    AND NOT abs({a}.value) BETWEEN 1e-30 AND 1e30"""


def frame_page(conn: sqlite3.Connection, q: RunQuery, metrics: str | None, max_bytes: int) -> bytes:
    """The reply (JSON) for the first ``q.limit`` runs ``q`` selects, at most ``max_bytes``
    (fewer runs when ``q.limit`` would not fit). ``metrics``: the schema name of the
    attached metrics store, or None."""
    while True:
        reply = _page(conn, q, metrics)
        if len(reply) <= max_bytes or q.limit == 1:
            return reply
        q = q.model_copy(update={"limit": max(1, int(q.limit * max_bytes * 0.9 / len(reply)))})


def _page(conn: sqlite3.Connection, q: RunQuery, metrics: str | None) -> bytes:
    sql, args = runs_sql(q, metrics, _SELECT)
    rows = conn.execute(sql, args).fetchall()
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    width = len(BASE_COLUMNS)
    columns: dict[str, list[Any]] = {name: [] for name in BASE_COLUMNS}
    for name, column in zip(BASE_COLUMNS, zip(*rows, strict=False), strict=False):
        columns[name] = list(column)
    for name in _TIMES:
        columns[name] = [None if value == MISSING else value for value in columns[name]]
    # the tags column is JSON already: joined as it is, not parsed and made again
    tags = ("[" + ",".join(columns.pop("tags")) + "]").encode()
    page = orjson.dumps(columns["pathspec"]).decode()
    config = _keyed(conn, "run_config AS c ON c.pathspec = p.value", page)
    explicit = _keyed(conn, "run_summary AS c ON c.pathspec = p.value", page)
    logged: list[Any] = []
    if metrics is not None:
        logged = _keyed(
            conn,
            f"{metrics}.metric_streams AS ms ON ms.entity = p.value AND ms.attempt = -1 "
            f"AND ms.stream = 'default' JOIN {metrics}.metric_series AS c ON c.stream_id = ms.id",
            page,
        )
    cursor = encode_cursor(q.sort, tuple(rows[-1][width:])) if more and rows else None
    return b"".join(
        [
            b'{"next_cursor":',
            orjson.dumps(cursor),
            b',"count":%d,"columns":' % len(rows),
            orjson.dumps(columns)[:-1],
            b',"tags":',
            tags,
            b'},"config":',
            _objects(config),
            b',"logged":',
            _objects(logged),
            b',"explicit":',
            _objects(explicit),
            b"}",
        ]
    )


def _keyed(conn: sqlite3.Connection, source: str, page: str) -> list[tuple[str, str]]:
    """(key, JSON object of index -> value) of the values ``source`` joins to the page's
    runs (``p``), made JSON by SQLite: no Python object per value, but for keys with
    a float SQLite cannot write exactly."""
    joined = f"FROM json_each(?) AS p JOIN {source}"
    rows = conn.execute(
        f"SELECT c.key, json_group_object(p.key, {_JSON_VALUE.format(a='c')}) {joined} "
        "GROUP BY c.key",
        (page,),
    ).fetchall()
    unsafe = {
        key
        for (key,) in conn.execute(
            f"SELECT DISTINCT c.key {joined} WHERE {_UNSAFE_REAL.format(a='c')}", (page,)
        )
    }
    if not unsafe:
        return rows
    result = []
    for key, values in rows:
        if key in unsafe:
            exact = {
                str(index): _value(value, kind)
                for index, value, kind in conn.execute(
                    f"SELECT p.key, c.value, c.kind {joined} AND c.key = ?", (page, key)
                )
            }
            values = orjson.dumps(exact).decode()
        result.append((key, values))
    return result


def _value(value: Any, kind: int) -> Any:
    """``_JSON_VALUE`` in Python."""
    if kind == 0:
        return wire_value(value)
    if kind == 1:
        return bool(value)
    if kind == 2:
        return {"$f": "nan"}
    if kind == 5:
        return orjson.loads(value)
    return value


def _objects(keyed: list[tuple[str, str]]) -> bytes:
    """``{key: {index: value}}`` from (key, JSON object) rows, without parsing them."""
    return (
        b"{" + b",".join(orjson.dumps(key) + b":" + values.encode() for key, values in keyed) + b"}"
    )
