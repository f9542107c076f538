"""Reducers: each event's effect on run and task views, and the properties of folding a log."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstate.engine._events import (
    ArtifactRecord,
    Event,
    ExceptionInfo,
    ForeachFrame,
    TaskCreated,
)
from runstate.engine._states import RunState, TaskState, check_run_transition
from runstate.engine.errors import IllegalTransition
from runstate.engine.testing import EventFactory
from runstate.projections._reducers import ViewKey, fold, fold_run, fold_task, fold_view, touched
from runstate.projections._views import Position, RunView, StepView, TaskView

R = RunState
T = TaskState
T0 = datetime(2025, 1, 1, tzinfo=UTC)
RUN = "Train/42"
START = f"{RUN}/start/1"
END = f"{RUN}/end/9"

Views = dict[ViewKey, RunView | TaskView]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- events ------------------------------------------------------------------------

factory = EventFactory(flow="Train", start=T0)


def _records(*artifacts: tuple[str, str]) -> list[ArtifactRecord]:
    """Inline JSON artifacts (name, sha256), each with its sha256 as its value."""
    return [
        ArtifactRecord(name=name, sha256=sha, size=len(sha), codec="json", inline=sha)
        for name, sha in artifacts
    ]


def positioned(events: Iterable[Event]) -> list[tuple[Event, Position]]:
    """Each event in a commit of its own, at sequences 1, 2, 3, ..."""
    return [(event, (seq, 0)) for seq, event in enumerate(events, start=1)]


def fold_all(*events: Event) -> Views:
    return fold({}, positioned(events))


def run_of(views: Views, run: str = RUN) -> RunView:
    view = views[("run", run)]
    assert isinstance(view, RunView)
    return view


def task_of(views: Views, task: str) -> TaskView:
    view = views[("task", task)]
    assert isinstance(view, TaskView)
    return view


def without_rejections(view: RunView | TaskView) -> dict[str, Any]:
    return {k: v for k, v in view.__dict__.items() if k not in ("rejected", "position")}


# -- runs -------------------------------------------------------------------------------


def test_run_created() -> None:
    """RunCreated makes the run view from its payload."""
    views = fold_all(
        factory.run_created(
            RUN,
            state=R.SCHEDULED,
            at=5,
            tags=["production"],
            system_tags=["user:alice"],
            parameters={"alpha": 0.5},
            user="alice",
            script_name="train.py",
            scheduled_at=at(60),
            idempotency_key="nightly",
        )
    )
    run = run_of(views)
    assert (run.pathspec, run.flow, run.run_id, run.run_number) == (RUN, "Train", "42", 42)
    assert run.state is R.SCHEDULED
    assert run.created_at == at(5)
    assert run.started_at is None and run.finished_at is None
    assert run.tags == {"production"} and run.system_tags == {"user:alice"}
    assert run.all_tags == {"production", "user:alice"}
    assert run.parameters == {"alpha": 0.5}
    assert (run.user, run.script_name, run.idempotency_key) == ("alice", "train.py", "nightly")
    assert run.scheduled_at == at(60)
    assert run.steps == () and run.rejected == () and run.end_task is None
    assert run.position == (1, 0)


def test_run_number_only_for_numeric_ids() -> None:
    """run_number is the id as an integer when it is all digits, else None."""
    assert run_of(fold_all(factory.run_created("Train/007")), "Train/007").run_number == 7
    assert (
        run_of(fold_all(factory.run_created("Train/nightly-3")), "Train/nightly-3").run_number
        is None
    )


def test_run_created_running_is_started() -> None:
    """A run created running has started when it was created."""
    run = run_of(fold_all(factory.run_created(RUN, state=R.RUNNING, at=3)))
    assert run.started_at == at(3)


def test_run_created_in_an_illegal_state_makes_no_view() -> None:
    """A RunCreated whose initial state the machine refuses creates nothing."""
    assert fold_run(None, factory.run_created(RUN, state=R.COMPLETED), (1, 0)) is None


def test_events_without_a_run_header_make_no_run_view() -> None:
    """Without its RunCreated, a run's other events leave the run view missing."""
    events: list[Event] = [
        factory.run_state(RUN, R.RUNNING),
        factory.task_created(START),
        factory.task_state(START, 0, T.RUNNING),
    ]
    for event in events:
        assert fold_run(None, event, (1, 0)) is None


def test_run_lifecycle_times() -> None:
    """started_at is the first time running, finished_at the time it ends."""
    run = run_of(
        fold_all(
            factory.run_created(RUN, at=0),
            factory.run_state(RUN, R.RUNNING, at=10, label="Started", message="on gpu-3"),
            factory.run_state(RUN, R.COMPLETED, at=70),
        )
    )
    assert run.state is R.COMPLETED
    assert (run.started_at, run.finished_at) == (at(10), at(70))
    assert run.duration == 60
    assert run.label is None and run.message is None  # a label belongs to the state it came with
    assert run.finished and run.successful


def test_run_resume_clears_finished_at_and_keeps_started_at() -> None:
    """A resume reopens a failed run: finished_at is cleared, started_at stays the first."""
    views = fold_all(
        factory.run_created(RUN, at=0),
        factory.run_state(RUN, R.RUNNING, at=10),
        factory.run_state(RUN, R.FAILED, at=20),
        factory.run_state(RUN, R.RUNNING, at=30, resume=True, label="Resumed"),
    )
    run = run_of(views)
    assert run.state is R.RUNNING and run.label == "Resumed"
    assert (run.started_at, run.finished_at) == (at(10), None)
    views = fold(views, [(factory.run_state(RUN, R.COMPLETED, at=40), (5, 0))])
    assert run_of(views).finished_at == at(40)


