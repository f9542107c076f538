"""The SQLite read store: round trips, upserts, every filter and sort, pagination, query plans."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import JsonValue

from runstate.engine._events import replace_fields
from runstate.engine._states import RunState, TaskState
from runstate.engine.errors import BadFilter
from runstate.projections._queries import (
    RUN_SORT_KEYS,
    DeadLetter,
    FlowSummary,
    Page,
    RunQuery,
    TaskQuery,
    encode_cursor,
)
from runstate.projections._store import (
    _WAL_HARD_LIMIT,
    MISSING,
    ReadStore,
    _runs_sql,
    _tasks_sql,
)
from runstate.projections._views import RunView, StepSummary, StepView, TaskView

T0 = datetime(2025, 1, 1, tzinfo=UTC)
ALL_SORTS = [prefix + key for key in RUN_SORT_KEYS for prefix in ("", "-")]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_run(
    flow: str = "Train",
    number: int | None = 1,
    *,
    run_id: str | None = None,
    state: RunState = RunState.COMPLETED,
    created: float = 0,
    started: float | None = None,
    finished: float | None = None,
    user: str | None = "alice",
    tags: frozenset[str] | set[str] = frozenset(),
    system_tags: frozenset[str] | set[str] | None = None,
    parameters: dict[str, JsonValue] | None = None,
    steps: tuple[StepSummary, ...] = (),
) -> RunView:
    run_id = run_id if run_id is not None else str(number)
    return RunView(
        pathspec=f"{flow}/{run_id}",
        flow=flow,
        run_id=run_id,
        run_number=number,
        state=state,
        created_at=at(created),
        started_at=None if started is None else at(started),
        finished_at=None if finished is None else at(finished),
        user=user,
        tags=frozenset(tags),
        system_tags=frozenset({f"user:{user}"} if system_tags is None else system_tags),
        parameters=parameters or {},
        steps=steps,
    )


def make_task(
    run: str = "Train/1",
    step: str = "train",
    task_id: str = "1",
    *,
    state: TaskState = TaskState.COMPLETED,
    foreach_index: int | None = None,
) -> TaskView:
    flow, run_id = run.split("/")
    return TaskView(
        pathspec=f"{run}/{step}/{task_id}",
        flow=flow,
        run_id=run_id,
        step=step,
        task_id=task_id,
        state=state,
        created_at=T0,
        foreach_index=foreach_index,
    )


@pytest.fixture
def store() -> Iterator[ReadStore]:
    with ReadStore(":memory:") as store:
        yield store


def ids(page: Page[RunView] | list[RunView]) -> list[str]:
    items = page.items if isinstance(page, Page) else page
    return [view.pathspec for view in items]


def all_pages(store: ReadStore, q: RunQuery) -> list[RunView]:
    seen: list[RunView] = []
    while True:
        page = store.list_runs(q)
        seen += page.items
        if page.next_cursor is None:
            return seen
        q = q.model_copy(update={"cursor": page.next_cursor})


# -- the reference: what list_runs must answer, in plain Python -------------------


def _micros(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def reference_key(view: RunView, key: str) -> tuple[Any, ...]:
    number = MISSING if view.run_number is None else view.run_number
    if key == "created_at":
        return (_micros(view.created_at), number, view.pathspec)
    if key == "run_number":
        return (number, view.pathspec)
    if view.finished_at is None:
        return (MISSING, view.pathspec)
    if key == "finished_at":
        return (_micros(view.finished_at), view.pathspec)
    start = view.started_at or view.created_at
    return ((view.finished_at - start) // timedelta(microseconds=1), view.pathspec)


def json_equal(a: JsonValue, b: JsonValue) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def reference_matches(view: RunView, q: RunQuery) -> bool:
    tags = view.all_tags
    return (
        (q.flow is None or view.flow == q.flow)
        and all(tag in tags for tag in q.required_tags)
        and (not q.tags_any or any(tag in tags for tag in q.tags_any))
        and (not q.state or view.state in q.state)
        and (q.user is None or view.user == q.user)
        and (q.created_after is None or view.created_at >= q.created_after)
        and (q.created_before is None or view.created_at < q.created_before)
        and (
            q.finished_after is None
            or (view.finished_at or T0.min.replace(tzinfo=UTC)) >= q.finished_after
        )
        and (
            q.finished_before is None
            or (view.finished_at is not None and view.finished_at < q.finished_before)
        )
        and all(
            name in view.parameters and json_equal(view.parameters[name], value)
            for name, value in q.parameters.items()
        )
    )


def reference(views: list[RunView], q: RunQuery) -> list[str]:
    chosen = [view for view in views if reference_matches(view, q)]
    chosen.sort(key=lambda view: reference_key(view, q.sort_key), reverse=q.descending)
    return [view.pathspec for view in chosen]


# -- round trips and upserts -----------------------------------------------------


def test_commit_then_get_returns_equal_views(store: ReadStore) -> None:
    """A committed run and task come back equal to what was committed."""
    run = make_run(tags={"production"}, parameters={"lr": 0.1, "layers": [1, 2]}, finished=30)
    task = make_task(foreach_index=3)
    store.commit([run], [task], 7)
    assert store.get_run("Train/1") == run
    assert store.get_task("Train/1/train/1") == task
    assert store.get_run_json("Train/1") == run.model_dump_json().encode()
    assert store.get_task_json("Train/1/train/1") == task.model_dump_json().encode()


def test_unknown_pathspecs_give_none(store: ReadStore) -> None:
    """Reading a run, task or step that was never stored gives None, not an error."""
    assert store.get_run("Train/1") is None
    assert store.get_run_json("Train/1") is None
    assert store.get_task("Train/1/start/1") is None
    assert store.get_step("Train/1", "start") is None
    assert store.list_steps("Train/1") == []
    assert store.latest_run("Train") is None


def test_upsert_replaces_run_and_its_tags_and_parameters(store: ReadStore) -> None:
    """Committing a run again replaces its row, tags and parameters, not adds to them."""
    store.commit([make_run(tags={"a", "b"}, parameters={"x": 1, "y": 2})], [], 1)
    newer = make_run(
        tags={"b", "c"}, parameters={"x": 3}, state=RunState.FAILED, system_tags={"user:bob"}
    )
    store.commit([newer], [], 2)
    assert store.get_run("Train/1") == newer
    assert ids(store.list_runs(RunQuery(tags_all=["a"]))) == []
    assert ids(store.list_runs(RunQuery(tags_all=["c"]))) == ["Train/1"]
    assert ids(store.list_runs(RunQuery(namespace="user:alice"))) == []
    assert ids(store.list_runs(RunQuery(namespace="user:bob"))) == ["Train/1"]
    assert ids(store.list_runs(RunQuery(parameters={"x": 1}))) == []
    assert ids(store.list_runs(RunQuery(parameters={"y": 2}))) == []
    assert ids(store.list_runs(RunQuery(parameters={"x": 3}))) == ["Train/1"]
    assert ids(store.list_runs(RunQuery(state=[RunState.COMPLETED]))) == []
    assert store.latest_run("Train", successful=True) is None
    assert store.list_flows() == [FlowSummary(name="Train", run_count=1, last_created_at=T0)]


def test_tag_and_parameter_rows_follow_versions_that_share_their_sets(store: ReadStore) -> None:
    """Versions of a run made by the reducers share unchanged tag sets and parameters; the
    store skips rewriting those rows then, yet the rows follow every state and tag change,
    a failed commit, and a reset."""
    first = make_run(tags={"a"}, parameters={"x": 1}, state=RunState.RUNNING)
    store.commit([first], [], 1)
    moved = replace_fields(first, {"position": (2, 0), "message": "still going"})
    store.commit([moved], [], 2)
    assert ids(store.list_runs(RunQuery(tags_all=["a"], state=[RunState.RUNNING]))) == ["Train/1"]
    failed = replace_fields(moved, {"state": RunState.FAILED, "position": (3, 0)})
    store.commit([failed], [], 3)
    assert ids(store.list_runs(RunQuery(tags_all=["a"], state=[RunState.RUNNING]))) == []
    assert ids(store.list_runs(RunQuery(tags_all=["a"], state=[RunState.FAILED]))) == ["Train/1"]
    retagged = replace_fields(failed, {"tags": frozenset({"b"}), "parameters": {"x": 2}})
    with pytest.raises(Exception):  # noqa: B017 - any failure must roll back
        store.commit([retagged], [], 4, [(4, "s", "r", object())])  # type: ignore[list-item]
    assert ids(store.list_runs(RunQuery(tags_all=["a"]))) == ["Train/1"]
    store.commit([retagged], [], 4)
    assert ids(store.list_runs(RunQuery(tags_all=["a"]))) == []
    assert ids(store.list_runs(RunQuery(tags_all=["b"], parameters={"x": 2}))) == ["Train/1"]
    store.reset()
    store.commit([retagged], [], 1)
    assert ids(store.list_runs(RunQuery(tags_all=["b"], parameters={"x": 2}))) == ["Train/1"]


def test_last_view_of_a_run_in_one_commit_wins(store: ReadStore) -> None:
    """Two versions of one run in one commit store the later one, with its own tags."""
    store.commit([make_run(tags={"old"}), make_run(tags={"new"}, state=RunState.FAILED)], [], 1)
    assert store.get_run("Train/1") == make_run(tags={"new"}, state=RunState.FAILED)
    assert ids(store.list_runs(RunQuery(tags_all=["old"]))) == []


def test_upsert_replaces_task(store: ReadStore) -> None:
    """Committing a task again replaces it, and its new state is what the filters see."""
    store.commit([], [make_task(state=TaskState.RUNNING)], 1)
    store.commit([], [make_task(state=TaskState.FAILED)], 2)
    assert store.get_task("Train/1/train/1") == make_task(state=TaskState.FAILED)
    failed = TaskQuery(run="Train/1", step="train", state=[TaskState.FAILED])
    running = TaskQuery(run="Train/1", step="train", state=[TaskState.RUNNING])
    assert len(store.list_tasks(failed).items) == 1
    assert store.list_tasks(running).items == []


def test_load_runs_and_tasks_in_bulk(store: ReadStore) -> None:
    """load_runs/load_tasks return the stored views among many pathspecs and skip missing ones."""
    runs = [make_run(number=n) for n in range(1, 1201)]
    tasks = [make_task(task_id=str(n)) for n in range(1, 1201)]
    store.commit(runs, tasks, 1)
    wanted = [f"Train/{n}" for n in range(0, 1300, 2)]
    loaded = store.load_runs(wanted)
    assert sorted(loaded) == sorted(f"Train/{n}" for n in range(2, 1201, 2))
    assert loaded["Train/42"] == runs[41]
    loaded_tasks = store.load_tasks(["Train/1/train/5", "Train/1/train/9999"])
    assert loaded_tasks == {"Train/1/train/5": tasks[4]}


def test_fresh_store_has_checkpoint_zero(store: ReadStore) -> None:
    """A new store's checkpoint is 0, so the projector starts from sequence 1."""
    assert store.checkpoint() == 0


