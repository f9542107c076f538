"""The tables of the SQLite read store, and how views map to their rows.

Each view is stored whole as its JSON, beside the columns the queries
filter and sort on (``_store_query`` says which index serves which query).

A value that is missing (a run not finished, a run or task id that is not a
number, a task outside a foreach) is stored as ``MISSING``, the smallest
64-bit integer, rather than NULL: it sorts as the smallest value and keeps
row-value comparisons (``(a, b) < (?, ?)``) usable as index ranges. Times
are integer microseconds since the epoch, UTC.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import JsonValue

from runstate.projections._views import RunView, TaskView

__all__ = [
    "MISSING",
    "RUNS",
    "RUN_CONFIG",
    "RUN_PARAMS",
    "RUN_SUMMARY",
    "RUN_TAGS",
    "SCHEMA_VERSION",
    "TASKS",
    "Table",
    "canonical_json",
    "create_schema",
    "ensure_schema",
    "from_micros",
    "micros",
    "run_row",
    "task_order",
    "task_row",
    "transaction",
]

#: bump when the tables change: a store of another version is emptied and rebuilt from the log
SCHEMA_VERSION = 2

#: the stored value of a missing number or time; sorts below every real value
MISSING = -(2**63)
_MAX = 2**63 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE runs (
    pathspec TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    run_id TEXT NOT NULL,
    run_number INTEGER NOT NULL,
    state TEXT NOT NULL,
    user TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    duration INTEGER NOT NULL,
    display_name TEXT,
    tags TEXT NOT NULL,
    json BLOB NOT NULL
);
CREATE INDEX runs_by_flow_created_at ON runs (flow, created_at, run_number, pathspec);
CREATE INDEX runs_by_flow_state_created ON runs (flow, state, created_at, run_number, pathspec);
CREATE INDEX runs_by_flow_finished_at ON runs (flow, finished_at, pathspec);
CREATE INDEX runs_by_flow_duration ON runs (flow, duration, pathspec);
CREATE INDEX runs_by_flow_run_number ON runs (flow, run_number, pathspec);
CREATE INDEX runs_by_created_at ON runs (created_at, run_number, pathspec);
CREATE INDEX runs_by_finished_at ON runs (finished_at, pathspec);
CREATE INDEX runs_by_duration ON runs (duration, pathspec);

CREATE TABLE run_tags (
    pathspec TEXT NOT NULL,
    tag TEXT NOT NULL,
    flow TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    run_number INTEGER NOT NULL,
    PRIMARY KEY (pathspec, tag)
) WITHOUT ROWID;
CREATE INDEX run_tags_by_flow ON run_tags (tag, flow, created_at, run_number, pathspec);
CREATE INDEX run_tags_by_flow_state
    ON run_tags (tag, flow, state, created_at, run_number, pathspec);
CREATE INDEX run_tags_by_created_at ON run_tags (tag, created_at, run_number, pathspec);

CREATE TABLE run_params (
    pathspec TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (pathspec, name)
) WITHOUT ROWID;

-- config: parameters merged with config updates; summary: explicit summary values only
-- (logged values are in the metrics store); value and kind as _conditions.stored_value
CREATE TABLE run_config (
    pathspec TEXT NOT NULL,
    key TEXT NOT NULL,
    value,
    kind INTEGER NOT NULL,
    PRIMARY KEY (pathspec, key)
) WITHOUT ROWID;

CREATE TABLE run_summary (
    pathspec TEXT NOT NULL,
    key TEXT NOT NULL,
    value,
    kind INTEGER NOT NULL,
    PRIMARY KEY (pathspec, key)
) WITHOUT ROWID;

CREATE TABLE tasks (
    pathspec TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    step TEXT NOT NULL,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    foreach_index INTEGER NOT NULL,
    task_number INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    json BLOB NOT NULL
);
CREATE INDEX tasks_in_order ON tasks (run, step, foreach_index, task_number, task_id);

CREATE TABLE flows (
    name TEXT PRIMARY KEY,
    run_count INTEGER NOT NULL,
    last_created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- an upsert that updates an existing run does not fire this
CREATE TRIGGER runs_count_flow AFTER INSERT ON runs BEGIN
    INSERT INTO flows (name, run_count, last_created_at) VALUES (new.flow, 1, new.created_at)
    ON CONFLICT (name) DO UPDATE SET
        run_count = run_count + 1,
        last_created_at = max(last_created_at, excluded.last_created_at);
END;

CREATE TABLE deadletters (
    sequence INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    data BLOB NOT NULL,
    at INTEGER NOT NULL
);
"""