def test_cancelling_is_not_finished() -> None:
    """cancelling is on the way to an end, not an end."""
    run = run_of(
        fold_all(
            factory.run_created(RUN),
            factory.run_state(RUN, R.RUNNING, at=1),
            factory.run_state(RUN, R.CANCELLING, at=2),
        )
    )
    assert run.finished_at is None and not run.finished


def test_illegal_run_transition_is_rejected() -> None:
    """An illegal run change is recorded in rejected and changes nothing but position."""
    views = fold_all(
        factory.run_created(RUN),
        factory.run_state(RUN, R.RUNNING, at=1),
        factory.run_state(RUN, R.COMPLETED, at=2),
    )
    before = run_of(views)
    views = fold(views, [(factory.run_state(RUN, R.RUNNING, at=3), (7, 2))])
    after = run_of(views)
    assert without_rejections(after) == without_rejections(before)
    assert after.position == (7, 2)
    [rejection] = after.rejected
    assert (rejection.sequence, rejection.index, rejection.type) == (7, 2, "run.state_changed")
    assert "completed" in rejection.reason and "running" in rejection.reason
    assert RUN in rejection.reason


def test_resume_of_a_completed_run_is_rejected() -> None:
    """resume=True from completed is refused like any illegal change."""
    views = fold_all(
        factory.run_created(RUN),
        factory.run_state(RUN, R.RUNNING),
        factory.run_state(RUN, R.COMPLETED),
    )
    views = fold(views, [(factory.run_state(RUN, R.RUNNING, resume=True), (9, 0))])
    assert run_of(views).state is R.COMPLETED
    assert len(run_of(views).rejected) == 1


def test_second_run_created_is_rejected() -> None:
    """A second RunCreated of an existing run is rejected and replaces nothing."""
    views = fold_all(
        factory.run_created(RUN, tags=["a"]), factory.run_created(RUN, state=R.RUNNING, tags=["b"])
    )
    run = run_of(views)
    assert run.tags == {"a"} and run.state is R.PENDING
    assert [r.type for r in run.rejected] == ["run.created"]


def test_tags_replace_then_add_then_remove() -> None:
    """A tag change replaces, then adds, then removes user tags; system tags never change."""
    views = fold_all(
        factory.run_created(RUN, tags=["a", "b"], system_tags=["user:alice", "runtime:k8s"])
    )
    views = fold(views, [(factory.run_tags(RUN, add=["c"], remove=["a", "user:alice"]), (2, 0))])
    assert run_of(views).tags == {"b", "c"}
    views = fold(
        views, [(factory.run_tags(RUN, replace=["x", "y"], add=["z"], remove=["y"]), (3, 0))]
    )
    run = run_of(views)
    assert run.tags == {"x", "z"}
    assert run.system_tags == {"user:alice", "runtime:k8s"}
    views = fold(views, [(factory.run_tags(RUN, replace=[]), (4, 0))])
    assert run_of(views).tags == frozenset()
    assert run_of(views).system_tags == {"user:alice", "runtime:k8s"}


def test_a_tag_change_that_changes_nothing_returns_the_same_view() -> None:
    """Adding a tag the run has already leaves the view (and its position) as it is."""
    run = run_of(fold_all(factory.run_created(RUN, tags=["a"])))
    assert fold_run(run, factory.run_tags(RUN, add=["a"], remove=["zzz"]), (5, 0)) is run


def test_events_of_other_runs_heartbeats_artifacts_and_metadata_leave_a_run_alone() -> None:
    """A run view is returned as is for events that do not concern it."""
    run = run_of(fold_all(factory.run_created(RUN), factory.task_created(START)))
    events: list[Event] = [
        factory.run_state("Train/43", R.RUNNING),
        factory.task_created("Train/43/start/1"),
        factory.task_created("Train/421/start/1"),
        factory.task_state("Train/43/start/1", 0, T.RUNNING),
        factory.heartbeat(RUN),
        factory.heartbeat(START),
        factory.artifacts(START, 0, records=_records(("x", "1"))),
        factory.metadata(START, 0, [("host", "h")]),
    ]
    for event in events:
        assert fold_run(run, event, (100, 0)) is run


# -- steps in the run view -----------------------------------------------------------------


def test_task_created_adds_step_summaries_in_order_of_first_appearance() -> None:
    """Steps appear in the order their first task was created, with that task's time."""
    views = fold_all(
        factory.run_created(RUN),
        factory.task_created(START, at=1),
        factory.task_created(f"{RUN}/train/2", parents=[START], at=2, foreach_index=0),
        factory.task_created(f"{RUN}/train/3", parents=[START], at=3, foreach_index=1),
        factory.task_created(f"{RUN}/join/4", parents=[f"{RUN}/train/2", f"{RUN}/train/3"], at=4),
    )
    run = run_of(views)
    assert [s.name for s in run.steps] == ["start", "train", "join"]
    train = run.step("train")
    assert train is not None
    assert train.created_at == at(2)
    assert train.task_states == {"2": T.PENDING, "3": T.PENDING}
    assert train.status == "pending" and train.finished_at is None
    assert run.tasks_total == 4 and run.tasks_done == 0
    assert run.end_task is None
    assert run.step("nope") is None


