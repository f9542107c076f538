"""Views, queries and a plain-Python reference for the read store contract (``testing``).

``reference`` says which runs a ``RunQuery`` selects and in which order,
without SQL; the strategies draw views, queries and view histories for the
contract's property tests.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st
from pydantic import JsonValue

from runstate.engine._events import replace_fields
from runstate.engine._states import RunState, TaskState
from runstate.projections._conditions import Condition, reference_match, stored_value
from runstate.projections._queries import RUN_SORT_KEYS, Page, RunQuery, TaskQuery
from runstate.projections._typing import ReadStore
from runstate.projections._views import RunView, StepSummary, TaskView

__all__ = [
    "ALL_SORTS",
    "FILTERS",
    "T0",
    "all_pages",
    "at",
    "dataset",
    "ids",
    "list_runs",
    "list_tasks",
    "make_run",
    "make_task",
    "reference",
    "reference_key",
    "run_queries",
    "run_views",
    "snapshot",
    "view_histories",
]

T0 = datetime(2025, 1, 1, tzinfo=UTC)


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
    config: dict[str, JsonValue] | None = None,
    summary: dict[str, JsonValue] | None = None,
) -> RunView:
    """A run view; ``config`` (default: the parameters) and ``summary`` (explicit values)."""
    run_id = run_id if run_id is not None else str(number)
    parameters = parameters or {}
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
        parameters=parameters,
        config=parameters if config is None else config,
        summary_overrides=summary or {},
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


#: where a missing value (an unfinished run's finish time, a run without a number) sorts
_SMALLEST = -(2**63)

ALL_SORTS = [
    prefix + key for key in (*RUN_SORT_KEYS, "summary.acc", "config.lr") for prefix in ("", "-")
]


def list_runs(store: ReadStore, q: RunQuery) -> Page[RunView]:
    items, cursor = store.list_runs_json(q)
    return Page[RunView](
        items=[RunView.model_validate_json(raw) for raw in items], next_cursor=cursor
    )


def list_tasks(store: ReadStore, q: TaskQuery) -> Page[TaskView]:
    items, cursor = store.list_tasks_json(q)
    return Page[TaskView](
        items=[TaskView.model_validate_json(raw) for raw in items], next_cursor=cursor
    )


def ids(page: Page[RunView] | list[RunView]) -> list[str]:
    items = page.items if isinstance(page, Page) else page
    return [view.pathspec for view in items]


def all_pages(store: ReadStore, q: RunQuery) -> list[RunView]:
    seen: list[RunView] = []
    while True:
        page = list_runs(store, q)
        seen += page.items
        if page.next_cursor is None:
            return seen
        q = q.model_copy(update={"cursor": page.next_cursor})


# -- the reference: what list_runs must answer, in plain Python -------------------


def _micros(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _value_of(view: RunView, field: str) -> tuple[bool, Any]:
    """Whether a run has a value for ``summary.<key>``/``config.<key>``, and the value."""
    source, _, key = field.partition(".")
    values = view.config if source == "config" else view.summary_overrides
    return key in values, values.get(key)


def _value_order(value: Any) -> tuple[int, Any]:
    """SQLite's order of stored values: numbers (bools as 0/1) before text."""
    stored, _ = stored_value(value)
    return (1, stored) if isinstance(stored, str) else (0, stored)


def reference_key(view: RunView, key: str) -> tuple[Any, ...]:
    if "." in key:
        present, value = _value_of(view, key)
        stored = stored_value(value)[0] if present else None
        if stored is None:  # missing, null or NaN: last in either direction
            return (1, (0, 0), view.pathspec)
        return (0, _value_order(value), view.pathspec)
    number = _SMALLEST if view.run_number is None else view.run_number
    if key == "created_at":
        return (_micros(view.created_at), number, view.pathspec)
    if key == "run_number":
        return (number, view.pathspec)
    if view.finished_at is None:
        return (_SMALLEST, view.pathspec)
    if key == "finished_at":
        return (_micros(view.finished_at), view.pathspec)
    start = view.started_at or view.created_at
    return ((view.finished_at - start) // timedelta(microseconds=1), view.pathspec)


def _json_equal(a: JsonValue, b: JsonValue) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _reference_matches(view: RunView, q: RunQuery) -> bool:
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
            name in view.parameters and _json_equal(view.parameters[name], value)
            for name, value in q.parameters.items()
        )
    )