_TABLES = (
    "meta",
    "runs",
    "run_tags",
    "run_params",
    "run_config",
    "run_summary",
    "tasks",
    "flows",
    "deadletters",
)


@dataclass(frozen=True, slots=True)
class Table:
    """How the writer writes a table: a row is its key, compared columns, then written ones."""

    name: str
    keys: tuple[str, ...]
    compared: tuple[str, ...]
    written: tuple[str, ...] = ()


RUNS = Table(
    "runs",
    ("pathspec",),
    (
        "flow",
        "run_id",
        "run_number",
        "state",
        "user",
        "created_at",
        "finished_at",
        "duration",
        "display_name",
        "tags",
    ),
    ("json",),
)
RUN_TAGS = Table("run_tags", ("pathspec", "tag"), ("flow", "state", "created_at", "run_number"))
RUN_PARAMS = Table("run_params", ("pathspec", "name"), ("value",))
RUN_CONFIG = Table("run_config", ("pathspec", "key"), ("value", "kind"))
RUN_SUMMARY = Table("run_summary", ("pathspec", "key"), ("value", "kind"))
TASKS = Table(
    "tasks",
    ("pathspec",),
    ("run", "step", "task_id", "state", "foreach_index", "task_number", "created_at"),
    ("json",),
)


# -- creating and migrating ------------------------------------------------------


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables, unless they exist at ``SCHEMA_VERSION`` (another version is emptied)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if exists:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and row[0] == SCHEMA_VERSION:
            return
    with transaction(conn):
        create_schema(conn)


def create_schema(conn: sqlite3.Connection) -> None:
    """Drop every table and create them empty, with checkpoint 0 (inside a transaction)."""
    for table in _TABLES:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    for statement in _statements(_SCHEMA):
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("schema_version", SCHEMA_VERSION), ("checkpoint", 0)],
    )


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction on ``conn`` (opened with ``isolation_level=None``)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # some errors end the transaction themselves
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _statements(script: str) -> Iterator[str]:
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""


# -- rows ----------------------------------------------------------------------


def micros(value: datetime) -> int:
    """A time as stored: microseconds since the epoch (a naive time is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """A stored time as a UTC datetime."""
    return _EPOCH + value * _MICROSECOND


def _number(value: int | None) -> int:
    if value is None:
        return MISSING
    return min(max(value, MISSING + 1), _MAX)


def _task_number(task_id: str) -> int:
    try:
        return _number(int(task_id))
    except ValueError:
        return MISSING


def task_order(view: TaskView) -> tuple[int, int, str]:
    """The key the tasks of a step are listed by (the store's ``tasks_in_order``)."""
    return _number(view.foreach_index), _task_number(view.task_id), view.task_id


def run_row(view: RunView) -> tuple[Any, ...]:
    """The columns of ``RUNS`` after the key."""
    created = micros(view.created_at)
    if view.finished_at is None:
        finished = duration = MISSING
    else:
        finished = micros(view.finished_at)
        duration = finished - micros(view.started_at or view.created_at)
    return (
        view.flow,
        view.run_id,
        _number(view.run_number),
        view.state.value,
        view.user,
        created,
        finished,
        duration,
        view.display_name,
        orjson.dumps(sorted(view.tags)).decode(),
        view.model_dump_json().encode(),
    )


def task_row(view: TaskView) -> tuple[Any, ...]:
    """The columns of ``TASKS`` after the key."""
    return (
        f"{view.flow}/{view.run_id}",
        view.step,
        view.task_id,
        view.state.value,
        _number(view.foreach_index),
        _task_number(view.task_id),
        micros(view.created_at),
        view.model_dump_json().encode(),
    )


def canonical_json(value: JsonValue) -> str:
    """One text per JSON value, so parameters compare by equality of text (``1.0`` is ``1``)."""
    normal = _normalize(value)
    try:
        return orjson.dumps(normal, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        return json.dumps(normal, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _normalize(value: JsonValue) -> JsonValue:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _normalize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    return value