def test_end_task() -> None:
    """The run knows the task of its end step once it is created."""
    run = run_of(
        fold_all(
            factory.run_created(RUN),
            factory.task_created(START),
            factory.task_created(END, parents=[START], at=1),
        )
    )
    assert run.end_task == END


def test_step_counts_status_and_finished_at() -> None:
    """A step's counts and status follow its tasks; finished_at is set once all are done."""
    a, b = f"{RUN}/train/2", f"{RUN}/train/3"
    views = fold_all(
        factory.run_created(RUN),
        factory.task_created(a, at=1),
        factory.task_created(b, at=1),
        factory.task_state(a, 0, T.RUNNING, at=2),
        factory.task_state(a, 0, T.COMPLETED, at=3),
    )
    train = run_of(views).step("train")
    assert train is not None
    assert train.counts() == {"completed": 1, "pending": 1}
    assert train.status == "running" and train.finished_at is None
    views = fold(views, [(factory.task_state(b, 0, T.RUNNING, at=4), (6, 0))])
    views = fold(views, [(factory.task_state(b, 0, T.FAILED, at=5), (7, 0))])
    train = run_of(views).step("train")
    assert train is not None
    assert train.counts() == {"completed": 1, "failed": 1}
    assert train.status == "failed" and train.finished_at == at(5)
    # a retry reopens the step
    views = fold(views, [(factory.task_state(b, 1, T.PENDING, at=6), (8, 0))])
    train = run_of(views).step("train")
    assert train is not None
    assert train.task_states["3"] is T.PENDING and train.finished_at is None
    views = fold(views, [(factory.task_state(b, 1, T.RUNNING, at=7), (9, 0))])
    views = fold(views, [(factory.task_state(b, 1, T.COMPLETED, at=8), (10, 0))])
    run = run_of(views)
    train = run.step("train")
    assert train is not None
    assert train.status == "completed" and train.finished_at == at(8)
    assert run.tasks_done == 2
    step = StepView.from_run(run, train)
    assert (step.pathspec, step.tasks_total, step.counts) == (f"{RUN}/train", 2, {"completed": 2})
    assert step.position == run.position


def test_a_new_task_reopens_a_finished_step() -> None:
    """A task created in a step whose tasks had all finished clears its finished_at."""
    views = fold_all(
        factory.run_created(RUN),
        factory.task_created(START),
        factory.task_state(START, 0, T.FAILED, at=1),
        factory.task_created(f"{RUN}/start/2", at=2),
    )
    start = run_of(views).step("start")
    assert start is not None
    assert start.finished_at is None and start.status == "running"  # one failed, one pending


def test_run_summary_ignores_illegal_task_changes() -> None:
    """A task change the machine refuses does not move the run's summary."""
    views = fold_all(
        factory.run_created(RUN),
        factory.task_created(START),
        factory.task_state(START, 0, T.COMPLETED),  # pending -> completed skips running
        factory.task_state(START, 0, T.RUNNING),
        factory.task_state(START, 0, T.COMPLETED),
        factory.task_state(START, 1, T.PENDING),  # a retry after success
        factory.task_state(START, 0, T.RUNNING),  # a finished attempt
        factory.task_created(START),  # created twice
    )
    start = run_of(views).step("start")
    assert start is not None
    assert start.task_states == {"1": T.COMPLETED}
    assert run_of(views).rejected == ()  # task rejections are the task's
    assert len(task_of(views, START).rejected) == 4


def test_task_state_of_an_unknown_task_leaves_the_run_alone() -> None:
    """A state change for a task the run has not seen created changes nothing."""
    run = run_of(fold_all(factory.run_created(RUN), factory.task_created(START)))
    assert fold_run(run, factory.task_state(f"{RUN}/train/5", 0, T.RUNNING), (9, 0)) is run
    assert fold_run(run, factory.task_state(f"{RUN}/start/5", 0, T.RUNNING), (9, 0)) is run


# -- tasks ----------------------------------------------------------------------------------


def test_task_created() -> None:
    """TaskCreated makes a pending task at attempt 0 with its foreach place and lineage."""
    frame = ForeachFrame(step="train", index=3, num_splits=8, value="lr=0.1")
    task = task_of(
        fold_all(
            factory.task_created(
                f"{RUN}/train/5",
                parents=[START],
                at=7,
                foreach_index=3,
                foreach_stack=[frame],
                runtime_name="k8s",
                environment_info={"python": "3.11"},
            )
        ),
        f"{RUN}/train/5",
    )
    assert (task.flow, task.run_id, task.step, task.task_id) == ("Train", "42", "train", "5")
    assert task.state is T.PENDING and task.attempt == 0
    assert [(a.attempt, a.state, a.created_at) for a in task.attempts] == [(0, T.PENDING, at(7))]
    assert task.created_at == at(7) and task.started_at is None and task.finished_at is None
    assert task.foreach_index == 3 and task.foreach_stack == (frame,)
    assert task.parent_tasks == (START,) and task.child_tasks == ()
    assert task.runtime_name == "k8s" and task.environment_info == {"python": "3.11"}
    assert task.position == (1, 0)


def test_children_are_added_to_their_parents_once() -> None:
    """A task's creation adds it to each parent's child_tasks, once."""
    a, b = f"{RUN}/train/2", f"{RUN}/train/3"
    join = f"{RUN}/join/4"
    events = [
        factory.task_created(START),
        factory.task_created(a, parents=[START], at=1),
        factory.task_created(b, parents=[START], at=1),
        factory.task_created(join, parents=[a, b, a], at=2),
        factory.task_created(join, parents=[a, b], at=3),  # created again, later
    ]
    views = fold_all(*events)
    assert task_of(views, START).child_tasks == (a, b)
    assert task_of(views, a).child_tasks == (join,)
    assert task_of(views, b).child_tasks == (join,)
    assert task_of(views, join).parent_tasks == (a, b, a)
    assert [r.type for r in task_of(views, join).rejected] == ["task.created"]


