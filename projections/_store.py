"""The SQLite read store: the projected views of one projector replica, indexed for the queries.

Each view is stored whole as its JSON, beside the columns the queries
filter and sort on. The projector writes from a worker thread through one
connection while the query service reads on the event loop thread through
another; in WAL mode a reader sees the last committed transaction and never
waits for the writer. Views and the checkpoint commit in one transaction,
so after a crash the store is exactly as of its checkpoint.

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
  number, task id), the task order.

``commit`` reads the indexed columns of the rows it is about to replace
and writes only what changed, so the most common update, a run whose step
summary moved on, rewrites the run's JSON and no index entry.

A value that is missing (a run not finished, a run or task id that is not a
number, a task outside a foreach) is stored as ``MISSING``, the smallest
64-bit integer, rather than NULL: it sorts as the smallest value and keeps
row-value comparisons (``(a, b) < (?, ?)``) usable as index ranges. Times
are integer microseconds since the epoch, UTC.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import orjson
from pydantic import JsonValue

from runstate.engine._logging import get_logger
from runstate.engine._states import RunState
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
from runstate.projections._views import RunView, StepView, TaskView

__all__ = [
    "MISSING",
    "SCHEMA_VERSION",
    "PreparedCommit",
    "ReadStore",
    "ViewLoader",
    "prepare_commit",
]

#: bump when the tables change: a store of another version is emptied and rebuilt from the log
SCHEMA_VERSION = 1

#: the stored value of a missing number or time; sorts below every real value
MISSING = -(2**63)
_MAX = 2**63 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# bound variables per IN (...) in bulk loads, well below SQLite's limit
_CHUNK = 500

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

_TABLES = ("meta", "runs", "run_tags", "run_params", "tasks", "flows", "deadletters")


@dataclass(frozen=True, slots=True)
class _Table:
    """How ``commit`` writes a table: a row is its key, compared columns, then written ones."""

    name: str
    keys: tuple[str, ...]
    compared: tuple[str, ...]
    written: tuple[str, ...] = ()


_RUNS = _Table(
    "runs",
    ("pathspec",),
    ("flow", "run_id", "run_number", "state", "user", "created_at", "finished_at", "duration"),
    ("json",),
)
_RUN_TAGS = _Table("run_tags", ("pathspec", "tag"), ("flow", "state", "created_at", "run_number"))
_RUN_PARAMS = _Table("run_params", ("pathspec", "name"), ("value",))
_TASKS = _Table(
    "tasks",
    ("pathspec",),
    ("run", "step", "task_id", "state", "foreach_index", "task_number", "created_at"),
    ("json",),
)

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


@dataclass(frozen=True, slots=True)
class _RunSide:
    """What a run's rows in ``run_tags`` and ``run_params`` are made from.

    Views keep the very same tag sets and parameter dict from one version to
    the next until they change, so identity tells "unchanged" cheaply; the
    references held here keep those objects (and their ids) alive.
    """

    tags: frozenset[str]
    system_tags: frozenset[str]
    parameters: dict[str, Any]
    tag_columns: tuple[Any, ...]

    def same_tags(self, other: _RunSide) -> bool:
        return (
            self.tags is other.tags
            and self.system_tags is other.system_tags
            and self.tag_columns == other.tag_columns
        )


log = get_logger("runstate.store")

_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
#: WAL pages (4 KiB) past which the writer copies them itself if the checkpointer has not
_WAL_HARD_LIMIT = 16_384
#: the checkpointer's pause after each checkpoint: one per commit would fsync the
#: database for every commit; under a steady 5,000 events/s one copies ~400 pages
_CHECKPOINT_EVERY = 0.1


class _Checkpointer:
    """Copies the WAL into the database file, on a thread and connection of its own.

    SQLite's automatic checkpoint runs inside the commit that crosses 1,000
    WAL pages, so one commit in many took 8-13 ms longer, on the projector's
    path and, for small commits, on the event loop that answers queries. A
    passive checkpoint from another connection never blocks the writer or
    readers; the GIL is released while SQLite copies and syncs.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # (WAL pages, pages copied) after the last checkpoint
        self._state = (0, 0)
        self._thread = threading.Thread(
            target=self._run, name="runstate-store-checkpointer", daemon=True
        )
        self._thread.start()

    def nudge(self) -> None:
        """Something was committed: checkpoint soon."""
        self._wake.set()

    def behind(self) -> bool:
        """The WAL is past ``_WAL_HARD_LIMIT`` pages and not all copied."""
        pages, copied = self._state
        return pages >= _WAL_HARD_LIMIT and copied < pages

    def record(self, result: tuple[int, int, int]) -> None:
        _, pages, copied = result
        self._state = (pages, copied)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping.is_set():
                return
            self._wake.clear()
            try:
                self.record(self._conn.execute(_CHECKPOINT).fetchone())
            except sqlite3.Error as exc:  # the writer's own copy is the fallback
                log.warning("store.checkpoint_failed", error=str(exc))
            if self._stopping.wait(_CHECKPOINT_EVERY):
                return

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._conn.close()