def test_checkpoint_and_views_persist_across_reopen(tmp_path: Path) -> None:
    """A file store keeps the checkpoint and views after it is closed and reopened."""
    path = tmp_path / "store.db"
    with ReadStore(path) as store:
        store.commit([make_run()], [make_task()], 41)
        store.commit([], [], 42)
    with ReadStore(path) as store:
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
    with ReadStore(path) as store:
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
    with ReadStore(path) as store:
        checkpoints = store._checkpoints
        assert checkpoints is not None
        checkpoints._state = (_WAL_HARD_LIMIT, 0)  # as if the thread had fallen behind
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
    with ReadStore(path) as store:
        store.commit([make_run()], [], 9)
        store._writer.execute("UPDATE meta SET value = -1 WHERE key = 'schema_version'")
    with ReadStore(path) as store:
        assert store.checkpoint() == 0
        assert store.get_run("Train/1") is None


def test_failed_commit_changes_nothing(store: ReadStore) -> None:
    """A commit that fails part way leaves neither its views nor its checkpoint."""
    store.commit([make_run(number=1)], [], 1)
    with pytest.raises(Exception):  # noqa: B017 - any failure must roll back
        store.commit([make_run(number=2)], [make_task()], 2, [(2, "s", "r", object())])  # type: ignore[list-item]
    assert store.checkpoint() == 1
    assert store.get_run("Train/2") is None
    assert store.get_task("Train/1/train/1") is None
    assert store.list_flows()[0].run_count == 1