def test_a_missing_parent_is_not_created_from_its_child() -> None:
    """Folding a child's creation into a parent that does not exist creates no parent view."""
    child = factory.task_created(f"{RUN}/train/2", parents=[START], at=1)
    assert ("task", START) not in fold_all(child)
    assert fold_view(("task", START), None, child, (1, 0)) is None


def test_attempt_lifecycle() -> None:
    """Running sets started_at, an end sets finished_at and the exception; times are per attempt."""
    boom = ExceptionInfo(type="ValueError", message="boom", traceback="...")
    views = fold_all(
        factory.task_created(START, at=0),
        factory.task_state(START, 0, T.RUNNING, at=1, label="Started"),
        factory.task_state(START, 0, T.FAILED, at=2, message="bad input", exception=boom),
    )
    task = task_of(views, START)
    assert task.state is T.FAILED and task.message == "bad input" and task.label is None
    assert (task.started_at, task.finished_at, task.duration) == (at(1), at(2), 1)
    assert task.exception == boom and task.finished and not task.successful
    views = fold(
        views, [(factory.task_state(START, 1, T.PENDING, at=3, label="AwaitingRetry"), (4, 0))]
    )
    task = task_of(views, START)
    assert task.attempt == 1 and task.state is T.PENDING and task.label == "AwaitingRetry"
    assert task.started_at is None and task.finished_at is None and task.exception is None
    views = fold(views, [(factory.task_state(START, 1, T.RUNNING, at=4), (5, 0))])
    views = fold(views, [(factory.task_state(START, 1, T.COMPLETED, at=6), (6, 0))])
    task = task_of(views, START)
    assert task.state is T.COMPLETED and task.successful
    assert (task.started_at, task.finished_at) == (at(4), at(6))
    assert [(a.attempt, a.state) for a in task.attempts] == [(0, T.FAILED), (1, T.COMPLETED)]
    first = task.attempt_view(0)
    assert first is not None
    assert (first.started_at, first.finished_at, first.exception) == (at(1), at(2), boom)
    assert task.attempt_view(5) is None


def test_a_pending_attempt_may_fail_without_running() -> None:
    """An attempt that fails before it starts has a finished_at and no started_at."""
    task = task_of(
        fold_all(factory.task_created(START), factory.task_state(START, 0, T.CRASHED, at=5)), START
    )
    assert task.state is T.CRASHED
    assert (task.started_at, task.finished_at, task.duration) == (None, at(5), None)


def test_state_change_without_attempt_means_the_current_one() -> None:
    """A state event that names no attempt applies to the current attempt."""
    views = fold_all(
        factory.run_created(RUN),
        factory.task_created(START),
        factory.task_state(START, 0, T.FAILED),
        factory.task_state(START, 1, T.PENDING),
        factory.task_state(START, None, T.RUNNING),
    )
    task = task_of(views, START)
    assert (task.attempt, task.state) == (1, T.RUNNING)
    assert len(task.attempts) == 2 and task.attempts[1].started_at is not None
    start = run_of(views).step("start")
    assert start is not None and start.task_states == {"1": T.RUNNING}


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([factory.task_state(START, 0, T.COMPLETED)], "cannot go from pending to completed"),
        (
            [
                factory.task_state(START, 0, T.RUNNING),
                factory.task_state(START, 0, T.COMPLETED),
                factory.task_state(START, 0, T.RUNNING),
            ],
            "the attempt has finished",
        ),
        (
            [
                factory.task_state(START, 0, T.RUNNING),
                factory.task_state(START, 0, T.COMPLETED),
                factory.task_state(START, 1, T.PENDING),
            ],
            "only a failed, cancelled or crashed attempt may be retried",
        ),
        (
            [factory.task_state(START, 0, T.FAILED), factory.task_state(START, 2, T.PENDING)],
            "the next is 1",
        ),
        (
            [factory.task_state(START, 0, T.FAILED), factory.task_state(START, 1, T.RUNNING)],
            "starts pending",
        ),
        (
            [
                factory.task_state(START, 0, T.FAILED),
                factory.task_state(START, 1, T.PENDING),
                factory.task_state(START, 0, T.RUNNING),
            ],
            "the latest attempt is 1",
        ),
    ],
)
def test_illegal_task_transition_is_rejected(events: list[Event], reason: str) -> None:
    """An illegal task change is recorded in rejected, naming why, and changes no state."""
    views = fold_all(factory.task_created(START), *events[:-1])
    before = task_of(views, START)
    seq = len(events) + 1
    views = fold(views, [(events[-1], (seq, 3))])
    after = task_of(views, START)
    assert without_rejections(after) == without_rejections(before)
    assert after.position == (seq, 3)
    rejection = after.rejected[-1]
    assert (rejection.sequence, rejection.index) == (seq, 3)
    assert rejection.type == "task.state_changed"
    assert reason in rejection.reason and START in rejection.reason