@dataclass(slots=True)
class PreparedCommit:
    """The rows of one commit (``ReadStore.prepare``), for ``ReadStore.write``."""

    checkpoint: int
    #: (table, rows by key, pathspecs whose stored rows the rows replace)
    tables: list[tuple[_Table, dict[tuple[Any, ...], tuple[Any, ...]], list[str]]]
    #: (sequence, subject, reason, data)
    deadletters: list[tuple[int, str, str, bytes]]


def prepare_commit(
    runs: Iterable[RunView],
    tasks: Iterable[TaskView],
    checkpoint: int,
    deadletters: Iterable[tuple[int, str, str, bytes]],
    written: dict[str, _RunSide],
) -> PreparedCommit:
    """The rows that store these views and the checkpoint, for ``ReadStore.write``.

    ``written`` holds what the tag and parameter rows of runs were last
    made from, by commits written before this one: a run whose tags and
    parameters are the very same objects gets no rows for them. It is
    updated here for the next commit (``write`` empties the store's own if
    it fails). A feeder process that folds runs of its own uses its own.
    """
    run_rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    tag_rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    param_rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    tag_runs: list[str] = []
    param_runs: list[str] = []
    if len(written) > 50_000:
        written.clear()
    # the last view of a run in the batch wins, with its own tags and parameters
    for view in {view.pathspec: view for view in runs}.values():
        row = _run_row(view)
        run_rows[(view.pathspec,)] = row
        flow, _, number, state, _, created = row[:6]
        side = _RunSide(
            view.tags, view.system_tags, view.parameters, (flow, state, created, number)
        )
        # most commits of a run change neither: its tag and parameter rows stay as they are
        last = written.get(view.pathspec)
        if last is None or not last.same_tags(side):
            tag_runs.append(view.pathspec)
            for tag in view.tags | view.system_tags:
                tag_rows[(view.pathspec, tag)] = side.tag_columns
        if last is None or last.parameters is not side.parameters:
            param_runs.append(view.pathspec)
            for name, value in view.parameters.items():
                param_rows[(view.pathspec, name)] = (_canonical_json(value),)
        # recorded now, for the next commit's rows (``write`` forgets them all if it fails)
        written[view.pathspec] = side
    task_rows = {(view.pathspec,): _task_row(view) for view in tasks}
    return PreparedCommit(
        checkpoint,
        [
            (_RUNS, run_rows, [key[0] for key in run_rows]),
            (_RUN_TAGS, tag_rows, tag_runs),
            (_RUN_PARAMS, param_rows, param_runs),
            (_TASKS, task_rows, [key[0] for key in task_rows]),
        ],
        list(deadletters),
    )