def test_reset_forgets_everything(store: ReadStore) -> None:
    """reset() drops views, flows, dead letters and the checkpoint."""
    store.commit([make_run()], [make_task()], 5, [(3, "rs.ev.x.1.r", "bad", b"{")])
    store.reset()
    assert store.checkpoint() == 0
    assert store.get_run("Train/1") is None
    assert store.get_task("Train/1/train/1") is None
    assert store.list_flows() == []
    assert store.list_deadletters() == []


def test_deadletters_are_kept_oldest_first(store: ReadStore) -> None:
    """Dead letters are stored with the commit and listed by sequence, after a given one."""
    store.commit(
        [], [], 5, [(5, "rs.ev.A.1.r", "not json", b"\xff{"), (3, "rs.ev.A.2.r", "x", b"")]
    )
    letters = store.list_deadletters()
    assert [letter.sequence for letter in letters] == [3, 5]
    assert letters[1].data == b"\xff{" and letters[1].reason == "not json"
    assert [letter.sequence for letter in store.list_deadletters(after=3)] == [5]
    assert store.list_deadletters(limit=1)[0].sequence == 3
    assert DeadLetter.model_validate_json(letters[1].model_dump_json()) == letters[1]


def test_steps_come_from_the_run_summary(store: ReadStore) -> None:
    """get_step and list_steps build StepViews from the run's step summaries."""
    steps = (
        StepSummary(
            name="start", created_at=T0, finished_at=at(1), task_states={"1": TaskState.COMPLETED}
        ),
        StepSummary(
            name="train",
            created_at=at(1),
            task_states={"2": TaskState.COMPLETED, "3": TaskState.RUNNING},
        ),
    )
    run = make_run(steps=steps)
    store.commit([run], [], 1)
    assert store.list_steps("Train/1") == [StepView.from_run(run, s) for s in steps]
    step = store.get_step("Train/1", "train")
    assert step is not None
    assert (step.pathspec, step.tasks_total, step.status) == ("Train/1/train", 2, "running")
    assert store.get_step("Train/1", "end") is None


