"""Querying the SQLite read store: the SELECTs the query service answers with.

Reads run on any thread, on a connection of their own: in WAL mode a reader
sees the last committed transaction and never waits for the writer.

How each query stays cheap as runs accumulate (the planner's choices are
pinned by ``tests/test_store.py`` with EXPLAIN QUERY PLAN):

- a run or task by pathspec: its primary key;
- runs of a flow in sort order: ``runs_by_flow_<key>``, walked from the
  cursor (keyset pagination, no OFFSET); without a flow ``runs_by_<key>``
  (but for ``run_number``: numbers count per flow, so across flows that
  order is a sort of every run, not worth an index on every write);
- the latest run: ``runs_by_flow_created_at`` from its newest end; the
  latest successful run: ``runs_by_flow_state_created`` at state
  ``completed``, so failed runs are never visited (in a namespace, the same
  through ``run_tags_by_flow`` and ``run_tags_by_flow_state``);
- runs with a tag or in a namespace: ``run_tags`` (one row per user or
  system tag, carrying the flow, state and created time) walked by tag (and
  flow, and state) in creation order, so "the first page of the production
  runs of Train, newest first" reads a page's worth of rows. The first
  required tag drives; further tags, ``tags_any`` and parameters are
  checked per run through primary keys. Sorted by another key than
  ``created_at``, the tag's runs are sorted in a temporary b-tree;
- tasks of a step: ``tasks_in_order`` (run, step, foreach index, task
  number, task id), the task order;
- conditions on and sorts by summary or config values
  (``runstate.projections._conditions``): each key named is a left join by
  primary key, ``run_config``/``run_summary`` (explicit summary values)
  here and, when the metrics store is attached (``attach_metrics``), its
  ``metric_series`` of the run's own stream (logged latest values): an
  explicit value wins. Such a sort orders the selected runs in a temporary
  b-tree.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from runstate.engine._states import RunState
from runstate.projections._conditions import condition_sql
from runstate.projections._queries import (
    CursorValue,
    DeadLetter,
    FlowSummary,
    Page,
    RunQuery,
    TaskQuery,
    decode_cursor,
    encode_cursor,
)
from runstate.projections._schema import MISSING, canonical_json, from_micros, micros
from runstate.projections._views import RunView, StepView, TaskView

__all__ = ["StoreQueries", "runs_sql", "tasks_sql"]

#: sort key -> the columns that order it, ending in a unique one
_RUN_ORDER: dict[str, tuple[str, ...]] = {
    "created_at": ("created_at", "run_number", "pathspec"),
    "finished_at": ("finished_at", "pathspec"),
    "duration": ("duration", "pathspec"),
    "run_number": ("run_number", "pathspec"),
}

#: the columns of runs that run_tags repeats, so a tag-driven query orders by them without a join
_TAG_COLUMNS = frozenset({"flow", "state", "created_at", "run_number", "pathspec"})

_TASK_ORDER = ("foreach_index", "task_number", "task_id")
_TASK_SORT = "task"


class StoreQueries:
    """The reads of a SQLite read store, on one connection.

    Every read holds ``lock`` while it uses ``conn``; reads may run on any
    thread, beside the writer's.
    """

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock) -> None:
        self._reader = conn
        self._read_lock = lock
        #: the URI of the attached metrics store, None when none is
        self._metrics_uri: str | None = None
        #: whether it stays attached (a reader of its own), or is attached per read
        self._metrics_kept = False

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def attach_metrics(self, uri: str) -> None:
        """Read the logged summaries of runs from the metrics store at ``uri`` (a SQLite URI).

        A file store's reader attaches it for good. An in-memory store reads
        on its writer's connection, which must not hold the metrics store in
        its write transactions: it attaches it for each read that needs it.
        """
        with self._read_lock:
            if self._metrics_kept:  # attached before (another service on this store)
                self._reader.execute("DETACH DATABASE metrics")
            self._metrics_uri = uri
            self._metrics_kept = not self._shares_writer()
            if self._metrics_kept:
                self._reader.execute("ATTACH DATABASE ? AS metrics", (uri,))

    def _shares_writer(self) -> bool:
        return self._reader is getattr(self, "_writer", None)

    @contextmanager
    def _metrics_attached(self) -> Iterator[str | None]:
        """Under the read lock: the schema name of the metrics store (None: not attached)."""
        with self._read_lock:
            if self._metrics_uri is None or self._metrics_kept:
                yield "metrics" if self._metrics_uri is not None else None
                return
            self._reader.execute("ATTACH DATABASE ? AS metrics", (self._metrics_uri,))
            try:
                yield "metrics"
            finally:
                self._reader.execute("DETACH DATABASE metrics")

    def _read_runs(self, sql: str, args: Sequence[Any], metrics: str | None) -> list[Any]:
        """A runs query, joining the metrics store when ``metrics`` names it."""
        if metrics is None:
            return self._read(sql, args)
        with self._metrics_attached():
            return self._reader.execute(sql, args).fetchall()

    def _metrics_schema(self, q: RunQuery) -> str | None:
        """The schema to join for ``q``'s summary values, if it names any and one is attached."""
        if self._metrics_uri is None:
            return None
        names = [c.field for c in q.where] + [q.sort_key]
        return "metrics" if any(name.startswith("summary.") for name in names) else None

    # -- reading: what the views include ---------------------------------------

    def checkpoint(self) -> int:
        """The last stream sequence the stored views include; 0 for a new store."""
        return int(self._read("SELECT value FROM meta WHERE key = 'checkpoint'")[0][0])

    def stream_identity(self) -> int | None:
        """The creation time (µs) of the events stream these views were folded from, if recorded."""
        rows = self._read("SELECT value FROM meta WHERE key = 'stream_created'")
        return int(rows[0][0]) if rows else None

    # -- reading: objects by pathspec --------------------------------------------

    def get_run_json(self, pathspec: str) -> bytes | None:
        """The stored JSON of a run (a ``RunView``), or None."""
        rows = self._read("SELECT json FROM runs WHERE pathspec = ?", (pathspec,))
        return bytes(rows[0][0]) if rows else None

    def get_run(self, pathspec: str) -> RunView | None:
        """A run by pathspec (``Flow/run``), or None."""
        raw = self.get_run_json(pathspec)
        return None if raw is None else RunView.model_validate_json(raw)

    def get_task_json(self, pathspec: str) -> bytes | None:
        """The stored JSON of a task (a ``TaskView``), or None."""
        rows = self._read("SELECT json FROM tasks WHERE pathspec = ?", (pathspec,))
        return bytes(rows[0][0]) if rows else None

    def get_task(self, pathspec: str) -> TaskView | None:
        """A task by pathspec (``Flow/run/step/task``), or None."""
        raw = self.get_task_json(pathspec)
        return None if raw is None else TaskView.model_validate_json(raw)

    def get_step(self, run_pathspec: str, step: str) -> StepView | None:
        """A step of a run, from the run's summary of it; None if either is unknown."""
        run = self.get_run(run_pathspec)
        summary = None if run is None else run.step(step)
        if run is None or summary is None:
            return None
        return StepView.from_run(run, summary)

    def list_steps(self, run_pathspec: str) -> list[StepView]:
        """The steps of a run in the order they began; empty if the run is unknown."""
        run = self.get_run(run_pathspec)
        if run is None:
            return []
        return [StepView.from_run(run, summary) for summary in run.steps]

    def run_in_namespace(self, run_pathspec: str, namespace: str) -> bool:
        """Whether the run carries the tag ``namespace`` among its user or system tags."""
        return bool(
            self._read(
                "SELECT 1 FROM run_tags WHERE pathspec = ? AND tag = ?", (run_pathspec, namespace)
            )
        )

    # -- reading: flows ----------------------------------------------------------

    def list_flows(self, namespace: str | None = None) -> list[FlowSummary]:
        """Every flow with a run (in ``namespace``, if given), by name.

        Without a namespace this reads one row per flow; with one it counts
        the namespace's runs through ``run_tags``.
        """
        if namespace is None:
            rows = self._read("SELECT name, run_count, last_created_at FROM flows ORDER BY name")
        else:
            rows = self._read(
                "SELECT flow, count(*), max(created_at) FROM run_tags WHERE tag = ? "
                "GROUP BY flow ORDER BY flow",
                (namespace,),
            )
        return [_flow_summary(row) for row in rows]

    def get_flow(self, name: str, namespace: str | None = None) -> FlowSummary | None:
        """One flow's summary (its runs in ``namespace``, if given); None if it has no run there."""
        if namespace is None:
            rows = self._read(
                "SELECT name, run_count, last_created_at FROM flows WHERE name = ?", (name,)
            )
        else:
            rows = self._read(
                "SELECT flow, count(*), max(created_at) FROM run_tags "
                "WHERE tag = ? AND flow = ? GROUP BY flow",
                (namespace, name),
            )
        return _flow_summary(rows[0]) if rows else None

    # -- reading: runs -----------------------------------------------------------

    def list_runs_json(self, q: RunQuery) -> tuple[list[bytes], str | None]:
        """One page of ``q`` as the stored JSON of each run, and the cursor of the next page.

        Raises ``BadFilter`` for a cursor that did not come from this query's sort.
        """
        metrics = self._metrics_schema(q)
        sql, args = runs_sql(q, metrics)
        rows = self._read_runs(sql, args, metrics)
        return self._page(rows, q.limit, q.sort)

    def list_runs(self, q: RunQuery) -> Page[RunView]:
        """One page of the runs ``q`` selects, in its order (see ``RunQuery``)."""
        items, cursor = self.list_runs_json(q)
        return Page[RunView](
            items=[RunView.model_validate_json(raw) for raw in items], next_cursor=cursor
        )

    def latest_run_json(
        self, flow: str, *, successful: bool = False, namespace: str | None = None
    ) -> bytes | None:
        """The stored JSON of the run ``latest_run`` answers, or None."""
        q = RunQuery(
            flow=flow,
            namespace=namespace,
            state=[RunState.COMPLETED] if successful else [],
            limit=1,
        )
        sql, args = runs_sql(q)
        rows = self._read(sql, args)
        return bytes(rows[0][0]) if rows else None

    def latest_run(
        self, flow: str, *, successful: bool = False, namespace: str | None = None
    ) -> RunView | None:
        """The newest run of ``flow`` by creation time, then run number; None if it has none.

        ``successful=True``: the newest completed run. ``namespace``: only
        runs carrying that tag. Raises ``BadFilter`` for an invalid flow name.
        """
        raw = self.latest_run_json(flow, successful=successful, namespace=namespace)
        return None if raw is None else RunView.model_validate_json(raw)

    # -- reading: tasks ----------------------------------------------------------

    def list_tasks_json(self, q: TaskQuery) -> tuple[list[bytes], str | None]:
        """One page of ``q`` as the stored JSON of each task, and the cursor of the next page."""
        sql, args = tasks_sql(q)
        return self._page(self._read(sql, args), q.limit, _TASK_SORT)

    def list_tasks(self, q: TaskQuery) -> Page[TaskView]:
        """One page of the tasks of a step, in task order (see ``TaskQuery``)."""
        items, cursor = self.list_tasks_json(q)
        return Page[TaskView](
            items=[TaskView.model_validate_json(raw) for raw in items], next_cursor=cursor
        )

    def _page(self, rows: list[Any], limit: int, sort: str) -> tuple[list[bytes], str | None]:
        # the query asks for limit + 1 rows: one more tells whether a next page exists
        cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last: tuple[CursorValue, ...] = tuple(rows[-1][1:])
            cursor = encode_cursor(sort, last)
        return [bytes(row[0]) for row in rows], cursor

    # -- reading: dead letters ---------------------------------------------------

    def list_deadletters(self, limit: int = 100, *, after: int = 0) -> list[DeadLetter]:
        """Up to ``limit`` dead letters with a stream sequence above ``after``, oldest first."""
        rows = self._read(
            "SELECT sequence, subject, reason, data, at FROM deadletters WHERE sequence > ? "
            "ORDER BY sequence LIMIT ?",
            (after, limit),
        )
        return [
            DeadLetter(sequence=seq, subject=subject, reason=reason, data=data, at=from_micros(at))
            for seq, subject, reason, data, at in rows
        ]