def _reference_where(view: RunView, conditions: list[Condition]) -> bool:
    return all(reference_match(*_value_of(view, c.field), c) for c in conditions)


def reference(views: list[RunView], q: RunQuery) -> list[str]:
    chosen = [view for view in views if _reference_matches(view, q)]
    chosen = [view for view in chosen if _reference_where(view, q.where)]
    if "." in q.sort_key and q.descending:
        # descending, runs without a value still come last
        chosen.sort(key=lambda view: reference_key(view, q.sort_key)[1:], reverse=True)
        chosen.sort(key=lambda view: reference_key(view, q.sort_key)[0])
    else:
        chosen.sort(key=lambda view: reference_key(view, q.sort_key), reverse=q.descending)
    return [view.pathspec for view in chosen]


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
            summary={"acc": 0.9, "best": True},
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
            config={"lr": 0.02, "layers": 3.0, "opt": "adam"},
            summary={"acc": 0.95},
        ),
        make_run(
            "Train",
            3,
            created=30,
            state=RunState.RUNNING,
            tags={"production"},
            system_tags={"user:alice", "production:deploy1"},
            parameters={"lr": 0.1},
            summary={"acc": "n/a"},
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
            summary={"acc": 0.9, "best": None},
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
    {"where": [Condition(field="summary.acc", op=">", value=0.9)]},
    {"where": [Condition(field="summary.acc", op=">=", value=0.9)], "flow": "Train"},
    {"where": [Condition(field="summary.acc", op="!=", value=0.9)]},
    {"where": [Condition(field="summary.acc", op="=", value="n/a")]},
    {"where": [Condition(field="summary.best", op="=", value=None)]},
    {"where": [Condition(field="summary.best", op="=", value=True)]},
    {"where": [Condition(field="config.lr", op="<", value=0.1)]},
    {"where": [Condition(field="config.opt", op="!=", value=None)], "tags_all": ["gpu"]},
    {
        "where": [
            Condition(field="config.lr", op="<=", value=0.1),
            Condition(field="summary.acc", op=">", value=0),
        ]
    },
]


# -- pagination --------------------------------------------------------------------

_flows = st.sampled_from(["A", "B"])
_times = st.integers(min_value=0, max_value=6)
_tags = st.frozensets(st.sampled_from(["t1", "t2", "t3", "user:u1", "user:u2"]), max_size=3)
_values: st.SearchStrategy[JsonValue] = st.sampled_from([1, 1.0, 2, True, "a", None, [1], {"k": 1}])
_summaries: st.SearchStrategy[JsonValue] = st.sampled_from(
    [0, 0.5, 1, 1.0, True, False, "a", "b", None, [1], {"$f": "nan"}, {"$f": "inf"}]
)
_conditions = st.builds(
    Condition,
    field=st.sampled_from(["summary.acc", "config.lr", "config.p"]),
    op=st.sampled_from(["=", "!=", "<", ">="]),
    value=st.sampled_from([0.5, 1, "a", "b"]),
) | st.builds(
    Condition,
    field=st.sampled_from(["summary.acc", "config.lr"]),
    op=st.sampled_from(["=", "!="]),
    value=st.sampled_from([True, None]),
)


@st.composite
def run_views(draw: st.DrawFn, prefix: str = "r") -> list[RunView]:
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
                config=draw(st.none() | st.dictionaries(st.just("lr"), _summaries, max_size=1)),
                summary=draw(st.dictionaries(st.just("acc"), _summaries, max_size=1)),
            )
        )
    return views


run_queries = st.fixed_dictionaries(
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
        "where": st.lists(_conditions, max_size=2),
    },
)


