"""A run's display name, notes, config and summary: edits, lists by them, and DataFrames."""

from __future__ import annotations

import math
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstate.client import (
    BadFilter,
    Client,
    ConfigurationError,
    InvalidEvent,
    NotFound,
    RunState,
    connect,
)
from runstate.client.testing import in_memory
from runstate.engine import Settings
from runstate.engine._points import untag, wire_value
from runstate.engine.testing import EventFactory
from runstate.projections._conditions import (
    Condition,
    condition_sql,
    parse_condition,
    reference_match,
    stored_value,
)
from runstate.projections._queries import RunQuery
from runstate.projections._reducers import fold_run
from runstate.projections._store import SQLiteReadStore
from runstate.projections._store_examples import make_run
from runstate.projections._views import RunView

pytestmark = pytest.mark.anyio

factory = EventFactory()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """A client of a runstate in memory."""
    async with in_memory(Settings(retry_budget=0.5)) as client:
        yield client


# -- the reducer ---------------------------------------------------------------------


def _fold(*events: Any) -> RunView:
    view: RunView | None = None
    for sequence, event in enumerate(events, 1):
        view = fold_run(view, event, (sequence, 0))
    assert view is not None
    return view


def test_updates_merge_config_and_summary_and_set_name_and_notes() -> None:
    """Config merges over the parameters, summary values merge, name and notes are set."""
    created = factory.run_created("Train/1", parameters={"lr": 0.1, "depth": 3})
    view = _fold(
        created,
        factory.run_updated("Train/1", name="first", config={"lr": 0.2, "opt": "adam"}),
        factory.run_updated("Train/1", notes="try", summary={"acc": 0.5}),
        factory.run_updated("Train/1", summary={"acc": 0.7, "f1": 0.6}),
    )
    assert (view.display_name, view.notes) == ("first", "try")
    assert view.config == {"lr": 0.2, "depth": 3, "opt": "adam"}
    assert view.parameters == {"lr": 0.1, "depth": 3}
    assert view.summary_overrides == {"acc": 0.7, "f1": 0.6}


def test_none_clears_a_name_and_an_absent_one_is_kept() -> None:
    """name=None clears the name; an edit that does not name it leaves it."""
    created = factory.run_created("Train/1")
    named = _fold(created, factory.run_updated("Train/1", name="x", notes="y"))
    kept = fold_run(named, factory.run_updated("Train/1", config={"a": 1}), (9, 0))
    assert kept is not None and (kept.display_name, kept.notes) == ("x", "y")
    cleared = fold_run(kept, factory.run_updated("Train/1", name=None), (10, 0))
    assert cleared is not None and (cleared.display_name, cleared.notes) == (None, "y")


def test_a_finished_run_is_edited_like_any_other() -> None:
    """Edits apply in every state: W&B users edit finished runs."""
    created = factory.run_created("Train/1", state=RunState.RUNNING)
    done = factory.run_state("Train/1", RunState.COMPLETED)
    view = _fold(created, done, factory.run_updated("Train/1", summary={"acc": 1}))
    assert view.state.value == "completed" and view.summary_overrides == {"acc": 1}
    assert view.rejected == ()


def test_an_unchanged_config_keeps_the_parameters_object() -> None:
    """Until a config update, config is the parameters dict itself (the store writes it once)."""
    view = _fold(factory.run_created("Train/1", parameters={"lr": 1}))
    assert view.config is view.parameters


@given(
    edits=st.lists(
        st.dictionaries(
            st.sampled_from(["a", "b", "c"]),
            st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none()),
            max_size=3,
        ),
        max_size=6,
    )
)
@settings(max_examples=50, deadline=None)
def test_config_and_summary_are_the_merge_of_every_edit_in_order(
    edits: list[dict[str, Any]],
) -> None:
    """Folding any edits gives each key's last value, config over the parameters."""
    events: list[Any] = [factory.run_created("Train/1", parameters={"a": "p"})]
    expected_config: dict[str, Any] = {"a": "p"}
    expected_summary: dict[str, Any] = {}
    for i, edit in enumerate(edits):
        if not edit:
            continue
        if i % 2:
            events.append(factory.run_updated("Train/1", config=edit))
            expected_config.update(edit)
        else:
            events.append(factory.run_updated("Train/1", summary=edit))
            expected_summary.update(edit)
    view = _fold(*events)
    assert view.config == expected_config
    assert view.summary_overrides == expected_summary