def _flow_summary(row: tuple[str, int, int]) -> FlowSummary:
    name, count, last = row
    return FlowSummary(name=name, run_count=count, last_created_at=from_micros(last))


# -- the runs query ----------------------------------------------------------------


def runs_sql(
    q: RunQuery, metrics: str | None = None, select: str = "r.json"
) -> tuple[str, list[Any]]:
    """The SELECT answering ``q``: ``select`` (the run's JSON) then its sort key, limit + 1 rows.

    ``metrics``: the schema name of the attached metrics store, whose logged
    latest values summary conditions and sorts then read (else explicit
    summary values only).
    """
    tags = q.required_tags
    where: list[str] = []
    args: list[Any] = []
    joins: list[str] = []
    join_args: list[Any] = []
    if tags:
        # the first required tag drives: its run_tags rows are in (flow, [state,]) creation order
        source = "run_tags AS t CROSS JOIN runs AS r ON r.pathspec = t.pathspec"
        where.append("t.tag = ?")
        args.append(tags[0])
        tags = tags[1:]
        base = "t"
    else:
        source = "runs AS r"
        base = "r"
    values: dict[str, tuple[str, str]] = {}

    def value_of(field: str) -> tuple[str, str]:
        """The (value, kind) expressions of a summary or config field, joined once each."""
        if field not in values:
            values[field] = _join_value(field, len(values), metrics, joins, join_args)
        return values[field]

    if q.sort_key in _RUN_ORDER:
        order = _RUN_ORDER[q.sort_key]
        keys = [f"{base if column in _TAG_COLUMNS else 'r'}.{column}" for column in order]
    else:
        sorted_by, _ = value_of(q.sort_key)
        # without a value last either way: first (value IS NULL) ascending, (NOT NULL) descending
        missing = f"({sorted_by} IS {'NOT ' if q.descending else ''}NULL)"
        keys = [missing, f"coalesce({sorted_by}, 0)", "r.pathspec"]
    for condition in q.where:
        expr, kind = value_of(condition.field)
        test, test_args = condition_sql(expr, kind, condition)
        where.append(test)
        args += test_args
    if q.flow is not None:
        where.append(f"{base}.flow = ?")
        args.append(q.flow)
    if q.state:
        where.append(f"{base}.state IN ({', '.join('?' * len(q.state))})")
        args += [state.value for state in q.state]
    for tag in tags:
        where.append(
            "EXISTS (SELECT 1 FROM run_tags AS x WHERE x.pathspec = r.pathspec AND x.tag = ?)"
        )
        args.append(tag)
    if q.tags_any:
        marks = ", ".join("?" * len(q.tags_any))
        where.append(
            "EXISTS (SELECT 1 FROM run_tags AS x WHERE x.pathspec = r.pathspec "
            f"AND x.tag IN ({marks}))"
        )
        args += q.tags_any
    if q.user is not None:
        where.append("r.user = ?")
        args.append(q.user)
    if q.created_after is not None:
        where.append(f"{base}.created_at >= ?")
        args.append(micros(q.created_after))
    if q.created_before is not None:
        where.append(f"{base}.created_at < ?")
        args.append(micros(q.created_before))
    if q.finished_after is not None:
        where.append("r.finished_at >= ?")
        args.append(micros(q.finished_after))
    if q.finished_before is not None:
        where.append("r.finished_at < ? AND r.finished_at > ?")
        args += [micros(q.finished_before), MISSING]
    for name, value in q.parameters.items():
        where.append(
            "EXISTS (SELECT 1 FROM run_params AS p WHERE p.pathspec = r.pathspec "
            "AND p.name = ? AND p.value = ?)"
        )
        args += [name, canonical_json(value)]
    direction = "DESC" if q.descending else "ASC"
    if q.cursor is not None:
        marks = ", ".join("?" * len(keys))
        where.append(f"({', '.join(keys)}) {'<' if q.descending else '>'} ({marks})")
        args += decode_cursor(q.cursor, q.sort, len(keys))
    sql = (
        f"SELECT {select}, {', '.join(keys)} FROM {source}"
        + "".join(joins)
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {', '.join(f'{key} {direction}' for key in keys)} LIMIT ?"
    )
    return sql, [*join_args, *args, q.limit + 1]