def test_reads_run_while_a_thread_commits(tmp_path: Path) -> None:
    """Reads on one thread proceed while another thread commits, and see whole commits."""
    with ReadStore(tmp_path / "store.db") as store:
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for batch in range(20):
                    runs = [
                        make_run(number=batch * 50 + n, created=batch * 50 + n) for n in range(50)
                    ]
                    store.commit(runs, [], batch + 1)
            except BaseException as exc:
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        while writer.is_alive():
            flows = store.list_flows()
            # every commit adds 50 runs at once, so a reader sees a multiple of 50
            assert not flows or flows[0].run_count % 50 == 0
        writer.join()
        assert errors == []
        assert store.checkpoint() == 20
        assert store.list_flows()[0].run_count == 1000


# -- filters and sorts -----------------------------------------------------------


def dataset() -> list[RunView]:
    return [
        make_run(
            "Train",
            1,
            created=10,
            finished=70,
            started=20,
            tags={"production", "gpu"},
            parameters={"lr": 0.1, "layers": 3},
        ),
        make_run(
            "Train",
            2,
            created=20,
            state=RunState.FAILED,
            finished=25,
            user="bob",
            tags={"gpu"},
            parameters={"lr": 0.2, "layers": 3.0},
        ),
        make_run(
            "Train",
            3,
            created=30,
            state=RunState.RUNNING,
            tags={"production"},
            system_tags={"user:alice", "production:deploy1"},
            parameters={"lr": 0.1},
        ),
        make_run(
            "Train",
            None,
            run_id="adhoc",
            created=30,
            finished=200,
            user="carol",
            parameters={"flag": True, "cfg": {"a": 1, "b": [1, 2]}},
        ),
        make_run(
            "Eval",
            1,
            created=15,
            finished=16,
            tags={"production"},
            user="bob",
            parameters={"flag": 1},
        ),
        make_run(
            "Eval",
            2,
            created=40,
            state=RunState.CANCELLED,
            finished=45,
            user=None,
            system_tags=set(),
        ),
    ]