# -- checks before sending ----------------------------------------------------------------


async def test_values_that_are_not_json_are_refused_before_anything_is_sent(
    client: Client,
) -> None:
    """A set, a non-str key, a NaN in config or an empty edit raise InvalidEvent, unsent."""
    run = await client.create_run("Train")
    version = run.version
    with pytest.raises(InvalidEvent, match=r"config\.grid is a set"):
        await run.update_config({"grid": {1, 2}})
    with pytest.raises(InvalidEvent, match="which JSON cannot hold"):
        await run.update_config({"lr": math.nan})
    with pytest.raises(InvalidEvent, match="key"):
        await run.update_summary({1: 2})  # type: ignore[dict-item]
    with pytest.raises(InvalidEvent, match="nothing to update"):
        await client.update_run(run.pathspec)
    with pytest.raises(InvalidEvent, match="str or None"):
        await run.set_name(3)  # type: ignore[arg-type]
    assert run.version == version


async def test_updating_a_run_that_does_not_exist_is_not_found(client: Client) -> None:
    """update_run of an unknown run raises NotFound."""
    with pytest.raises(NotFound):
        await client.update_run("Train/99", name="x")


async def test_a_write_through_a_copy_counts_as_the_clients_last_write(client: Client) -> None:
    """``with_namespace`` copies share ``last_write``: a write through one is read back
    with ``after=`` the other's (the W&B facade reads through a fresh copy each time)."""
    writer, reader = client.with_namespace(None), client.with_namespace("user:else")
    run = await writer.create_run("Shared")
    receipt = await writer.update_run(run.pathspec, summary={"score": 7})
    assert client.last_write == reader.last_write == receipt.sequence
    seen = await reader.with_namespace(None).run(run.pathspec, after=reader.last_write)
    assert seen.summary_overrides == {"score": 7}


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ("summary.acc > adam", "not a JSON literal"),
        ("summary.acc ~ 3", "not <field> <operator> <value>"),
        ("metrics.acc > 3", "unknown field 'metrics.acc'"),
        ("summary. > 3", "not <field> <operator> <value>"),
        ("summary.done > true", "takes only = and !="),
        ("summary.x < null", "takes only = and !="),
        ("summary.x = [1]", "not list"),
        (("summary.acc", "~", 1), "unknown operator"),
        (("summary.acc", ">"), "a tuple is (field, operator, value)"),
    ],
)
async def test_a_bad_condition_is_a_bad_filter_naming_the_fault(
    client: Client, condition: Any, problem: str
) -> None:
    """A condition that does not parse raises BadFilter saying what was wrong, unsent."""
    with pytest.raises(BadFilter, match=problem.replace("(", r"\(").replace(")", r"\)")):
        await client.runs(where=[condition])


async def test_a_bad_sort_key_is_a_bad_filter(client: Client) -> None:
    """Sorting by a field that is neither summary nor config raises BadFilter."""
    with pytest.raises(BadFilter, match=r"summary\.<key> or config\.<key>"):
        await client.runs(sort="-metrics.acc")


# -- the SQL of a condition and its plain-Python reference agree -------------------------

_values = st.one_of(
    st.integers(-3, 3),
    st.floats(-3, 3),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.sampled_from(["a", "b", ""]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 2), max_size=2),
)
_literals = st.one_of(
    st.integers(-3, 3), st.floats(-3, 3), st.sampled_from(["a", "b"]), st.booleans(), st.none()
)