class ReadStore:
    """The projected views in one SQLite file (or ``":memory:"``, for tests).

    Write methods (``commit``, ``prepare``, ``write``, ``load_*``, ``reset``)
    belong to the projector and may run in a worker thread; read methods may
    run on any thread at the same time. Each connection is used by one thread
    at a time.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        memory = self.path == ":memory:"
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode = WAL")
        self._writer.execute("PRAGMA synchronous = NORMAL")
        self._ensure_schema()
        self._write_lock = threading.Lock()
        self._checkpoints: _Checkpointer | None = None
        if not memory:
            # The writer never checkpoints as part of a commit (SQLite's default, every
            # 1,000 pages, stalled one commit in ~70 by 8-13 ms under steady load):
            # a thread of the store's own copies the WAL into the database meanwhile.
            self._writer.execute("PRAGMA wal_autocheckpoint = 0")
            self._writer.execute(f"PRAGMA journal_size_limit = {_WAL_HARD_LIMIT * 4096}")
            self._checkpoints = _Checkpointer(self._connect())
        # what the tag and parameter rows of recently written runs were made from
        self._run_sides: dict[str, _RunSide] = {}
        # the projector's loads go through the writer's connection, between its commits
        self._loader = ViewLoader(self._writer, self._write_lock)
        if memory:
            # a second connection to ":memory:" would be another, empty database
            self._reader = self._writer
            self._read_lock = self._write_lock
        else:
            self._reader = self._connect()
            self._reader.execute("PRAGMA query_only = ON")
            self._read_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA cache_size = -65536")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA mmap_size = 268435456")
        return conn

    def _ensure_schema(self) -> None:
        conn = self._writer
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if exists:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and row[0] == SCHEMA_VERSION:
                return
        with self._transaction(conn):
            self._create(conn)

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        for table in _TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in _statements(_SCHEMA):
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("schema_version", SCHEMA_VERSION), ("checkpoint", 0)],
        )

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:  # some errors end the transaction themselves
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close both connections; the store is unusable afterwards."""
        if self._checkpoints is not None:
            self._checkpoints.close()
        with self._write_lock:
            self._writer.close()
        if self._reader is not self._writer:
            with self._read_lock:
                self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    # -- writing (the projector) -----------------------------------------------

    def commit(
        self,
        runs: Iterable[RunView],
        tasks: Iterable[TaskView],
        checkpoint: int,
        deadletters: Iterable[tuple[int, str, str, bytes]] = (),
    ) -> None:
        """Store these views, replacing earlier versions, and the checkpoint, in one transaction.

        ``checkpoint`` is the last stream sequence the views include.
        ``deadletters`` are (sequence, subject, reason, data) of messages
        that could not be applied. The same as ``write(prepare(...))``.
        """
        self.write(self.prepare(runs, tasks, checkpoint, deadletters))

    def prepare(
        self,
        runs: Iterable[RunView],
        tasks: Iterable[TaskView],
        checkpoint: int,
        deadletters: Iterable[tuple[int, str, str, bytes]] = (),
    ) -> PreparedCommit:
        """The rows of a ``commit``, for ``write``: see ``prepare_commit``."""
        return prepare_commit(runs, tasks, checkpoint, deadletters, self._run_sides)

    def write(self, prepared: PreparedCommit, also: Iterable[PreparedCommit] = ()) -> None:
        """Write a prepared commit's rows and its checkpoint in one transaction.

        ``also`` are commits of other views (a feeder's runs), written in the
        same transaction; their checkpoints are not recorded.
        """
        now = _micros(datetime.now(UTC))
        parts = [prepared, *also]
        dead_rows = [
            (seq, subject, reason, data, now)
            for part in parts
            for seq, subject, reason, data in part.deadletters
        ]
        conn = self._writer
        try:
            with self._write_lock, self._transaction(conn):
                # rows are compared with what is stored so only changed columns are written:
                # most run updates change the JSON alone and then touch no index
                for part in parts:
                    for table, rows, pathspecs in part.tables:
                        if pathspecs:
                            _sync(conn, table, _stored(conn, table, pathspecs), rows)
                if dead_rows:
                    conn.executemany(
                        "INSERT OR REPLACE INTO deadletters (sequence, subject, reason, data, at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        dead_rows,
                    )
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'checkpoint'", (prepared.checkpoint,)
                )
        except BaseException:
            # what ``prepare`` recorded as written (tag and parameter rows) may not be
            self._run_sides.clear()
            raise
        if self._checkpoints is not None:
            if self._checkpoints.behind():
                # Back-to-back commits (a catch-up) can leave the checkpointer no moment
                # when the WAL is all copied and may start over, so it grows: copy it
                # here, between two commits, as SQLite's own autocheckpoint would.
                with self._write_lock:
                    self._checkpoints.record(conn.execute(_CHECKPOINT).fetchone())
            self._checkpoints.nudge()

    def checkpoint(self) -> int:
        """The last stream sequence the stored views include; 0 for a new store."""
        return int(self._read("SELECT value FROM meta WHERE key = 'checkpoint'")[0][0])

    def stream_identity(self) -> int | None:
        """The creation time (µs) of the events stream these views were folded from, if recorded."""
        rows = self._read("SELECT value FROM meta WHERE key = 'stream_created'")
        return int(rows[0][0]) if rows else None

    def set_stream_identity(self, created_us: int) -> None:
        """Record which events stream (by creation time) this store follows."""
        with self._write_lock, self._transaction(self._writer):
            self._writer.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('stream_created', ?)",
                (created_us,),
            )

    def load_runs(self, pathspecs: Iterable[str]) -> dict[str, RunView]:
        """The stored runs among ``pathspecs`` (missing ones are left out), for the projector."""
        return self._loader.load_runs(pathspecs)

    def load_tasks(self, pathspecs: Iterable[str]) -> dict[str, TaskView]:
        """The stored tasks among ``pathspecs`` (missing ones are left out), for the projector."""
        return self._loader.load_tasks(pathspecs)

    def reset(self) -> None:
        """Forget every view, dead letter and the checkpoint (before a rebuild from the log)."""
        with self._write_lock, self._transaction(self._writer):
            self._create(self._writer)
            self._run_sides.clear()

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
        sql, args = _runs_sql(q)
        return self._page(sql, args, q.limit, q.sort)

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
        sql, args = _runs_sql(q)
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
        sql, args = _tasks_sql(q)
        return self._page(sql, args, q.limit, _TASK_SORT)

    def list_tasks(self, q: TaskQuery) -> Page[TaskView]:
        """One page of the tasks of a step, in task order (see ``TaskQuery``)."""
        items, cursor = self.list_tasks_json(q)
        return Page[TaskView](
            items=[TaskView.model_validate_json(raw) for raw in items], next_cursor=cursor
        )

    def _page(
        self, sql: str, args: Sequence[Any], limit: int, sort: str
    ) -> tuple[list[bytes], str | None]:
        # the query asks for limit + 1 rows: one more tells whether a next page exists
        rows = self._read(sql, args)
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
            DeadLetter(sequence=seq, subject=subject, reason=reason, data=data, at=_time(at))
            for seq, subject, reason, data, at in rows
        ]