FILTERS: list[dict[str, Any]] = [
    {},
    {"flow": "Train"},
    {"flow": "Nope"},
    {"tags_all": ["production"]},
    {"tags_all": ["production", "gpu"]},
    {"tags_all": ["gpu"], "flow": "Train"},
    {"tags_any": ["gpu", "production"]},
    {"tags_any": ["gpu"], "tags_all": ["production"]},
    {"tags_all": ["user:alice"]},
    {"state": ["failed", "cancelled"]},
    {"state": ["completed"], "flow": "Train"},
    {"user": "bob"},
    {"created_after": at(15), "created_before": at(30)},
    {"created_after": at(30)},
    {"finished_after": at(45)},
    {"finished_before": at(45)},
    {"finished_after": at(20), "finished_before": at(100), "flow": "Train"},
    {"parameters": {"lr": 0.1}},
    {"parameters": {"layers": 3}},
    {"parameters": {"lr": 0.1, "layers": 3}},
    {"parameters": {"flag": True}},
    {"parameters": {"flag": 1}},
    {"parameters": {"cfg": {"b": [1, 2], "a": 1.0}}},
    {"namespace": "user:alice"},
    {"namespace": "user:bob", "flow": "Eval"},
    {"namespace": "production:deploy1"},
    {"namespace": "user:alice", "tags_all": ["production"], "state": ["running"]},
]


@pytest.mark.parametrize("filters", FILTERS, ids=[str(f) for f in FILTERS])
def test_each_filter_selects_what_the_reference_selects(
    store: ReadStore, filters: dict[str, Any]
) -> None:
    """Every filter alone and combined selects the runs a plain-Python filter selects."""
    views = dataset()
    store.commit(views, [], 1)
    for sort in ("-created_at", "finished_at"):
        q = RunQuery(**filters, sort=sort)
        assert ids(store.list_runs(q)) == reference(views, q)


def test_filters_spot_checks(store: ReadStore) -> None:
    """A few filters give the runs a reader expects (guarding the reference itself)."""
    store.commit(dataset(), [], 1)
    assert ids(store.list_runs(RunQuery(tags_all=["production"], flow="Train"))) == [
        "Train/3",
        "Train/1",
    ]
    assert ids(store.list_runs(RunQuery(parameters={"layers": 3}))) == ["Train/2", "Train/1"]
    assert ids(store.list_runs(RunQuery(parameters={"flag": True}))) == ["Train/adhoc"]
    assert ids(store.list_runs(RunQuery(namespace="production:deploy1"))) == ["Train/3"]
    assert ids(store.list_runs(RunQuery(finished_before=at(45)))) == ["Train/2", "Eval/1"]


@pytest.mark.parametrize("sort", ALL_SORTS)
def test_every_sort_key_pages_in_reference_order(store: ReadStore, sort: str) -> None:
    """Each sort key, ascending and descending, pages through every run in reference order."""
    views = dataset()
    store.commit(views, [], 1)
    for filters in ({}, {"flow": "Train"}, {"tags_all": ["production"]}):
        q = RunQuery(**filters, sort=sort, limit=2)
        assert ids(all_pages(store, q)) == reference(views, q)


def test_missing_sort_values_sort_as_smallest(store: ReadStore) -> None:
    """Unfinished runs come last newest-finished first, and first oldest-finished first."""
    store.commit(dataset(), [], 1)
    newest = ids(store.list_runs(RunQuery(flow="Train", sort="-finished_at")))
    assert newest == ["Train/adhoc", "Train/1", "Train/2", "Train/3"]
    assert ids(store.list_runs(RunQuery(flow="Train", sort="finished_at")))[0] == "Train/3"
    assert ids(store.list_runs(RunQuery(flow="Train", sort="run_number")))[0] == "Train/adhoc"


def test_created_at_ties_break_by_run_number(store: ReadStore) -> None:
    """Runs created at the same instant order by run number, then pathspec."""
    runs = [make_run(number=n, created=5) for n in (3, 11, 2)]
    store.commit(runs, [], 1)
    assert ids(store.list_runs(RunQuery(flow="Train"))) == ["Train/11", "Train/3", "Train/2"]
    latest = store.latest_run("Train")
    assert latest is not None and latest.pathspec == "Train/11"


# -- pagination --------------------------------------------------------------------

_flows = st.sampled_from(["A", "B"])
_times = st.integers(min_value=0, max_value=6)
_tags = st.frozensets(st.sampled_from(["t1", "t2", "t3", "user:u1", "user:u2"]), max_size=3)
_values: st.SearchStrategy[JsonValue] = st.sampled_from([1, 1.0, 2, True, "a", None, [1], {"k": 1}])


