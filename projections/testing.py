"""Test helpers for code built on runstate's read side: views made by hand and the read
store contract suite.

``make_run`` and ``make_task`` build views without folding events.
``ReadStoreContract`` is the one suite every ``ReadStore`` implementation
passes: subclass it in a test module and give it a ``store`` fixture that
yields an empty store (see tests/test_read_store_contract.py). Its tests use
only the ``ReadStore`` protocol, as the projector and the query service do.
Importing this module needs pytest and hypothesis.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstate.engine._events import replace_fields
from runstate.engine._states import RunState, TaskState
from runstate.engine.errors import BadFilter
from runstate.projections._conditions import Condition
from runstate.projections._queries import (
    DeadLetter,
    FlowSummary,
    RunQuery,
    TaskQuery,
    encode_cursor,
)
from runstate.projections._store_examples import (
    ALL_SORTS,
    FILTERS,
    T0,
    all_pages,
    at,
    dataset,
    ids,
    list_runs,
    list_tasks,
    make_run,
    make_task,
    reference,
    reference_key,
    run_queries,
    run_views,
    snapshot,
    view_histories,
)
from runstate.projections._typing import ReadStore
from runstate.projections._views import RunView, StepSummary, StepView, TaskView

__all__ = ["ReadStoreContract", "make_run", "make_task"]

#: hypothesis reuses one store across examples (each starts with ``reset()``), and a
#: property runs on each subclass (its examples are replayed on every implementation)
_CONTRACT_HEALTH_CHECKS = [
    HealthCheck.too_slow,
    HealthCheck.function_scoped_fixture,
    HealthCheck.differing_executors,
]


class ReadStoreContract:
    """What every ``ReadStore`` promises. Subclass it with a ``store`` fixture (an empty store)."""

    # -- round trips and upserts -------------------------------------------------------

    def test_commit_then_get_returns_equal_views(self, store: ReadStore) -> None:
        """A committed run and task come back equal to what was committed."""
        run = make_run(tags={"production"}, parameters={"lr": 0.1, "layers": [1, 2]}, finished=30)
        task = make_task(foreach_index=3)
        store.commit([run], [task], 7)
        assert store.get_run("Train/1") == run
        assert store.get_task("Train/1/train/1") == task
        assert store.get_run_json("Train/1") == run.model_dump_json().encode()
        assert store.get_task_json("Train/1/train/1") == task.model_dump_json().encode()

    def test_unknown_pathspecs_give_none(self, store: ReadStore) -> None:
        """Reading a run, task or step that was never stored gives None, not an error."""
        assert store.get_run("Train/1") is None
        assert store.get_run_json("Train/1") is None
        assert store.get_task("Train/1/start/1") is None
        assert store.get_step("Train/1", "start") is None
        assert store.list_steps("Train/1") == []
        assert store.latest_run("Train") is None

    def test_upsert_replaces_run_and_its_tags_and_parameters(self, store: ReadStore) -> None:
        """Committing a run again replaces its row, tags and parameters, not adds to them."""
        store.commit([make_run(tags={"a", "b"}, parameters={"x": 1, "y": 2})], [], 1)
        newer = make_run(
            tags={"b", "c"}, parameters={"x": 3}, state=RunState.FAILED, system_tags={"user:bob"}
        )
        store.commit([newer], [], 2)
        assert store.get_run("Train/1") == newer
        assert ids(list_runs(store, RunQuery(tags_all=["a"]))) == []
        assert ids(list_runs(store, RunQuery(tags_all=["c"]))) == ["Train/1"]
        assert ids(list_runs(store, RunQuery(namespace="user:alice"))) == []
        assert ids(list_runs(store, RunQuery(namespace="user:bob"))) == ["Train/1"]
        assert ids(list_runs(store, RunQuery(parameters={"x": 1}))) == []
        assert ids(list_runs(store, RunQuery(parameters={"y": 2}))) == []
        assert ids(list_runs(store, RunQuery(parameters={"x": 3}))) == ["Train/1"]
        assert ids(list_runs(store, RunQuery(state=[RunState.COMPLETED]))) == []
        assert store.latest_run("Train", successful=True) is None
        assert store.list_flows() == [FlowSummary(name="Train", run_count=1, last_created_at=T0)]

    def test_tag_and_parameter_rows_follow_versions_that_share_their_sets(
        self,
        store: ReadStore,
    ) -> None:
        """Versions of a run made by the reducers share unchanged tag sets and parameters; the
        store skips rewriting those rows then, yet the rows follow every state and tag change,
        a failed commit, and a reset."""
        first = make_run(tags={"a"}, parameters={"x": 1}, state=RunState.RUNNING)
        store.commit([first], [], 1)
        moved = replace_fields(first, {"position": (2, 0), "message": "still going"})
        store.commit([moved], [], 2)
        assert ids(list_runs(store, RunQuery(tags_all=["a"], state=[RunState.RUNNING]))) == [
            "Train/1"
        ]
        failed = replace_fields(moved, {"state": RunState.FAILED, "position": (3, 0)})
        store.commit([failed], [], 3)
        assert ids(list_runs(store, RunQuery(tags_all=["a"], state=[RunState.RUNNING]))) == []
        assert ids(list_runs(store, RunQuery(tags_all=["a"], state=[RunState.FAILED]))) == [
            "Train/1"
        ]
        retagged = replace_fields(failed, {"tags": frozenset({"b"}), "parameters": {"x": 2}})
        with pytest.raises(Exception):  # noqa: B017 - any failure must roll back
            store.commit([retagged], [], 4, [(4, "s", "r", object())])  # type: ignore[list-item]
        assert ids(list_runs(store, RunQuery(tags_all=["a"]))) == ["Train/1"]
        store.commit([retagged], [], 4)
        assert ids(list_runs(store, RunQuery(tags_all=["a"]))) == []
        assert ids(list_runs(store, RunQuery(tags_all=["b"], parameters={"x": 2}))) == ["Train/1"]
        store.reset()
        store.commit([retagged], [], 1)
        assert ids(list_runs(store, RunQuery(tags_all=["b"], parameters={"x": 2}))) == ["Train/1"]

    def test_last_view_of_a_run_in_one_commit_wins(self, store: ReadStore) -> None:
        """Two versions of one run in one commit store the later one, with its own tags."""
        store.commit([make_run(tags={"old"}), make_run(tags={"new"}, state=RunState.FAILED)], [], 1)
        assert store.get_run("Train/1") == make_run(tags={"new"}, state=RunState.FAILED)
        assert ids(list_runs(store, RunQuery(tags_all=["old"]))) == []

    def test_upsert_replaces_task(self, store: ReadStore) -> None:
        """Committing a task again replaces it, and its new state is what the filters see."""
        store.commit([], [make_task(state=TaskState.RUNNING)], 1)
        store.commit([], [make_task(state=TaskState.FAILED)], 2)
        assert store.get_task("Train/1/train/1") == make_task(state=TaskState.FAILED)
        failed = TaskQuery(run="Train/1", step="train", state=[TaskState.FAILED])
        running = TaskQuery(run="Train/1", step="train", state=[TaskState.RUNNING])
        assert len(list_tasks(store, failed).items) == 1
        assert list_tasks(store, running).items == []

    def test_load_runs_and_tasks_in_bulk(self, store: ReadStore) -> None:
        """load_runs/load_tasks give the stored views among many pathspecs, skipping the missing."""
        runs = [make_run(number=n) for n in range(1, 1201)]
        tasks = [make_task(task_id=str(n)) for n in range(1, 1201)]
        store.commit(runs, tasks, 1)
        wanted = [f"Train/{n}" for n in range(0, 1300, 2)]
        loaded = store.load_runs(wanted)
        assert sorted(loaded) == sorted(f"Train/{n}" for n in range(2, 1201, 2))
        assert loaded["Train/42"] == runs[41]
        loaded_tasks = store.load_tasks(["Train/1/train/5", "Train/1/train/9999"])
        assert loaded_tasks == {"Train/1/train/5": tasks[4]}

    def test_fresh_store_has_checkpoint_zero(self, store: ReadStore) -> None:
        """A new store's checkpoint is 0, so the projector starts from sequence 1."""
        assert store.checkpoint() == 0

    def test_failed_commit_changes_nothing(self, store: ReadStore) -> None:
        """A commit that fails part way leaves neither its views nor its checkpoint."""
        store.commit([make_run(number=1)], [], 1)
        with pytest.raises(Exception):  # noqa: B017 - any failure must roll back
            store.commit([make_run(number=2)], [make_task()], 2, [(2, "s", "r", object())])  # type: ignore[list-item]
        assert store.checkpoint() == 1
        assert store.get_run("Train/2") is None
        assert store.get_task("Train/1/train/1") is None
        assert store.list_flows()[0].run_count == 1

    def test_prepared_commits_write_together_under_the_first_ones_checkpoint(
        self,
        store: ReadStore,
    ) -> None:
        """write(prepared, also) stores every part's views and dead letters, one checkpoint."""
        ours = store.prepare([make_run(number=1)], [], 10)
        theirs = store.prepare(
            [make_run(number=2)], [make_task("Train/2")], 9, [(4, "s", "r", b"x")]
        )
        store.write(ours, [theirs])
        assert store.checkpoint() == 10
        assert store.get_run("Train/1") == make_run(number=1)
        assert store.get_run("Train/2") == make_run(number=2)
        assert store.get_task("Train/2/train/1") == make_task("Train/2")
        assert [letter.sequence for letter in store.list_deadletters()] == [4]

    def test_stream_identity_is_recorded_and_survives_commits(self, store: ReadStore) -> None:
        """A new store knows no stream; the one recorded reads back, across commits, until reset."""
        assert store.stream_identity() is None
        store.set_stream_identity(1_700_000_000_000_000)
        store.commit([make_run()], [], 3)
        assert store.stream_identity() == 1_700_000_000_000_000
        assert store.checkpoint() == 3
        store.reset()
        assert store.stream_identity() is None

    def test_reset_forgets_everything(self, store: ReadStore) -> None:
        """reset() drops views, flows, dead letters and the checkpoint."""
        store.commit([make_run()], [make_task()], 5, [(3, "rs.ev.x.1.r", "bad", b"{")])
        store.reset()
        assert store.checkpoint() == 0
        assert store.get_run("Train/1") is None
        assert store.get_task("Train/1/train/1") is None
        assert store.list_flows() == []
        assert store.list_deadletters() == []

    def test_deadletters_are_kept_oldest_first(self, store: ReadStore) -> None:
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

    def test_steps_come_from_the_run_summary(self, store: ReadStore) -> None:
        """get_step and list_steps build StepViews from the run's step summaries."""
        steps = (
            StepSummary(
                name="start",
                created_at=T0,
                finished_at=at(1),
                task_states={"1": TaskState.COMPLETED},
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

    def test_reads_run_while_a_thread_commits(self, store: ReadStore) -> None:
        """Reads on one thread proceed while another thread commits, and see whole commits."""
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

    # -- filters and sorts -------------------------------------------------------------

    @pytest.mark.parametrize("filters", FILTERS, ids=[str(f) for f in FILTERS])
    def test_each_filter_selects_what_the_reference_selects(
        self, store: ReadStore, filters: dict[str, Any]
    ) -> None:
        """Every filter alone and combined selects the runs a plain-Python filter selects."""
        views = dataset()
        store.commit(views, [], 1)
        for sort in ("-created_at", "finished_at"):
            q = RunQuery(**filters, sort=sort)
            assert ids(list_runs(store, q)) == reference(views, q)

    def test_filters_spot_checks(self, store: ReadStore) -> None:
        """A few filters give the runs a reader expects (guarding the reference itself)."""
        store.commit(dataset(), [], 1)
        assert ids(list_runs(store, RunQuery(tags_all=["production"], flow="Train"))) == [
            "Train/3",
            "Train/1",
        ]
        assert ids(list_runs(store, RunQuery(parameters={"layers": 3}))) == ["Train/2", "Train/1"]
        assert ids(list_runs(store, RunQuery(parameters={"flag": True}))) == ["Train/adhoc"]
        assert ids(list_runs(store, RunQuery(namespace="production:deploy1"))) == ["Train/3"]
        assert ids(list_runs(store, RunQuery(finished_before=at(45)))) == ["Train/2", "Eval/1"]

    @pytest.mark.parametrize("sort", ALL_SORTS)
    def test_every_sort_key_pages_in_reference_order(self, store: ReadStore, sort: str) -> None:
        """Each sort key, ascending and descending, pages through every run in reference order."""
        views = dataset()
        store.commit(views, [], 1)
        for filters in ({}, {"flow": "Train"}, {"tags_all": ["production"]}):
            q = RunQuery(**filters, sort=sort, limit=2)
            assert ids(all_pages(store, q)) == reference(views, q)

    def test_summary_and_config_spot_checks(self, store: ReadStore) -> None:
        """Conditions compare values of their own kind; sorts put runs without a value last."""
        store.commit(dataset(), [], 1)
        where = [Condition(field="summary.acc", op=">", value=0.5)]
        assert ids(list_runs(store, RunQuery(where=where, sort="-summary.acc"))) == [
            "Train/2",
            "Train/1",
            "Eval/1",
        ]
        text = [Condition(field="summary.acc", op=">", value="a")]
        assert ids(list_runs(store, RunQuery(where=text))) == ["Train/3"]
        by_lr = ids(list_runs(store, RunQuery(flow="Train", sort="-config.lr")))
        assert by_lr == ["Train/3", "Train/1", "Train/2", "Train/adhoc"]

    def test_runs_frame_has_the_columns_of_the_selected_runs_in_pages(
        self, store: ReadStore
    ) -> None:
        """A frame holds the runs a list selects, in its order, cut into pages by size."""
        views = dataset()
        store.commit(views, [], 1)
        q = RunQuery(flow="Train", sort="run_number", limit=1000)
        frame = orjson.loads(store.runs_frame_json(q, 1_000_000))
        assert frame["columns"]["pathspec"] == reference(views, q)
        # values by the run's index in the page; a run without the key has none
        assert frame["config"]["lr"] == {"1": 0.1, "2": 0.02, "3": 0.1}
        assert frame["config"]["opt"] == {"2": "adam"}
        assert frame["explicit"]["acc"] == {"1": 0.9, "2": 0.95, "3": "n/a"}
        assert frame["logged"] == {}
        assert frame["columns"]["tags"][1] == ["gpu", "production"]
        assert frame["columns"]["finished_at"][3] is None and frame["next_cursor"] is None
        pathspecs: list[str] = []
        cursor = None
        while True:
            page = orjson.loads(store.runs_frame_json(q.model_copy(update={"cursor": cursor}), 700))
            assert 0 < len(page["columns"]["pathspec"]) < 4
            pathspecs += page["columns"]["pathspec"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pathspecs == reference(views, q)

    def test_missing_sort_values_sort_as_smallest(self, store: ReadStore) -> None:
        """Unfinished runs come last newest-finished first, and first oldest-finished first."""
        store.commit(dataset(), [], 1)
        newest = ids(list_runs(store, RunQuery(flow="Train", sort="-finished_at")))
        assert newest == ["Train/adhoc", "Train/1", "Train/2", "Train/3"]
        assert ids(list_runs(store, RunQuery(flow="Train", sort="finished_at")))[0] == "Train/3"
        assert ids(list_runs(store, RunQuery(flow="Train", sort="run_number")))[0] == "Train/adhoc"

    def test_created_at_ties_break_by_run_number(self, store: ReadStore) -> None:
        """Runs created at the same instant order by run number, then pathspec."""
        runs = [make_run(number=n, created=5) for n in (3, 11, 2)]
        store.commit(runs, [], 1)
        assert ids(list_runs(store, RunQuery(flow="Train"))) == ["Train/11", "Train/3", "Train/2"]
        latest = store.latest_run("Train")
        assert latest is not None and latest.pathspec == "Train/11"

    # -- pagination --------------------------------------------------------------------

    # 75 examples on each implementation: the 150 the SQLite store had alone, as they share the SQL
    @settings(max_examples=75, deadline=None, suppress_health_check=_CONTRACT_HEALTH_CHECKS)
    @given(
        views=run_views(),
        filters=run_queries,
        sort=st.sampled_from(ALL_SORTS),
        limit=st.integers(1, 4),
        inserted=st.lists(run_views(prefix="new"), max_size=4),
    )
    def test_pagination_visits_each_run_once_despite_inserts(
        self,
        store: ReadStore,
        views: list[RunView],
        filters: dict[str, Any],
        sort: str,
        limit: int,
        inserted: list[list[RunView]],
    ) -> None:
        """Paging visits each matching run once, in order, while new runs arrive between pages."""
        store.reset()
        store.commit(views, [], 1)
        q = RunQuery(**filters, sort=sort, limit=limit)
        expected = reference(views, q)
        assert ids(list_runs(store, q.model_copy(update={"limit": 1000}))) == expected
        seen: list[RunView] = []
        arrivals = iter(inserted)
        while True:
            page = list_runs(store, q)
            assert len(page.items) <= limit
            seen += page.items
            if page.next_cursor is None:
                break
            store.commit(next(arrivals, []), [], 2)
            q = q.model_copy(update={"cursor": page.next_cursor})
        keys = [reference_key(view, q.sort_key) for view in seen]
        if "." in q.sort_key and q.descending:
            # as ``reference``: descending by value, runs without a value still last
            in_order = sorted(keys, key=lambda key: key[1:], reverse=True)
            assert keys == sorted(in_order, key=lambda key: key[0])
        else:
            assert keys == sorted(keys, reverse=q.descending)
        assert len(set(keys)) == len(keys)  # no run twice
        original = {view.pathspec for view in views}
        assert [view.pathspec for view in seen if view.pathspec in original] == expected

    # -- latest run and flows ----------------------------------------------------------

    def test_latest_run_and_latest_successful(self, store: ReadStore) -> None:
        """latest_run is the newest run; successful=True skips runs that did not complete."""
        runs = [make_run(number=n, created=n, state=RunState.COMPLETED) for n in range(1, 4)]
        runs += [make_run(number=n, created=n, state=RunState.FAILED) for n in range(4, 40)]
        store.commit(runs, [], 1)
        latest = store.latest_run("Train")
        successful = store.latest_run("Train", successful=True)
        assert latest is not None and latest.pathspec == "Train/39"
        assert successful is not None and successful.pathspec == "Train/3"
        assert store.latest_run("Eval") is None

    def test_latest_run_in_a_namespace(self, store: ReadStore) -> None:
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

    def test_list_flows_counts_runs_per_flow_and_namespace(self, store: ReadStore) -> None:
        """list_flows gives each flow's run count and newest creation time (in a namespace)."""
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
        assert store.get_flow("Train") == FlowSummary(
            name="Train", run_count=4, last_created_at=at(30)
        )
        assert store.get_flow("Eval", "user:bob") == FlowSummary(
            name="Eval", run_count=1, last_created_at=at(15)
        )
        assert store.get_flow("Eval", "user:carol") is None
        assert store.get_flow("Nope") is None

    # -- tasks -------------------------------------------------------------------------

    def test_tasks_of_a_step_in_task_order_with_state_filter_and_pages(
        self, store: ReadStore
    ) -> None:
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
        every = list_tasks(store, TaskQuery(run="Train/1", step="train"))
        assert [t.task_id for t in every.items] == [str(n) for n in range(20, 0, -1)]
        assert every.next_cursor is None
        seen: list[TaskView] = []
        q = TaskQuery(run="Train/1", step="train", state=[TaskState.FAILED], limit=4)
        while True:
            page = list_tasks(store, q)
            seen += page.items
            if page.next_cursor is None:
                break
            q = q.model_copy(update={"cursor": page.next_cursor})
        assert [t.task_id for t in seen] == [str(n) for n in range(20, 0, -1) if n % 3]
        items, cursor = store.list_tasks_json(TaskQuery(run="Train/1", step="train", limit=1))
        assert cursor is not None and TaskView.model_validate_json(items[0]).task_id == "20"

    def test_task_ids_order_numerically_then_as_text(self, store: ReadStore) -> None:
        """Without foreach indexes, numeric ids order as numbers, other ids first by text."""
        store.commit([], [make_task(task_id=t) for t in ("10", "9", "b", "100", "a")], 1)
        page = list_tasks(store, TaskQuery(run="Train/1", step="train"))
        assert [t.task_id for t in page.items] == ["a", "b", "9", "10", "100"]

    # -- bad cursors and names ---------------------------------------------------------

    def test_bad_cursors_raise_bad_filter(self, store: ReadStore) -> None:
        """A cursor that is garbage, damaged, or from another sort order raises BadFilter."""
        store.commit([make_run(number=n, created=n) for n in range(5)], [], 1)
        cursor = list_runs(store, RunQuery(limit=2)).next_cursor
        assert cursor is not None
        with pytest.raises(BadFilter, match="sorted by '-created_at'"):
            list_runs(store, RunQuery(limit=2, cursor=cursor, sort="duration"))
        with pytest.raises(BadFilter, match="not a cursor"):
            list_runs(store, RunQuery(cursor="%%%"))
        with pytest.raises(BadFilter, match="damaged"):
            list_runs(store, RunQuery(cursor=encode_cursor("-created_at", (1,))))
        with pytest.raises(BadFilter):
            list_tasks(store, TaskQuery(run="Train/1", step="s", cursor=cursor))

    def test_latest_run_of_an_invalid_flow_name_is_bad_filter(self, store: ReadStore) -> None:
        """latest_run with a malformed flow name raises BadFilter rather than finding nothing."""
        with pytest.raises(BadFilter, match="flow"):
            store.latest_run("not a flow")

    # -- rebuild equals incremental ----------------------------------------------------

    @settings(max_examples=60, deadline=None, suppress_health_check=_CONTRACT_HEALTH_CHECKS)
    @given(history=view_histories())
    def test_a_rebuild_equals_incremental_commits(
        self, store: ReadStore, history: list[tuple[list[RunView], list[TaskView]]]
    ) -> None:
        """Committing each batch's changed views gives what one commit of the last views gives."""
        store.reset()
        for sequence, (runs, tasks) in enumerate(history, start=1):
            store.commit(runs, tasks, sequence, [(sequence, "rs.ev.A.x.r", "bad", b"{")])
        incremental = snapshot(store)
        store.reset()
        last_runs = {view.pathspec: view for runs, _ in history for view in runs}
        last_tasks = {view.pathspec: view for _, tasks in history for view in tasks}
        letters = [
            (sequence, "rs.ev.A.x.r", "bad", b"{") for sequence in range(1, len(history) + 1)
        ]
        store.commit(last_runs.values(), last_tasks.values(), len(history), letters)
        assert snapshot(store) == incremental
