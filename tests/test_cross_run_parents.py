"""A task naming a parent of another run is rejected, so a fold split by runs is one fold."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstate.engine._events import (
    Event,
)
from runstate.engine._states import RunState, TaskState
from runstate.engine.testing import EventFactory
from runstate.projections._reducers import FoldBatch, ViewKey, fold, touched
from runstate.projections._views import Position, RunView, TaskView

Views = dict[ViewKey, RunView | TaskView]

T0 = datetime(2025, 3, 1, tzinfo=UTC)


factory = EventFactory(start=T0)


def run_of(event: Event) -> str:
    return "/".join(event.pathspec.split("/")[:2])


@st.composite
def logs_with_cross_run_parents(draw: st.DrawFn) -> list[tuple[Event, Position]]:
    """Runs whose tasks name parents in their own run, in other runs, and nowhere."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    runs = [f"Train/{n}" for n in range(1, draw(st.integers(2, 5)) + 1)]
    events: list[Event] = []
    tasks: list[str] = []
    for t in range(draw(st.integers(5, 60))):
        kind = rnd.random()
        if kind < 0.1 or not events:
            events.append(factory.run_created(rnd.choice(runs), state=RunState.RUNNING, at=t))
        elif kind < 0.6:
            run = rnd.choice(runs)
            task = f"{run}/{rnd.choice(['start', 'train'])}/{t}"
            candidates = [*tasks, f"{rnd.choice(runs)}/start/999"]
            parents = rnd.sample(candidates, min(len(candidates), rnd.randint(0, 3)))
            events.append(factory.task_created(task, parents=parents, at=t))
            tasks.append(task)
        elif tasks:
            events.append(factory.task_state(rnd.choice(tasks), 0, TaskState.RUNNING, at=t))
    positioned: list[tuple[Event, Position]] = []
    sequence = 0
    for event in events:
        sequence += 1
        positioned.append((event, (sequence, 0)))
    return positioned


def split_fold(
    log: list[tuple[Event, Position]], mine: set[str], cuts: list[int], rnd: random.Random
) -> Views:
    """Fold ``log`` as the projector and a feeder do: each its runs, into one shared store.

    In each stretch between two cuts both fold from the store as it was at the
    stretch's start; then both write what they changed, in either order.
    """
    store: Views = {}
    bounds = sorted({0, len(log), *(min(cut, len(log)) for cut in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        changed = []
        for side in (True, False):
            batch = FoldBatch(store)
            for event, position in log[lo:hi]:
                if (run_of(event) in mine) is side:
                    batch.add(event, position)
            changed.append(batch.changed())
        assert not changed[0].keys() & changed[1].keys(), "a view with two writers"
        rnd.shuffle(changed)
        for views in changed:
            store.update(views)
    return store


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    log=logs_with_cross_run_parents(),
    shares=st.lists(st.booleans(), min_size=5, max_size=5),
    cuts=st.lists(st.integers(0, 60), max_size=5),
    seed=st.integers(0, 2**32),
)
def test_a_fold_split_by_runs_in_any_chunks_equals_one_fold(
    log: list[tuple[Event, Position]], shares: list[bool], cuts: list[int], seed: int
) -> None:
    """Runs split between two folders, in any chunking and write order: the views of one fold."""
    mine = {f"Train/{n}" for n, taken in enumerate(shares, start=1) if taken}
    assert split_fold(log, mine, cuts, random.Random(seed)) == fold({}, log)


@PROPERTY
@given(log=logs_with_cross_run_parents())
def test_every_view_an_event_touches_is_of_its_run(log: list[tuple[Event, Position]]) -> None:
    """touched() names only views of the event's own run, so a run has one folder."""
    for event, _ in log:
        for _, pathspec in touched(event):
            assert pathspec == run_of(event) or pathspec.startswith(run_of(event) + "/")


def test_a_task_with_a_parent_in_another_run_is_rejected_and_leaves_the_parent_alone() -> None:
    """The creation is recorded as rejected in its run; no task, no child in the other run."""
    parent = "Train/1/start/1"
    log: list[Event] = [
        factory.run_created("Train/1", state=RunState.RUNNING, at=0),
        factory.task_created(parent, parents=[], at=1),
        factory.run_created("Train/2", state=RunState.RUNNING, at=2),
        factory.task_created("Train/2/start/2", parents=[], at=3),
        factory.task_created("Train/2/join/3", parents=["Train/2/start/2", parent], at=4),
    ]
    views = fold({}, [(event, (i + 1, 0)) for i, event in enumerate(log)])
    other = views[("task", parent)]
    assert isinstance(other, TaskView) and other.child_tasks == () and other.position == (2, 0)
    same = views[("task", "Train/2/start/2")]
    assert isinstance(same, TaskView) and same.child_tasks == ()
    assert ("task", "Train/2/join/3") not in views
    run = views[("run", "Train/2")]
    assert isinstance(run, RunView)
    assert [s.name for s in run.steps] == ["start"]
    (rejection,) = run.rejected
    assert (rejection.sequence, rejection.type) == (5, "task.created")
    assert "parent task Train/1/start/1 is not a task of Train/2" in rejection.reason


def test_a_parent_of_the_same_run_still_gets_its_child() -> None:
    """Parents within the run are unchanged: the child is added to each once."""
    log: list[Event] = [
        factory.run_created("Train/1", state=RunState.RUNNING, at=0),
        factory.task_created("Train/1/start/1", parents=[], at=1),
        factory.task_created("Train/1/end/2", parents=["Train/1/start/1"], at=2),
    ]
    views = fold({}, [(event, (i + 1, 0)) for i, event in enumerate(log)])
    start = views[("task", "Train/1/start/1")]
    assert isinstance(start, TaskView) and start.child_tasks == ("Train/1/end/2",)
    run = views[("run", "Train/1")]
    assert isinstance(run, RunView) and run.rejected == ()
