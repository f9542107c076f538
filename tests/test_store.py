"""The SQLite read store's own promises: its file, WAL, schema versions and query plans.

What every ``ReadStore`` promises is checked on SQLite, on a file and in
memory, by ``test_read_store_contract.py``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runstate.engine._states import RunState, TaskState
from runstate.projections import SQLiteReadStore
from runstate.projections._queries import RunQuery, TaskQuery
from runstate.projections._store_query import runs_sql, tasks_sql
from runstate.projections._views import RunView, TaskView
from runstate.projections._wal import WAL_HARD_LIMIT
from runstate.projections.testing import make_run, make_task


def test_checkpoint_and_views_persist_across_reopen(tmp_path: Path) -> None:
    """A file store keeps the checkpoint and views after it is closed and reopened."""
    path = tmp_path / "store.db"
    with SQLiteReadStore(path) as store:
        store.commit([make_run()], [make_task()], 41)
        store.commit([], [], 42)
    with SQLiteReadStore(path) as store:
        assert store.checkpoint() == 42
        assert store.get_run("Train/1") == make_run()
        assert store.get_task("Train/1/train/1") == make_task()


def _checkpoint_in_database_file(path: Path) -> int | None:
    """The checkpoint as the database file alone has it (immutable mode ignores the WAL)."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'checkpoint'").fetchone()
    except sqlite3.DatabaseError:
        return None  # the file holds no pages yet
    finally:
        conn.close()
    return None if row is None else int(row[0])


def test_commits_reach_the_database_file_without_the_writer_checkpointing(
    tmp_path: Path,
) -> None:
    """The store's checkpointer thread copies committed pages out of the WAL.

    The writer's automatic checkpoint is off, so without the thread the file
    would keep the schema's empty state until the WAL grew to its limit.
    """
    path = tmp_path / "store.db"
    with SQLiteReadStore(path) as store:
        assert store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for number in range(1, 21):
            store.commit([make_run(number=number)], [], number)
        deadline = time.monotonic() + 10
        while _checkpoint_in_database_file(path) != 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _checkpoint_in_database_file(path) == 20
        assert store.checkpoint() == 20


def test_writer_copies_the_wal_itself_when_the_checkpointer_is_behind(tmp_path: Path) -> None:
    """Past the WAL's hard limit with pages left uncopied, the next commit copies them."""
    path = tmp_path / "store.db"
    with SQLiteReadStore(path) as store:
        checkpoints = store._checkpoints
        assert checkpoints is not None
        checkpoints._state = (WAL_HARD_LIMIT, 0)  # as if the thread had fallen behind
        assert checkpoints.behind()
        store.commit([make_run()], [], 7)
        # the writer's own checkpoint ran, after the commit: nothing is left to copy
        assert not checkpoints.behind()
        pages, copied = checkpoints._state
        assert pages == copied > 0
        assert _checkpoint_in_database_file(path) == 7


def test_store_of_another_schema_version_starts_empty(tmp_path: Path) -> None:
    """Opening a store written with another schema version empties it for a rebuild."""
    path = tmp_path / "store.db"
    with SQLiteReadStore(path) as store:
        store.commit([make_run()], [], 9)
        store._writer.execute("UPDATE meta SET value = -1 WHERE key = 'schema_version'")
    with SQLiteReadStore(path) as store:
        assert store.checkpoint() == 0
        assert store.get_run("Train/1") is None


def test_parsed_reads_are_the_stored_json_parsed() -> None:
    """list_runs, list_tasks and latest_run_json answer as the JSON reads the service uses."""
    with SQLiteReadStore(":memory:") as store:
        runs = [make_run(number=n, created=n) for n in range(1, 6)]
        tasks = [make_task(task_id=str(n)) for n in range(1, 4)]
        store.commit(runs, tasks, 1)
        q = RunQuery(flow="Train", limit=2)
        items, cursor = store.list_runs_json(q)
        page = store.list_runs(q)
        assert page.items == [RunView.model_validate_json(raw) for raw in items]
        assert page.next_cursor == cursor
        tq = TaskQuery(run="Train/1", step="train", limit=2)
        task_items, task_cursor = store.list_tasks_json(tq)
        task_page = store.list_tasks(tq)
        assert task_page.items == [TaskView.model_validate_json(raw) for raw in task_items]
        assert task_page.next_cursor == task_cursor
        raw = store.latest_run_json("Train", successful=True)
        assert raw is not None and RunView.model_validate_json(raw) == store.latest_run("Train")