@st.composite
def _runs(draw: st.DrawFn, prefix: str = "r") -> list[RunView]:
    count = draw(st.integers(min_value=0, max_value=25))
    views = []
    for index in range(count):
        created = draw(_times)
        finished = draw(st.none() | _times)
        numbered = draw(st.booleans())
        views.append(
            make_run(
                draw(_flows),
                draw(st.integers(0, 5)) if numbered else None,
                run_id=f"{prefix}{index}",
                state=draw(st.sampled_from(list(RunState))),
                created=created,
                started=draw(st.none() | st.just(created + 1)),
                finished=None if finished is None else created + finished,
                user=draw(st.sampled_from(["u1", "u2", None])),
                tags=draw(_tags),
                system_tags=draw(_tags),
                parameters=draw(st.dictionaries(st.sampled_from(["p", "q"]), _values, max_size=2)),
            )
        )
    return views


_queries = st.fixed_dictionaries(
    {},
    optional={
        "flow": _flows,
        "tags_all": st.lists(st.sampled_from(["t1", "t2", "user:u1"]), max_size=2),
        "tags_any": st.lists(st.sampled_from(["t1", "t3", "user:u2"]), max_size=2),
        "state": st.lists(st.sampled_from(list(RunState)), max_size=3),
        "user": st.sampled_from(["u1", "u2"]),
        "created_after": _times.map(at),
        "created_before": _times.map(at),
        "finished_after": _times.map(at),
        "finished_before": st.integers(0, 12).map(at),
        "parameters": st.dictionaries(st.sampled_from(["p", "q"]), _values, max_size=1),
        "namespace": st.sampled_from(["user:u1", "user:u2", "t1"]),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    views=_runs(),
    filters=_queries,
    sort=st.sampled_from(ALL_SORTS),
    limit=st.integers(1, 4),
    inserted=st.lists(_runs(prefix="new"), max_size=4),
)
def test_pagination_visits_each_run_once_despite_inserts(
    views: list[RunView],
    filters: dict[str, Any],
    sort: str,
    limit: int,
    inserted: list[list[RunView]],
) -> None:
    """Paging visits each matching run once, in order, while new runs arrive between pages."""
    with ReadStore(":memory:") as store:
        store.commit(views, [], 1)
        q = RunQuery(**filters, sort=sort, limit=limit)
        expected = reference(views, q)
        assert ids(store.list_runs(q.model_copy(update={"limit": 1000}))) == expected
        seen: list[RunView] = []
        arrivals = iter(inserted)
        while True:
            page = store.list_runs(q)
            assert len(page.items) <= limit
            seen += page.items
            if page.next_cursor is None:
                break
            store.commit(next(arrivals, []), [], 2)
            q = q.model_copy(update={"cursor": page.next_cursor})
        keys = [reference_key(view, q.sort_key) for view in seen]
        assert keys == sorted(keys, reverse=q.descending)
        assert len(set(keys)) == len(keys)  # no run twice
        original = {view.pathspec for view in views}
        assert [view.pathspec for view in seen if view.pathspec in original] == expected


# -- latest run and flows ------------------------------------------------------------


def test_latest_run_and_latest_successful(store: ReadStore) -> None:
    """latest_run is the newest run; successful=True skips runs that did not complete."""
    runs = [make_run(number=n, created=n, state=RunState.COMPLETED) for n in range(1, 4)]
    runs += [make_run(number=n, created=n, state=RunState.FAILED) for n in range(4, 40)]
    store.commit(runs, [], 1)
    latest = store.latest_run("Train")
    successful = store.latest_run("Train", successful=True)
    assert latest is not None and latest.pathspec == "Train/39"
    assert successful is not None and successful.pathspec == "Train/3"
    assert store.latest_run("Eval") is None
    raw = store.latest_run_json("Train", successful=True)
    assert raw is not None and RunView.model_validate_json(raw) == successful


def test_latest_run_in_a_namespace(store: ReadStore) -> None:
    """With a namespace, latest_run considers only runs carrying that user or system tag."""
    store.commit(
        [
            make_run(number=1, created=1, user="alice"),
            make_run(number=2, created=2, user="alice", state=RunState.FAILED),
            make_run(number=3, created=3, user="bob"),
            make_run(number=4, created=4, user="bob", tags={"team:x"}, state=RunState.RUNNING),
        ],
        [],
        1,
    )

    def latest(**kwargs: Any) -> str | None:
        view = store.latest_run("Train", **kwargs)
        return None if view is None else view.pathspec

    assert latest(namespace="user:alice") == "Train/2"
    assert latest(namespace="user:alice", successful=True) == "Train/1"
    assert latest(namespace="user:bob", successful=True) == "Train/3"
    assert latest(namespace="team:x") == "Train/4"
    assert latest(namespace="team:x", successful=True) is None
    assert latest(namespace="user:nobody") is None
    assert store.run_in_namespace("Train/3", "user:bob")
    assert not store.run_in_namespace("Train/3", "user:alice")


def test_list_flows_counts_runs_per_flow_and_namespace(store: ReadStore) -> None:
    """list_flows gives each flow's run count and newest creation time, in a namespace if given."""
    store.commit(dataset(), [], 1)
    store.commit([make_run("Train", 1, created=10)], [], 2)  # an update is not a new run
    assert store.list_flows() == [
        FlowSummary(name="Eval", run_count=2, last_created_at=at(40)),
        FlowSummary(name="Train", run_count=4, last_created_at=at(30)),
    ]
    assert store.list_flows("user:bob") == [
        FlowSummary(name="Eval", run_count=1, last_created_at=at(15)),
        FlowSummary(name="Train", run_count=1, last_created_at=at(20)),
    ]
    assert store.get_flow("Train") == FlowSummary(name="Train", run_count=4, last_created_at=at(30))
    assert store.get_flow("Eval", "user:bob") == FlowSummary(
        name="Eval", run_count=1, last_created_at=at(15)
    )
    assert store.get_flow("Eval", "user:carol") is None
    assert store.get_flow("Nope") is None


# -- tasks ---------------------------------------------------------------------------


def test_tasks_of_a_step_in_task_order_with_state_filter_and_pages(store: ReadStore) -> None:
    """Tasks of a step come by foreach index, then numeric id; state filters; pages continue."""
    tasks = [
        make_task(
            task_id=str(n),
            foreach_index=20 - n,
            state=TaskState.FAILED if n % 3 else TaskState.COMPLETED,
        )
        for n in range(1, 21)
    ]
    others = [make_task(step="start", task_id="100"), make_task(run="Train/2", task_id="5")]
    store.commit([], tasks + others, 1)
    every = store.list_tasks(TaskQuery(run="Train/1", step="train"))
    assert [t.task_id for t in every.items] == [str(n) for n in range(20, 0, -1)]
    assert every.next_cursor is None
    seen: list[TaskView] = []
    q = TaskQuery(run="Train/1", step="train", state=[TaskState.FAILED], limit=4)
    while True:
        page = store.list_tasks(q)
        seen += page.items
        if page.next_cursor is None:
            break
        q = q.model_copy(update={"cursor": page.next_cursor})
    assert [t.task_id for t in seen] == [str(n) for n in range(20, 0, -1) if n % 3]
    items, cursor = store.list_tasks_json(TaskQuery(run="Train/1", step="train", limit=1))
    assert cursor is not None and TaskView.model_validate_json(items[0]).task_id == "20"


def test_task_ids_order_numerically_then_as_text(store: ReadStore) -> None:
    """Without foreach indexes, numeric ids order as numbers and other ids come first by text."""
    store.commit([], [make_task(task_id=t) for t in ("10", "9", "b", "100", "a")], 1)
    page = store.list_tasks(TaskQuery(run="Train/1", step="train"))
    assert [t.task_id for t in page.items] == ["a", "b", "9", "10", "100"]


# -- bad filters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"sort": "started_at"}, ["sort", "created_at, finished_at, duration, run_number"]),
        ({"sort": "+created_at"}, ["sort", "'-' for descending"]),
        ({"limit": 0}, ["limit", "greater than or equal to 1"]),
        ({"limit": 1001}, ["limit", "1000"]),
        ({"state": ["done"]}, ["state", "'completed'"]),
        ({"colour": "red"}, ["unknown field 'colour'", "tags_all"]),
        ({"flow": "a.b"}, ["flow", "invalid flow name"]),
        ({"created_after": "yesterday"}, ["created_after", "datetime"]),
    ],
)
def test_bad_run_queries_raise_bad_filter(kwargs: dict[str, Any], words: list[str]) -> None:
    """A bad field, value or sort key raises BadFilter naming the field and what it accepts."""
    with pytest.raises(BadFilter) as caught:
        RunQuery(**kwargs)
    for word in words:
        assert word in str(caught.value)