class ViewLoader:
    """Reads stored views by pathspec: the projector's, and a feeder's (``ViewLoader.open``)."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock) -> None:
        self._conn = conn
        self._lock = lock

    @classmethod
    def open(cls, path: str) -> ViewLoader:
        """A loader on a connection of its own: for a process that folds some runs itself.

        It sees what the store has committed; only the projector writes.
        """
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA query_only = ON")
        return cls(conn, threading.Lock())

    def load_runs(self, pathspecs: Iterable[str]) -> dict[str, RunView]:
        return {
            pathspec: RunView.model_validate_json(raw)
            for pathspec, raw in self._load("runs", pathspecs)
        }

    def load_tasks(self, pathspecs: Iterable[str]) -> dict[str, TaskView]:
        return {
            pathspec: TaskView.model_validate_json(raw)
            for pathspec, raw in self._load("tasks", pathspecs)
        }

    def _load(self, table: str, pathspecs: Iterable[str]) -> list[tuple[str, bytes]]:
        """(pathspec, JSON) of the stored views among ``pathspecs``."""
        wanted = list(dict.fromkeys(pathspecs))
        rows: list[tuple[str, bytes]] = []
        with self._lock:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows += self._conn.execute(
                    f"SELECT pathspec, json FROM {table} WHERE pathspec IN ({marks})", chunk
                ).fetchall()
        return rows

    def close(self) -> None:
        """Close a loader's own connection (``open``)."""
        self._conn.close()