# -- rebuild equals incremental -----------------------------------------------------

_RUN_IDS = [("A", "r0"), ("A", "r1"), ("B", "r0"), ("B", "r2")]
_pathspecs = st.sampled_from(_RUN_IDS)


@st.composite
def view_histories(draw: st.DrawFn) -> list[tuple[list[RunView], list[TaskView]]]:
    """Commits of successive view versions, as a projector makes them batch after batch.

    A later version of a run shares what did not change (its tag sets, its
    parameters) with the one before, as the reducers' versions do, and
    keeps its flow, id, number and creation time.
    """
    latest: dict[str, RunView] = {}
    commits: list[tuple[list[RunView], list[TaskView]]] = []
    for _ in range(draw(st.integers(1, 6))):
        runs: list[RunView] = []
        for _ in range(draw(st.integers(0, 4))):
            flow, run_id = draw(_pathspecs)
            last = latest.get(f"{flow}/{run_id}")
            if last is not None:  # a run keeps its flow, id, number and creation time
                update = draw(
                    st.fixed_dictionaries(
                        {"position": st.tuples(st.integers(0, 99), st.just(0))},
                        optional={
                            "state": st.sampled_from(list(RunState)),
                            "tags": _tags,
                            "parameters": st.dictionaries(st.just("p"), _values, max_size=1),
                            "config": st.dictionaries(st.just("lr"), _summaries, max_size=1),
                            "summary_overrides": st.dictionaries(
                                st.just("acc"), _summaries, max_size=1
                            ),
                            "finished_at": _times.map(at),
                        },
                    )
                )
                view = replace_fields(last, update)
            else:
                view = make_run(
                    flow,
                    draw(st.none() | st.integers(0, 3)),
                    run_id=run_id,
                    state=draw(st.sampled_from(list(RunState))),
                    created=draw(_times),
                    tags=draw(_tags),
                    system_tags=draw(_tags),
                    parameters=draw(st.dictionaries(st.just("q"), _values, max_size=1)),
                )
            latest[view.pathspec] = view
            runs.append(view)
        tasks = [
            make_task(
                f"{flow}/{run_id}",
                draw(st.sampled_from(["start", "train"])),
                draw(st.sampled_from(["1", "2", "x"])),
                state=draw(st.sampled_from(list(TaskState))),
                foreach_index=draw(st.none() | st.integers(0, 2)),
            )
            for flow, run_id in draw(st.lists(_pathspecs, max_size=3))
        ]
        commits.append((runs, tasks))
    return commits


def snapshot(store: ReadStore) -> dict[str, Any]:
    """Everything the queries can tell about a store of ``view_histories``' views."""
    runs = [f"{flow}/{run_id}" for flow, run_id in _RUN_IDS]
    seen: dict[str, Any] = {
        "checkpoint": store.checkpoint(),
        "runs": {run: store.get_run_json(run) for run in runs},
        "flows": [store.list_flows(namespace) for namespace in (None, "t1", "user:u1")],
        "latest": [
            store.latest_run(flow, successful=successful, namespace=namespace)
            for flow in ("A", "B")
            for successful in (False, True)
            for namespace in (None, "t2")
        ],
        "deadletters": [
            (letter.sequence, letter.subject, letter.reason, letter.data)
            for letter in store.list_deadletters()
        ],
    }
    for filters in (
        {},
        {"tags_all": ["t1"]},
        {"state": ["failed"]},
        {"parameters": {"p": 1}},
        {"where": [Condition(field="summary.acc", op="<", value=1)]},
        {"where": [Condition(field="config.lr", op="!=", value=None)]},
    ):
        for sort in ALL_SORTS:
            seen[f"{filters} {sort}"] = ids(all_pages(store, RunQuery(**filters, sort=sort)))
    for run in runs:
        for step in ("start", "train"):
            items, _ = store.list_tasks_json(TaskQuery(run=run, step=step))
            seen[f"{run}/{step}"] = items
    return seen
