"""Writing the SQLite read store: views to rows, and only the rows that changed.

``prepare_commit`` turns views into rows; ``StoreWriter.write`` reads the
indexed columns of the rows it is about to replace and writes only what
changed, so the most common update, a run whose step summary moved on,
rewrites the run's JSON and no index entry. Views and the checkpoint
commit in one transaction, so after a crash the store is exactly as of its
checkpoint. ``ViewLoader`` reads back the stored views a fold needs.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from runstate.projections._conditions import stored_value
from runstate.projections._schema import (
    RUN_CONFIG,
    RUN_PARAMS,
    RUN_SUMMARY,
    RUN_TAGS,
    RUNS,
    TASKS,
    Table,
    canonical_json,
    create_schema,
    micros,
    run_row,
    task_row,
    transaction,
)
from runstate.projections._views import RunView, TaskView
from runstate.projections._wal import WalCheckpointer

__all__ = ["PreparedCommit", "StoreWriter", "ViewLoader", "prepare_commit"]

# bound variables per IN (...) in bulk loads, well below SQLite's limit
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class _RunSide:
    """What a run's rows in ``run_tags``, ``run_params``, ``run_config`` and ``run_summary``
    are made from.

    Views keep the very same tag sets and parameter dict from one version to
    the next until they change, so identity tells "unchanged" cheaply; the
    references held here keep those objects (and their ids) alive.
    """

    tags: frozenset[str]
    system_tags: frozenset[str]
    parameters: dict[str, Any]
    config: dict[str, Any]
    summary: dict[str, Any]
    tag_columns: tuple[Any, ...]

    def same_tags(self, other: _RunSide) -> bool:
        return (
            self.tags is other.tags
            and self.system_tags is other.system_tags
            and self.tag_columns == other.tag_columns
        )


@dataclass(slots=True)
class PreparedCommit:
    """The rows of one commit (``StoreWriter.prepare``), for ``StoreWriter.write``."""

    checkpoint: int
    #: (table, rows by key, pathspecs whose stored rows the rows replace)
    tables: list[tuple[Table, dict[tuple[Any, ...], tuple[Any, ...]], list[str]]]
    #: (sequence, subject, reason, data)
    deadletters: list[tuple[int, str, str, bytes]]


def prepare_commit(
    runs: Iterable[RunView],
    tasks: Iterable[TaskView],
    checkpoint: int,
    deadletters: Iterable[tuple[int, str, str, bytes]],
    written: dict[str, _RunSide],
) -> PreparedCommit:
    """The rows that store these views and the checkpoint, for ``StoreWriter.write``.

    ``written`` holds what the tag and parameter rows of runs were last
    made from, by commits written before this one: a run whose tags and
    parameters are the very same objects gets no rows for them. It is
    updated here for the next commit (``write`` empties the store's own if
    it fails). A feeder process that folds runs of its own uses its own.
    """
    run_rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    tag_rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    param_rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    config_rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    summary_rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    tag_runs: list[str] = []
    param_runs: list[str] = []
    config_runs: list[str] = []
    summary_runs: list[str] = []
    if len(written) > 50_000:
        written.clear()
    # the last view of a run in the batch wins, with its own tags and parameters
    for view in {view.pathspec: view for view in runs}.values():
        row = run_row(view)
        run_rows[(view.pathspec,)] = row
        flow, _, number, state, _, created = row[:6]
        side = _RunSide(
            view.tags,
            view.system_tags,
            view.parameters,
            view.config,
            view.summary_overrides,
            (flow, state, created, number),
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
                param_rows[(view.pathspec, name)] = (canonical_json(value),)
        if last is None or last.config is not side.config:
            config_runs.append(view.pathspec)
            for key, value in view.config.items():
                config_rows[(view.pathspec, key)] = stored_value(value)
        if last is None or last.summary is not side.summary:
            summary_runs.append(view.pathspec)
            for key, value in view.summary_overrides.items():
                summary_rows[(view.pathspec, key)] = stored_value(value)
        # recorded now, for the next commit's rows (``write`` forgets them all if it fails)
        written[view.pathspec] = side
    task_rows = {(view.pathspec,): task_row(view) for view in tasks}
    return PreparedCommit(
        checkpoint,
        [
            (RUNS, run_rows, [key[0] for key in run_rows]),
            (RUN_TAGS, tag_rows, tag_runs),
            (RUN_PARAMS, param_rows, param_runs),
            (RUN_CONFIG, config_rows, config_runs),
            (RUN_SUMMARY, summary_rows, summary_runs),
            (TASKS, task_rows, [key[0] for key in task_rows]),
        ],
        list(deadletters),
    )


class StoreWriter:
    """The projector's side of a SQLite read store: its writes, and its loads between them.

    Every call holds ``lock`` while it uses ``conn``, and may run in a
    worker thread. ``checkpoints``, for a file store, copies the WAL.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock: threading.Lock,
        checkpoints: WalCheckpointer | None,
    ) -> None:
        self._writer = conn
        self._write_lock = lock
        self._checkpoints = checkpoints
        # what the tag and parameter rows of recently written runs were made from
        self._run_sides: dict[str, _RunSide] = {}
        # the projector's loads go through the writer's connection, between its commits
        self._loader = ViewLoader(conn, lock)

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
        now = micros(datetime.now(UTC))
        parts = [prepared, *also]
        dead_rows = [
            (seq, subject, reason, data, now)
            for part in parts
            for seq, subject, reason, data in part.deadletters
        ]
        conn = self._writer
        try:
            with self._write_lock, transaction(conn):
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
                    self._checkpoints.copy_through(conn)
            self._checkpoints.nudge()

    def set_stream_identity(self, created_us: int) -> None:
        """Record which events stream (by creation time) this store follows."""
        with self._write_lock, transaction(self._writer):
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
        with self._write_lock, transaction(self._writer):
            create_schema(self._writer)
            self._run_sides.clear()


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
    conn: sqlite3.Connection, table: Table, pathspecs: list[str]
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
    table: Table,
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