def _stored(
    conn: sqlite3.Connection, table: _Table, pathspecs: list[str]
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The key and compared columns of the stored rows of ``pathspecs``."""
    columns = ", ".join(table.keys + table.compared)
    width = len(table.keys)
    stored: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for start in range(0, len(pathspecs), _CHUNK):
        chunk = pathspecs[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT {columns} FROM {table.name} WHERE pathspec IN ({marks})", chunk
        ):
            stored[row[:width]] = row[width:]
    return stored


def _sync(
    conn: sqlite3.Connection,
    table: _Table,
    stored: dict[tuple[Any, ...], tuple[Any, ...]],
    rows: dict[tuple[Any, ...], tuple[Any, ...]],
) -> None:
    """Make the table's rows of these pathspecs ``rows``: insert, delete, update what changed.

    An update sets only the compared columns that differ (and the written
    ones), so SQLite rewrites only the indexes over those columns.
    """
    columns = table.compared + table.written
    compared = range(len(table.compared))
    always = tuple(range(len(table.compared), len(columns)))
    match = " AND ".join(f"{key} = ?" for key in table.keys)
    inserts = []
    updates: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}
    for key, values in rows.items():
        old = stored.get(key)
        if old is None:
            inserts.append(key + values)
            continue
        changed = tuple(i for i in compared if old[i] != values[i]) + always
        if changed:
            updates.setdefault(changed, []).append(tuple(values[i] for i in changed) + key)
    deletes = [key for key in stored if key not in rows]
    if deletes:
        conn.executemany(f"DELETE FROM {table.name} WHERE {match}", deletes)
    if inserts:
        names = ", ".join(table.keys + columns)
        marks = ", ".join("?" * (len(table.keys) + len(columns)))
        conn.executemany(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", inserts)
    for changed, params in updates.items():
        assignments = ", ".join(f"{columns[i]} = ?" for i in changed)
        conn.executemany(f"UPDATE {table.name} SET {assignments} WHERE {match}", params)


def _statements(script: str) -> Iterator[str]:
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""


# -- rows ----------------------------------------------------------------------


def _micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def _time(micros: int) -> datetime:
    return _EPOCH + micros * _MICROSECOND


def _number(value: int | None) -> int:
    if value is None:
        return MISSING
    return min(max(value, MISSING + 1), _MAX)


def _task_number(task_id: str) -> int:
    try:
        return _number(int(task_id))
    except ValueError:
        return MISSING


def _run_row(view: RunView) -> tuple[Any, ...]:
    """The columns of ``_RUNS`` after the key."""
    created = _micros(view.created_at)
    if view.finished_at is None:
        finished = duration = MISSING
    else:
        finished = _micros(view.finished_at)
        duration = finished - _micros(view.started_at or view.created_at)
    return (
        view.flow,
        view.run_id,
        _number(view.run_number),
        view.state.value,
        view.user,
        created,
        finished,
        duration,
        view.model_dump_json().encode(),
    )


def _task_row(view: TaskView) -> tuple[Any, ...]:
    """The columns of ``_TASKS`` after the key."""
    return (
        f"{view.flow}/{view.run_id}",
        view.step,
        view.task_id,
        view.state.value,
        _number(view.foreach_index),
        _task_number(view.task_id),
        _micros(view.created_at),
        view.model_dump_json().encode(),
    )


def _canonical_json(value: JsonValue) -> str:
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


def _flow_summary(row: tuple[str, int, int]) -> FlowSummary:
    name, count, last = row
    return FlowSummary(name=name, run_count=count, last_created_at=_time(last))


# -- the runs query ----------------------------------------------------------------


def _runs_sql(q: RunQuery) -> tuple[str, list[Any]]:
    """The SELECT answering ``q``: the run's JSON then its sort key, limit + 1 rows."""
    order = _RUN_ORDER[q.sort_key]
    tags = q.required_tags
    where: list[str] = []
    args: list[Any] = []
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
    keys = [f"{base if column in _TAG_COLUMNS else 'r'}.{column}" for column in order]
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
        args.append(_micros(q.created_after))
    if q.created_before is not None:
        where.append(f"{base}.created_at < ?")
        args.append(_micros(q.created_before))
    if q.finished_after is not None:
        where.append("r.finished_at >= ?")
        args.append(_micros(q.finished_after))
    if q.finished_before is not None:
        where.append("r.finished_at < ? AND r.finished_at > ?")
        args += [_micros(q.finished_before), MISSING]
    for name, value in q.parameters.items():
        where.append(
            "EXISTS (SELECT 1 FROM run_params AS p WHERE p.pathspec = r.pathspec "
            "AND p.name = ? AND p.value = ?)"
        )
        args += [name, _canonical_json(value)]
    direction = "DESC" if q.descending else "ASC"
    if q.cursor is not None:
        marks = ", ".join("?" * len(keys))
        where.append(f"({', '.join(keys)}) {'<' if q.descending else '>'} ({marks})")
        args += decode_cursor(q.cursor, q.sort, len(keys))
    sql = (
        f"SELECT r.json, {', '.join(keys)} FROM {source}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {', '.join(f'{key} {direction}' for key in keys)} LIMIT ?"
    )
    args.append(q.limit + 1)
    return sql, args


def _tasks_sql(q: TaskQuery) -> tuple[str, list[Any]]:
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