def test_artifacts_per_attempt() -> None:
    """Artifacts belong to an attempt; the latest value of a name wins within an attempt."""
    views = fold_all(
        factory.task_created(START),
        factory.task_state(START, 0, T.RUNNING),
        factory.artifacts(START, 0, records=_records(("model", "m0"), ("score", "s0")), at=2),
        factory.task_state(START, 0, T.FAILED),
        factory.task_state(START, 1, T.PENDING),
        factory.task_state(START, 1, T.RUNNING),
        factory.artifacts(START, None, records=_records(("model", "m1a")), at=7),
        factory.artifacts(START, 1, records=_records(("model", "m1b")), at=8),
    )
    task = task_of(views, START)
    latest = task.artifacts_of()
    assert {name: a.sha256 for name, a in latest.items()} == {"model": "m1b"}
    assert latest["model"].attempt == 1 and latest["model"].sequence == 8
    assert latest["model"].created_at == at(8)
    assert latest["model"].pathspec == f"{START}/model"
    assert latest["model"].inline == "m1b" and latest["model"].ref is None
    first = task.artifacts_of(0)
    assert {name: a.sha256 for name, a in first.items()} == {"model": "m0", "score": "s0"}
    assert first["model"].created_at == at(2) and first["model"].sequence == 3


def test_identical_artifact_records_are_kept_once() -> None:
    """The same (name, attempt, sha256) twice in one commit is recorded once."""
    created = task_of(fold_all(factory.task_created(START)), START)
    event = factory.artifacts(
        START, 0, records=_records(("model", "m"), ("model", "m"), ("model", "m2"))
    )
    once = fold_task(created, event, (5, 0))
    assert once is not None
    task = fold_task(once, factory.artifacts(START, 0, records=_records(("model", "m"))), (5, 1))
    assert task is once  # the second event added nothing
    assert [(a.name, a.sha256, a.sequence) for a in task.artifacts] == [
        ("model", "m", 5),
        ("model", "m2", 5),
    ]


def test_artifacts_and_metadata_of_a_missing_attempt_are_rejected() -> None:
    """Recording for an attempt the task does not have yet is rejected."""
    views = fold_all(
        factory.task_created(START),
        factory.artifacts(START, 1, records=_records(("model", "m"))),
        factory.metadata(START, 3, []),
    )
    task = task_of(views, START)
    assert task.artifacts == () and task.metadata == ()
    assert [r.type for r in task.rejected] == ["task.artifacts_recorded", "task.metadata_recorded"]
    assert "no attempt 1" in task.rejected[0].reason


def test_metadata_latest_value() -> None:
    """metadata_dict holds the latest value of each name; entries keep their attempt."""
    views = fold_all(
        factory.task_created(START),
        factory.metadata(START, 0, [("host", "h1"), ("gpu", "0")], at=1),
        factory.task_state(START, 0, T.FAILED),
        factory.task_state(START, 1, T.PENDING),
        factory.metadata(START, 1, [("host", "h2")], at=5),
        factory.metadata(START, None, []),  # no entries: nothing to record
    )
    task = task_of(views, START)
    assert task.metadata_dict == {"host": "h2", "gpu": "0"}
    assert [(m.name, m.attempt, m.created_at) for m in task.metadata] == [
        ("host", 0, at(1)),
        ("gpu", 0, at(1)),
        ("host", 1, at(5)),
    ]
    assert task.position == (5, 0)


def test_events_of_other_tasks_leave_a_task_alone() -> None:
    """A task view is returned as is for other tasks' events, run events and heartbeats."""
    task = task_of(fold_all(factory.task_created(START)), START)
    other = f"{RUN}/start/2"
    events: list[Event] = [
        factory.task_state(other, 0, T.RUNNING),
        factory.artifacts(other, 0, records=_records(("x", "1"))),
        factory.metadata(other, 0, [("a", "b")]),
        factory.task_created(other, parents=[f"{RUN}/start/3"], at=0),
        factory.run_created(RUN),
        factory.run_state(RUN, R.RUNNING),
        factory.heartbeat(START),
    ]
    for event in events:
        assert fold_task(task, event, (100, 0)) is task
    assert fold_task(None, factory.task_state(START, 0, T.RUNNING), (1, 0)) is None


def test_position_makes_folding_idempotent() -> None:
    """An event at or before a view's position returns the view unchanged."""
    views = fold_all(
        factory.run_created(RUN),
        factory.task_created(START),
        factory.task_state(START, 0, T.RUNNING),
    )
    run, task = run_of(views), task_of(views, START)
    late = factory.task_state(START, 0, T.COMPLETED)
    for position in [(3, 0), (2, 5), (1, 0)]:
        assert fold_task(task, late, position) is task
        assert fold_run(run, late, position) is run
    assert fold_task(task, late, (3, 1)) is not task


def test_touched() -> None:
    """Each event type names the views it may change."""
    assert touched(factory.run_created(RUN)) == [("run", RUN)]
    assert touched(factory.run_state(RUN, R.RUNNING)) == [("run", RUN)]
    assert touched(factory.run_tags(RUN, add=["a"])) == [("run", RUN)]
    assert touched(factory.task_state(START, 0, T.RUNNING)) == [("run", RUN), ("task", START)]
    assert touched(
        factory.task_created(f"{RUN}/join/4", parents=[START, f"{RUN}/train/2", START], at=0)
    ) == [
        ("run", RUN),
        ("task", f"{RUN}/join/4"),
        ("task", START),
        ("task", f"{RUN}/train/2"),
    ]
    assert touched(factory.artifacts(START, 0, records=_records())) == [("task", START)]
    assert touched(factory.metadata(START, 0, [])) == [("task", START)]
    assert touched(factory.heartbeat(START)) == []