def _join_value(
    field: str, n: int, metrics: str | None, joins: list[str], args: list[Any]
) -> tuple[str, str]:
    """Join what a run's value of ``field`` is read from; its (value, kind) expressions."""
    source, _, key = field.partition(".")
    table = "run_config" if source == "config" else "run_summary"
    joins.append(f" LEFT JOIN {table} AS v{n} ON v{n}.pathspec = r.pathspec AND v{n}.key = ?")
    args.append(key)
    if source == "config" or metrics is None:
        return f"v{n}.value", f"v{n}.kind"
    if not any(" AS ms " in join for join in joins):
        joins.append(
            f" LEFT JOIN {metrics}.metric_streams AS ms ON ms.entity = r.pathspec "
            "AND ms.attempt = -1 AND ms.stream = 'default'"
        )
    joins.append(
        f" LEFT JOIN {metrics}.metric_series AS l{n} ON l{n}.stream_id = ms.id AND l{n}.key = ?"
    )
    args.append(key)
    # an explicit value wins over the logged one
    return (
        f"(CASE WHEN v{n}.kind IS NULL THEN l{n}.value ELSE v{n}.value END)",
        f"coalesce(v{n}.kind, l{n}.kind)",
    )


def tasks_sql(q: TaskQuery) -> tuple[str, list[Any]]:
    """The SELECT answering ``q``: the task's JSON then its order key, limit + 1 rows."""
    where = ["run = ?", "step = ?"]
    args: list[Any] = [q.run, q.step]
    if q.state:
        where.append(f"state IN ({', '.join('?' * len(q.state))})")
        args += [state.value for state in q.state]
    order = ", ".join(_TASK_ORDER)
    if q.cursor is not None:
        where.append(f"({order}) > (?, ?, ?)")
        args += decode_cursor(q.cursor, _TASK_SORT, len(_TASK_ORDER))
    sql = f"SELECT json, {order} FROM tasks WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
    args.append(q.limit + 1)
    return sql, args