# -- query plans -------------------------------------------------------------------------


def plan(store: SQLiteReadStore, sql: str, args: list[Any]) -> list[str]:
    return [row[3] for row in store._reader.execute("EXPLAIN QUERY PLAN " + sql, args)]


def assert_indexed(details: list[str], index: str) -> None:
    assert any(index in detail for detail in details), details
    for detail in details:
        assert "TEMP B-TREE" not in detail, details
        assert not (detail.startswith("SCAN") and "INDEX" not in detail), details


@pytest.fixture
def big_store() -> Iterator[SQLiteReadStore]:
    with SQLiteReadStore(":memory:") as store:
        runs = [
            make_run(
                f"F{n % 3}",
                n,
                created=n,
                state=RunState.FAILED if n % 4 else RunState.COMPLETED,
                tags={"production"} if n % 10 == 0 else set(),
            )
            for n in range(600)
        ]
        store.commit(runs, [make_task(task_id=str(n)) for n in range(50)], 1)
        yield store


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ({"flow": "F1", "tags_all": ["production"], "limit": 10}, "run_tags_by_flow"),
        ({"tags_all": ["production"], "limit": 10}, "run_tags_by_created_at"),
        ({"flow": "F1", "namespace": "user:alice"}, "run_tags_by_flow"),
        ({"flow": "F1", "state": ["completed"], "limit": 1}, "runs_by_flow_state_created"),
        (
            {"flow": "F1", "namespace": "user:alice", "state": ["completed"]},
            "run_tags_by_flow_state",
        ),
        ({"flow": "F1"}, "runs_by_flow_created_at"),
        ({"flow": "F1", "sort": "finished_at"}, "runs_by_flow_finished_at"),
        ({"flow": "F1", "sort": "-duration"}, "runs_by_flow_duration"),
        ({"flow": "F1", "sort": "run_number"}, "runs_by_flow_run_number"),
        ({"sort": "-created_at"}, "runs_by_created_at"),
        ({"sort": "finished_at", "state": ["failed"]}, "runs_by_finished_at"),
    ],
)
def test_run_queries_use_an_index_not_a_scan(
    big_store: SQLiteReadStore, query: dict[str, Any], index: str
) -> None:
    """Indexed run queries (first page and a later page) read an index in order, never scan runs."""
    q = RunQuery(**query)
    assert_indexed(plan(big_store, *runs_sql(q)), index)
    page = big_store.list_runs(q.model_copy(update={"limit": 1}))
    assert page.next_cursor is not None
    later = q.model_copy(update={"cursor": page.next_cursor})
    details = plan(big_store, *runs_sql(later))
    assert_indexed(details, index)
    assert any(">" in d or "<" in d for d in details), details  # the cursor is an index range


def test_latest_successful_run_is_an_index_lookup(big_store: SQLiteReadStore) -> None:
    """latest_run(successful=True) is an index search on state, with or without a namespace."""
    for namespace, index in (
        (None, "runs_by_flow_state_created"),
        ("user:alice", "run_tags_by_flow_state"),
    ):
        q = RunQuery(flow="F1", namespace=namespace, state=[RunState.COMPLETED], limit=1)
        details = plan(big_store, *runs_sql(q))
        assert_indexed(details, index)
        assert any("state=?" in d for d in details), details


def test_tasks_of_a_step_use_the_task_order_index(big_store: SQLiteReadStore) -> None:
    """Tasks of a step, filtered by state and from a cursor, read tasks_in_order without sorting."""
    q = TaskQuery(run="Train/1", step="train", state=[TaskState.FAILED], limit=5)
    assert_indexed(plan(big_store, *tasks_sql(q)), "tasks_in_order")
    cursor = big_store.list_tasks(TaskQuery(run="Train/1", step="train", limit=5)).next_cursor
    later = q.model_copy(update={"cursor": cursor})
    assert_indexed(plan(big_store, *tasks_sql(later)), "tasks_in_order")