def test_malformed_pathspecs_touch_nothing() -> None:
    """Events whose pathspec is not of a run (or task) touch and create no view."""
    events: list[Event] = [
        factory.run_created("Train/42/extra"),
        factory.task_created(f"{RUN}/train/1/extra"),
        factory.task_state(f"{RUN}/train", 0, T.RUNNING),
        factory.metadata("Train", 0, []),
    ]
    for event in events:
        assert touched(event) == []
    assert fold_run(None, factory.run_created("Train/42/extra"), (1, 0)) is None
    assert fold_task(None, factory.task_created(f"{RUN}/train/1/extra"), (1, 0)) is None


def test_views_survive_a_json_round_trip() -> None:
    """Views built without validation equal the same views stored as JSON and loaded back."""
    views = fold_all(
        factory.run_created(RUN, tags=["t"], parameters={"p": [1, 2.5, None, {"x": "é"}]}),
        factory.run_state(RUN, R.RUNNING),
        factory.task_created(START, foreach_stack=[ForeachFrame(step="start", index=0)]),
        factory.task_state(START, 0, T.RUNNING),
        factory.artifacts(START, 0, records=_records(("model", "m"))),
        factory.metadata(START, 0, [("host", "h")]),
        factory.task_state(START, 0, T.FAILED, exception=ExceptionInfo(type="E", message="m")),
        factory.run_state(RUN, R.CANCELLED),  # legal
        factory.run_state(RUN, R.COMPLETED),  # rejected
    )
    for view in views.values():
        assert type(view).model_validate_json(view.model_dump_json()) == view
        assert view.model_copy() == view


# -- property tests over generated logs ---------------------------------------------------

RETRYABLE = {T.FAILED, T.CANCELLED, T.CRASHED}
TASK_NEXT: dict[TaskState, set[TaskState]] = {
    T.PENDING: {T.RUNNING, T.FAILED, T.CANCELLED, T.CRASHED},
    T.RUNNING: {T.COMPLETED, T.FAILED, T.CANCELLED, T.CRASHED},
    T.COMPLETED: set(),
    T.FAILED: set(),
    T.CANCELLED: set(),
    T.CRASHED: set(),
}


def task_machine_allows(attempt: int, state: TaskState, event_attempt: int, new: TaskState) -> bool:
    if event_attempt == attempt:
        return new in TASK_NEXT[state]
    return event_attempt == attempt + 1 and state in RETRYABLE and new is T.PENDING


def run_summary_allows(state: TaskState, event_attempt: int, new: TaskState) -> bool:
    """The rule the run view applies without attempt numbers (see _reducers' docstring)."""
    if new is T.PENDING and event_attempt >= 1:
        return state in RETRYABLE
    return new in TASK_NEXT[state]


@dataclass
class Workload:
    """A generated log and what the generator knows about it."""

    events: list[tuple[Event, Position]]
    illegal: set[str] = field(default_factory=set)  # ids of events the views must reject


@dataclass
class _TaskPlan:
    path: str
    events: list[Event] = field(default_factory=list)
    attempt: int = 0
    state: TaskState = T.PENDING