@given(
    present=st.booleans(),
    value=_values,
    op=st.sampled_from(["=", "!=", "<", "<=", ">", ">="]),
    literal=_literals,
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_condition_sql_matches_its_reference(
    present: bool, value: Any, op: str, literal: Any
) -> None:
    """For any stored value (or none) and condition, SQLite and the reference agree."""
    try:
        condition = Condition(field="summary.x", op=op, value=literal)  # type: ignore[arg-type]
    except ValueError:
        return  # a condition the model refuses (null < 1)
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE v (value, kind)")
    if present:
        db.execute("INSERT INTO v VALUES (?, ?)", stored_value(value))
    test, args = condition_sql("v.value", "v.kind", condition)
    sql = f"SELECT count(*) FROM (SELECT 1 AS one) LEFT JOIN v ON 1 WHERE {test}"
    matched = db.execute(sql, args).fetchone()[0] == 1
    assert matched == reference_match(present, value, condition)


def test_conditions_parse_from_text_and_tuples_alike() -> None:
    """The text and tuple forms give the same condition; parameters.<key> reads config."""
    assert parse_condition('config.opt = "adam"') == parse_condition(("config.opt", "=", "adam"))
    assert parse_condition("parameters.lr <= 0.01").field == "config.lr"
    assert parse_condition("summary.loss/val == 1").key == "loss/val"


# -- through the client -------------------------------------------------------------------


async def _runs_with_metrics(client: Client, accs: list[float | None]) -> list[Any]:
    """A run per accuracy (None: logs nothing), with parameters lr = i / 100."""
    handles = []
    for i, acc in enumerate(accs):
        run = await client.create_run("Train", parameters={"lr": i / 100})
        if acc is not None:
            await run.log({"acc": acc, "loss": 1 - acc})
        await run.flush()
        await run.start()
        await run.complete()
        handles.append(run)
    return handles


async def test_lists_filter_and_sort_on_logged_and_explicit_summary_values(
    client: Client,
) -> None:
    """summary.<key> reads the latest logged value unless an explicit one overrides it."""
    runs = await _runs_with_metrics(client, [0.5, 0.95, None, 0.8, 0.92])
    await runs[3].update_summary({"acc": 0.99})  # wins over the logged 0.8
    receipt = await runs[1].log({"acc": 0.97}) or await runs[1].flush()
    assert receipt is not None
    last = await runs[0].update_config({"lr": 0.5})
    await client.runs(after=last)  # the events applied
    page = await client.runs(where=["summary.acc > 0.9"], sort="-summary.acc", after=receipt)
    assert [run.pathspec for run in page.items] == ["Train/4", "Train/2", "Train/5"]
    ascending = await client.runs(sort="summary.acc")
    assert [run.pathspec for run in ascending.items] == [
        "Train/1",
        "Train/5",
        "Train/2",
        "Train/4",
        "Train/3",  # no value: last either way
    ]
    by_config = await client.runs(where=[("config.lr", ">=", 0.03)], sort="config.lr")
    assert [run.pathspec for run in by_config.items] == ["Train/4", "Train/5", "Train/1"]
    both = await client.runs(where=["summary.acc >= 0.9", "parameters.lr <= 0.02"])
    assert [run.pathspec for run in both.items] == ["Train/2"]
    assert [r.pathspec for r in (await client.runs(where=["summary.acc = null"])).items] == [
        "Train/3"
    ]


async def test_pages_sorted_by_summary_walk_every_run_once(client: Client) -> None:
    """Cursors of a summary sort continue exactly after the last item, ties and gaps too."""
    await _runs_with_metrics(client, [0.5, 0.5, None, 0.7, None, 0.1, 0.7])
    for sort in ("summary.acc", "-summary.acc"):
        page = await client.runs(sort=sort, page_size=2)
        seen = [run.pathspec async for run in page.all()]
        whole = await client.runs(sort=sort, page_size=100)
        assert seen == [run.pathspec for run in whole.items]
        assert len(set(seen)) == 7
        assert seen[-2:] == ["Train/3", "Train/5"] or seen[-2:] == ["Train/5", "Train/3"]


async def test_a_run_reads_back_its_name_notes_config_and_summary(client: Client) -> None:
    """Run objects show the edits; summary() puts explicit values over logged ones."""
    (run,) = await _runs_with_metrics(client, [0.5])
    await run.log({"acc": 0.6, "loss": 0.2})
    points = await run.flush()
    receipt = await client.update_run(
        run.pathspec,
        name="baseline",
        notes="first try",
        config={"opt": "adam"},
        summary={"acc": 0.9, "best": math.inf},
    )
    read = await client.run(run.pathspec, after=receipt)
    assert (read.display_name, read.notes) == ("baseline", "first try")
    assert read.config == {"lr": 0.0, "opt": "adam"} and read.parameters == {"lr": 0.0}
    assert read.summary_overrides == {"acc": 0.9, "best": math.inf}
    assert await read.summary(after=points) == {"acc": 0.9, "loss": 0.2, "best": math.inf}
    cleared = await client.update_run(run.pathspec, notes=None)
    again = await client.run(run.pathspec, after=cleared)
    assert (again.display_name, again.notes) == ("baseline", None)


async def test_edits_are_events_in_history_and_watch(client: Client) -> None:
    """A run.updated event shows in the run's history and reaches a live watch."""
    run = await client.create_run("Train")
    async with client.watch(run.pathspec) as changes:
        snapshot = await anext(changes)
        assert snapshot.run is not None and snapshot.run.display_name is None
        await run.set_name("renamed")
        change = await anext(changes)
        assert change.event is not None and change.event.type == "run.updated"
        assert change.run is not None and change.run.display_name == "renamed"
    records, _ = await client.history(run.pathspec)
    assert [record.event.type for record in records][-1] == "run.updated"


async def test_runs_frame_has_a_row_per_run_and_config_and_summary_columns(
    client: Client,
) -> None:
    """runs_frame returns every run matching, with config.<key> and summary.<key> columns."""
    pandas: Any = pytest.importorskip("pandas")
    runs = await _runs_with_metrics(client, [0.5, 0.95, None])
    await runs[0].set_name("base")
    receipt = await runs[2].update_summary({"acc": math.nan, "note": "none"})
    frame = await client.runs_frame("Train", sort="run_number", after=receipt)
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == [
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
        "config.lr",
        "summary.acc",
        "summary.loss",
        "summary.note",
    ]
    assert list(frame["pathspec"]) == ["Train/1", "Train/2", "Train/3"]
    assert frame["display_name"][0] == "base"
    assert list(frame["summary.acc"])[:2] == [0.5, 0.95]
    assert math.isnan(frame["summary.acc"][2])
    assert list(frame["summary.note"])[2] == "none"
    assert str(frame["created_at"].dtype).startswith("datetime64")
    assert (frame["duration"] >= 0).all()
    filtered = await client.runs_frame(where=["summary.acc > 0.9"])
    assert list(filtered["pathspec"]) == ["Train/2"]
    empty = await client.runs_frame("Other")
    assert len(empty) == 0 and "pathspec" in empty.columns


async def test_runs_frame_joins_pages_cut_by_the_reply_limit(client: Client) -> None:
    """A frame longer than one reply comes in several, each key in its right rows."""
    pytest.importorskip("pandas")
    handles = []
    for i in range(30):  # 30 runs of 40 kB each: more than one reply of 1 MB
        run = await client.create_run("Train", parameters={"i": i, "blob": "x" * 40_000})
        handles.append(run)
    # a key only one run has, so other pages lack it
    receipt = await handles[25].update_config({"late": "y"})
    frame = await client.runs_frame("Train", sort="config.i", after=receipt)
    assert list(frame["config.i"]) == list(range(30))
    assert list(frame["config.late"].isna()) == [i != 25 for i in range(30)]


async def test_runs_frame_without_pandas_names_the_extra(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without pandas installed, runs_frame raises ConfigurationError naming the extra."""
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ConfigurationError, match=r"runs_frame needs pandas.*runstate\[pandas\]"):
        await client.runs_frame()


async def test_over_nats_edits_and_lists_by_logged_and_explicit_summary(
    nats_url: str, tmp_path: Path
) -> None:
    """On a real server and a file store: lists by summary see points and edits alike."""
    async with connect(nats_url, projector=True, data_dir=tmp_path) as client:
        runs = await _runs_with_metrics(client, [0.2, 0.6, 0.4])
        points = await runs[0].flush()
        await runs[0].log({"acc": 0.7})
        points = await runs[0].flush()
        assert points is not None
        edit = await client.update_run(runs[2].pathspec, name="best", summary={"acc": 0.9})
        await client.runs(after=edit)
        page = await client.runs(where=["summary.acc >= 0.6"], sort="-summary.acc", after=points)
        assert [run.pathspec for run in page.items] == [
            runs[2].pathspec,
            runs[0].pathspec,
            runs[1].pathspec,
        ]
        assert page.items[0].display_name == "best"
        frame = await client.runs_frame(runs[0].flow, sort="-summary.acc")
        assert list(frame["summary.acc"]) == [0.9, 0.7, 0.6]
        assert list(frame["display_name"].isna()) == [False, True, True]


_any_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 3), max_size=2),
)


@given(values=st.lists(_any_values, min_size=1, max_size=20))
@settings(max_examples=200, deadline=None)
def test_frame_values_read_back_exactly(values: list[Any]) -> None:
    """Every config and summary value reaches a frame exactly, floats to the last bit."""
    with SQLiteReadStore(":memory:") as store:
        views = [
            make_run(number=i + 1, config={"v": wire_value(v)}, summary={"v": wire_value(v)})
            for i, v in enumerate(values)
        ]
        store.commit(views, [], 1)
        q = RunQuery(sort="run_number", limit=1000)
        frame = orjson.loads(store.runs_frame_json(q, 10**9))
    for part in ("config", "explicit"):
        column = frame[part]["v"]
        read = [untag(column[str(i)]) for i in range(len(values))]
        for got, want in zip(read, values, strict=True):
            if isinstance(want, float) and math.isnan(want):
                assert isinstance(got, float) and math.isnan(got)
            else:
                assert got == want and type(got) is type(want), (got, want)


def test_show_of_a_run_shows_its_name_notes_config_and_explicit_summary() -> None:
    """``runstate show RUN``'s tree names the run and lists its notes, config and summary."""
    from rich.console import Console

    from runstate.client.cli._trees import run_tree

    view = make_run(
        parameters={"lr": 0.1},
        config={"lr": 0.2},
        summary={"acc": 0.9, "best": {"$f": "inf"}},
    ).model_copy(update={"display_name": "baseline", "notes": "first try"})
    console = Console(width=200, record=True)
    console.print(run_tree(view, [], {}))
    out = console.export_text()
    assert out.splitlines()[0].startswith("Train/1 (baseline)  completed")
    assert "config: lr=0.2" in out and "summary: acc=0.9, best=inf" in out
    assert "notes: first try" in out


def test_summary_and_config_values_are_joined_by_primary_key(tmp_path: Path) -> None:
    """A list by summary and config reads each run's values by key, never scanning a table."""
    from runstate.projections._metrics_store import MetricsStore
    from runstate.projections._store_query import runs_sql

    metrics = MetricsStore(tmp_path / "v.metrics.sqlite3")
    with SQLiteReadStore(tmp_path / "v.sqlite3") as store:
        store.attach_metrics(metrics.uri)
        q = RunQuery(
            flow="Train",
            where=[parse_condition("summary.acc > 0.5"), parse_condition("config.lr < 1")],
            sort="-summary.loss",
        )
        plan = [
            row[3]
            for row in store._reader.execute(
                "EXPLAIN QUERY PLAN " + runs_sql(q, "metrics")[0], runs_sql(q, "metrics")[1]
            )
        ]
    metrics.close()
    scans = [step for step in plan if step.startswith("SCAN") and not step.startswith("SCAN r")]
    assert scans == [], plan
    assert sum("PRIMARY KEY" in step or "autoindex" in step for step in plan) >= 5, plan


async def test_an_edit_from_a_stale_handle_is_retried_as_tag_changes_are(client: Client) -> None:
    """Edits commute: a handle that missed another writer's change reloads and appends."""
    run = await client.create_run("Train")
    other = await client.run_handle(run.pathspec)
    await other.add_tags("seen")
    await other.set_notes("from the other")
    receipt = await run.update_summary({"acc": 0.5})  # run's version is stale by two
    read = await client.run(run.pathspec, after=receipt)
    assert read.summary_overrides == {"acc": 0.5} and read.notes == "from the other"
    assert "seen" in read.tags


def test_attaching_the_metrics_store_again_replaces_it(tmp_path: Path) -> None:
    """A second query service on one store attaches the metrics store again without error."""
    from runstate.projections._metrics_store import MetricsStore

    metrics = MetricsStore(tmp_path / "v.metrics.sqlite3")
    with SQLiteReadStore(tmp_path / "v.sqlite3") as store:
        store.attach_metrics(metrics.uri)
        store.attach_metrics(metrics.uri)
        where = [parse_condition("summary.acc > 0")]
        assert store.list_runs_json(RunQuery(where=where)) == ([], None)
    metrics.close()