def test_bad_queries_from_json_raise_bad_filter() -> None:
    """Queries parsed from JSON raise BadFilter too, and good ones parse."""
    with pytest.raises(BadFilter, match="sort"):
        RunQuery.from_json(b'{"sort": "size"}')
    with pytest.raises(BadFilter, match="run"):
        TaskQuery.from_json(b'{"run": "Train", "step": "start"}')
    with pytest.raises(BadFilter, match="step"):
        TaskQuery(run="Train/1", step="no-dash")
    assert RunQuery.from_json(b'{"flow": "Train", "limit": 5}').limit == 5


def test_bad_cursors_raise_bad_filter(store: ReadStore) -> None:
    """A cursor that is garbage, damaged, or from another sort order raises BadFilter."""
    store.commit([make_run(number=n, created=n) for n in range(5)], [], 1)
    cursor = store.list_runs(RunQuery(limit=2)).next_cursor
    assert cursor is not None
    with pytest.raises(BadFilter, match="sorted by '-created_at'"):
        store.list_runs(RunQuery(limit=2, cursor=cursor, sort="duration"))
    with pytest.raises(BadFilter, match="not a cursor"):
        store.list_runs(RunQuery(cursor="%%%"))
    with pytest.raises(BadFilter, match="damaged"):
        store.list_runs(RunQuery(cursor=encode_cursor("-created_at", (1,))))
    with pytest.raises(BadFilter):
        store.list_tasks(TaskQuery(run="Train/1", step="s", cursor=cursor))