class _Generator:
    """Builds a realistic run: start -> train (foreach) -> join -> end, with retries and noise."""

    def __init__(self, draw: st.DrawFn, rnd: random.Random, illegal: bool, mistakes: bool) -> None:
        self.draw = draw
        self.rnd = rnd
        self.with_illegal = illegal
        self.mistakes = mistakes
        self.illegal: set[str] = set()

    def maybe(self, p: float) -> bool:
        return self.rnd.random() < p

    def sprinkle_task(self, plan: _TaskPlan) -> None:
        if not (self.with_illegal and self.maybe(0.3)):
            return
        candidates = [
            (a, s)
            for a in (plan.attempt - 1, plan.attempt, plan.attempt + 1, plan.attempt + 2)
            for s in T
            if a >= 0
            and not task_machine_allows(plan.attempt, plan.state, a, s)
            and (self.mistakes or not run_summary_allows(plan.state, a, s))
        ]
        # A writer that "resets" a task to pending without a new attempt is the likeliest mistake.
        reset = (plan.attempt, T.PENDING)
        kind = self.rnd.choice([0, 0, 0, 1, 2])
        event: Event
        if kind == 0 and candidates:
            a, s = reset if reset in candidates and self.maybe(0.4) else self.rnd.choice(candidates)
            event = factory.task_state(plan.path, a, s)
        elif kind == 1:
            event = factory.artifacts(plan.path, plan.attempt + 1, records=_records(("ghost", "g")))
        else:
            event = factory.task_created(plan.path)
        self.illegal.add(event.id)
        plan.events.append(event)

    def step(self, plan: _TaskPlan, attempt: int, state: TaskState, **payload: Any) -> None:
        plan.events.append(factory.task_state(plan.path, attempt, state, **payload))
        plan.attempt, plan.state = attempt, state
        self.sprinkle_task(plan)

    def record(self, plan: _TaskPlan) -> None:
        if self.maybe(0.5):
            names = self.rnd.sample(["model", "score", "data"], self.rnd.randint(1, 2))
            records = [(n, f"{n}-{plan.attempt}-{self.rnd.randrange(3)}") for n in names]
            plan.events.append(
                factory.artifacts(plan.path, plan.attempt, records=_records(*records))
            )
        if self.maybe(0.4):
            value = str(self.rnd.randrange(3))
            plan.events.append(
                factory.metadata(plan.path, None, [("host", value), ("attempt", value)])
            )

    def task(
        self, run: str, step: str, task_id: int, parents: list[str], index: int | None = None
    ) -> tuple[TaskCreated, _TaskPlan]:
        path = f"{run}/{step}/{task_id}"
        stack = [ForeachFrame(step=step, index=index)] if index is not None else []
        created = factory.task_created(
            path, parents=parents, at=0, foreach_index=index, foreach_stack=stack
        )
        plan = _TaskPlan(path)
        self.sprinkle_task(plan)
        attempts = self.draw(st.integers(1, 3))
        for attempt in range(attempts):
            if attempt:
                self.step(plan, attempt, T.PENDING, label="AwaitingRetry")
            last = attempt == attempts - 1
            if last and self.maybe(0.1):
                return created, plan  # still pending: the log ends mid-run
            started = self.maybe(0.9)
            if started:
                self.step(plan, attempt, T.RUNNING)
                self.record(plan)
                if last and self.maybe(0.1):
                    return created, plan  # still running
            if last and started and self.maybe(0.8):
                end = T.COMPLETED
            else:
                end = self.rnd.choice([T.FAILED, T.CANCELLED, T.CRASHED])
            boom = ExceptionInfo(type="E", message="boom") if end is T.FAILED else None
            self.step(plan, attempt, end, exception=boom)
        return created, plan

    def sprinkle_run(self, events: list[Event], run: str, state: RunState) -> None:
        if not (self.with_illegal and self.maybe(0.3)):
            return
        candidates: list[tuple[RunState, bool]] = []
        for new in R:
            for resume in (False, True):
                try:
                    check_run_transition(run, state, new, resume=resume)
                except IllegalTransition:
                    candidates.append((new, resume))
        event: Event
        if self.maybe(0.2):
            event = factory.run_created(run)
        else:
            new, resume = self.rnd.choice(candidates)
            event = factory.run_state(run, new, resume=resume)
        self.illegal.add(event.id)
        events.append(event)

    def run(self, number: int) -> list[Event]:
        run = f"Train/{number}"
        initial = self.rnd.choice([R.SCHEDULED, R.PENDING, R.RUNNING])
        events: list[Event] = [
            factory.run_created(
                run,
                state=initial,
                tags=["production"] if number % 2 == 0 else [],
                system_tags=["user:me"],
            )
        ]
        state = initial
        self.sprinkle_run(events, run, state)
        for new in [R.PENDING, R.RUNNING]:
            if (state, new) in [(R.SCHEDULED, R.PENDING), (R.PENDING, R.RUNNING)]:
                events.append(factory.run_state(run, new))
                state = new
                self.sprinkle_run(events, run, state)
        start_created, start = self.task(run, "start", 1, [])
        events += [start_created, *start.events]
        width = self.draw(st.integers(0, 4))
        trains = [self.task(run, "train", 2 + k, [start.path], k) for k in range(width)]
        events += [created for created, _ in trains]  # the fan-out
        events += self.interleave([plan.events for _, plan in trains])
        join_created, join = self.task(
            run, "join", 2 + width, [plan.path for _, plan in trains] or [start.path]
        )
        end_created, end = self.task(run, "end", 3 + width, [join.path])
        events += [join_created, *join.events, end_created, *end.events]
        final = self.rnd.choice([R.COMPLETED, R.FAILED, R.CANCELLING, R.CRASHED, None])
        if final is not None:
            events.append(factory.run_state(run, final))
            state = final
            self.sprinkle_run(events, run, state)
            if final is R.CANCELLING:
                events.append(factory.run_state(run, R.CANCELLED))
                state = R.CANCELLED
            if state in (R.FAILED, R.CRASHED, R.CANCELLED) and self.maybe(0.3):
                events.append(factory.run_state(run, R.RUNNING, resume=True))
                events.append(factory.run_state(run, R.COMPLETED))
        # tag changes anywhere after the header
        for _ in range(self.rnd.randrange(3)):
            tag_event = factory.run_tags(
                run,
                add=self.rnd.sample(["a", "b", "c"], self.rnd.randrange(3)),
                remove=self.rnd.sample(["a", "b", "user:me"], self.rnd.randrange(2)),
                replace=["x"] if self.maybe(0.2) else None,
            )
            events.insert(self.rnd.randrange(1, len(events) + 1), tag_event)
        # edits of name, notes, config and summary anywhere after the header, in any state
        for _ in range(self.rnd.randrange(3)):
            edit = self.rnd.choice(
                [
                    {"name": self.rnd.choice(["a", "b", None])},
                    {"notes": "n", "config": {"lr": self.rnd.randrange(3)}},
                    {"summary": {"acc": self.rnd.random(), "best": math.nan}},
                ]
            )
            update = factory.run_updated(run, **edit)
            events.insert(self.rnd.randrange(1, len(events) + 1), update)
        if self.maybe(0.3):
            events.insert(self.rnd.randrange(1, len(events) + 1), factory.heartbeat(start.path))
        return events

    def interleave(self, sequences: list[list[Event]]) -> list[Event]:
        """Merge sequences at random, keeping each one's order."""
        queues = [list(s) for s in sequences if s]
        merged: list[Event] = []
        while queues:
            queue = self.rnd.choice(queues)
            merged.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
        return merged