def test_latest_run_of_an_invalid_flow_name_is_bad_filter(store: ReadStore) -> None:
    """latest_run with a malformed flow name raises BadFilter rather than finding nothing."""
    with pytest.raises(BadFilter, match="flow"):
        store.latest_run("not a flow")


# -- query plans -------------------------------------------------------------------------


def plan(store: ReadStore, sql: str, args: list[Any]) -> list[str]:
    return [row[3] for row in store._reader.execute("EXPLAIN QUERY PLAN " + sql, args)]


def assert_indexed(details: list[str], index: str) -> None:
    assert any(index in detail for detail in details), details
    for detail in details:
        assert "TEMP B-TREE" not in detail, details
        assert not (detail.startswith("SCAN") and "INDEX" not in detail), details


@pytest.fixture
def big_store() -> Iterator[ReadStore]:
    with ReadStore(":memory:") as store:
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
    big_store: ReadStore, query: dict[str, Any], index: str
) -> None:
    """Indexed run queries (first page and a later page) read an index in order, never scan runs."""
    q = RunQuery(**query)
    assert_indexed(plan(big_store, *_runs_sql(q)), index)
    page = big_store.list_runs(q.model_copy(update={"limit": 1}))
    assert page.next_cursor is not None
    later = q.model_copy(update={"cursor": page.next_cursor})
    details = plan(big_store, *_runs_sql(later))
    assert_indexed(details, index)
    assert any(">" in d or "<" in d for d in details), details  # the cursor is an index range


def test_latest_successful_run_is_an_index_lookup(big_store: ReadStore) -> None:
    """latest_run(successful=True) is an index search on state, with or without a namespace."""
    for namespace, index in (
        (None, "runs_by_flow_state_created"),
        ("user:alice", "run_tags_by_flow_state"),
    ):
        q = RunQuery(flow="F1", namespace=namespace, state=[RunState.COMPLETED], limit=1)
        details = plan(big_store, *_runs_sql(q))
        assert_indexed(details, index)
        assert any("state=?" in d for d in details), details


def test_tasks_of_a_step_use_the_task_order_index(big_store: ReadStore) -> None:
    """Tasks of a step, filtered by state and from a cursor, read tasks_in_order without sorting."""
    q = TaskQuery(run="Train/1", step="train", state=[TaskState.FAILED], limit=5)
    assert_indexed(plan(big_store, *_tasks_sql(q)), "tasks_in_order")
    cursor = big_store.list_tasks(TaskQuery(run="Train/1", step="train", limit=5)).next_cursor
    later = q.model_copy(update={"cursor": cursor})
    assert_indexed(plan(big_store, *_tasks_sql(later)), "tasks_in_order")