@st.composite
def workloads(draw: st.DrawFn, illegal: bool = True, mistakes: bool = True) -> Workload:
    """A log of 1-3 interleaved runs, in commits, with times rising along the log."""
    rnd = draw(st.randoms(use_true_random=True))  # fast; structure is drawn below
    generator = _Generator(draw, rnd, illegal, mistakes)
    runs = [generator.run(number) for number in range(1, draw(st.integers(1, 3)) + 1)]
    events = generator.interleave(runs)
    positioned_events: list[tuple[Event, Position]] = []
    sequence = 0
    for i, event in enumerate(events):
        event = event.model_copy(update={"occurred_at": at(i)})
        previous = positioned_events[-1] if positioned_events else None
        if previous is not None and previous[0].pathspec == event.pathspec and rnd.random() < 0.4:
            position = (sequence, previous[1][1] + 1)  # the same commit
        else:
            sequence += rnd.randint(1, 3)  # other subjects' messages in between
            position = (sequence, 0)
        positioned_events.append((event, position))
    return Workload(positioned_events, generator.illegal)


def _stored(views: Views) -> Views:
    """The views as the projector would load them back from its store."""
    return {
        key: type(view).model_validate_json(view.model_dump_json()) for key, view in views.items()
    }


PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(workload=workloads(), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_any_chunking_gives_the_same_views(workload: Workload, cuts: list[int]) -> None:
    """Folding a log in any chunks, with views stored and reloaded between, gives the same views."""
    events = workload.events
    whole = fold({}, events)
    bounds = sorted({min(c, len(events)) for c in cuts} | {0, len(events)})
    views: Views = {}
    for lo, hi in itertools.pairwise(bounds):
        views = _stored(fold(views, events[lo:hi]))
    assert views == whole
    one_by_one: Views = {}
    for item in events:
        fold(one_by_one, [item])
    assert one_by_one == whole


@PROPERTY
@given(workload=workloads())
def test_applying_an_event_twice_changes_nothing(workload: Workload) -> None:
    """Folding an event again at its own position returns every touched view as it was."""
    views: Views = {}
    for event, position in workload.events:
        fold(views, [(event, position)])
        for key in touched(event):
            view = views.get(key)
            assert fold_view(key, view, event, position) is view


@PROPERTY
@given(workload=workloads(), data=st.data())
def test_a_stream_with_repeats_folds_like_the_stream(
    workload: Workload, data: st.DataObject
) -> None:
    """Redelivered events (repeated right after themselves, or replayed later) change nothing."""
    events = workload.events
    repeats = data.draw(st.lists(st.integers(0, 3), min_size=len(events), max_size=len(events)))
    stream: list[tuple[Event, Position]] = []
    for i, (item, times) in enumerate(zip(events, repeats, strict=True)):
        stream += [item] * (1 + times)
        if times == 3 and i > 2:
            stream.append(events[i - 2])  # an older event delivered late
    assert fold({}, stream) == fold({}, events)


@PROPERTY
@given(workload=workloads())
def test_illegal_events_are_rejected_and_change_no_state(workload: Workload) -> None:
    """Every illegal event is recorded as rejected and changes nothing else in any view."""
    views: Views = {}
    rejected_ids: set[str] = set()
    for event, position in workload.events:
        before = {key: views.get(key) for key in touched(event)}
        fold(views, [(event, position)])
        for key, old in before.items():
            new = views.get(key)
            if old is None or new is None or len(new.rejected) == len(old.rejected):
                continue
            rejected_ids.add(event.id)
            assert new.rejected[-1].sequence == position[0]
            assert without_rejections(new) == without_rejections(old)
    assert workload.illegal <= rejected_ids


@PROPERTY
@given(workload=workloads(mistakes=False))
def test_run_summary_agrees_with_task_views(workload: Workload) -> None:
    """After every event, each run's step summaries agree with its task views."""
    views: Views = {}
    for event, position in workload.events:
        fold(views, [(event, position)])
        run = views.get(("run", "/".join(event.pathspec.split("/")[:2])))
        if isinstance(run, RunView):
            assert_run_agrees_with_tasks(run, views)
    for task in (v for v in views.values() if isinstance(v, TaskView)):
        assert task.attempts[-1].attempt == task.attempt == len(task.attempts) - 1
        assert task.attempts[-1].state is task.state
        for parent in task.parent_tasks:
            if ("task", parent) in views:
                assert task.pathspec in task_of(views, parent).child_tasks


def assert_run_agrees_with_tasks(run: RunView, views: Views) -> None:
    mine = [
        v
        for v in views.values()
        if isinstance(v, TaskView) and v.pathspec.startswith(run.pathspec + "/")
    ]
    assert run.tasks_total == len(mine)
    for summary in run.steps:
        of_step = [t for t in mine if t.step == summary.name]
        assert summary.task_states == {t.task_id: t.state for t in of_step}
        assert summary.created_at == min(t.created_at for t in of_step)
        if all(t.finished for t in of_step):
            assert summary.finished_at == max(t.finished_at for t in of_step if t.finished_at)
        else:
            assert summary.finished_at is None
    assert [s.name for s in run.steps] == [
        s for s in ["start", "train", "join", "end"] if any(t.step == s for t in mine)
    ]
    end = [t.pathspec for t in mine if t.step == "end"]
    assert run.end_task == (end[0] if end else None)
    assert run.system_tags == {"user:me"}
    assert (run.finished_at is not None) == run.finished


@PROPERTY
@given(workload=workloads(illegal=False))
def test_a_legal_log_has_no_rejections(workload: Workload) -> None:
    """A log the writer could have appended folds without a single rejection."""
    views = fold({}, workload.events)
    assert all(view.rejected == () for view in views.values())
    assert any(isinstance(view, RunView) for view in views.values())
