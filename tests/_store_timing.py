"""Time the read store at scale (not a test): ``.venv/bin/python tests/_store_timing.py [RUNS]``.

Builds a file store with RUNS runs (default 100,000) over 20 flows, 40% of
them failed, 10% tagged ``production``, each with a start/train/end step
summary, and 50 foreach tasks for every 20th run; then reports the bulk
commit throughput and the median and 99th percentile of each hot query.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from runstate.engine._states import RunState, TaskState
from runstate.projections._queries import RunQuery, TaskQuery
from runstate.projections._store import SQLiteReadStore
from runstate.projections._views import RunView, StepSummary, TaskView

FLOWS = [f"Flow{i}" for i in range(20)]
USERS = [f"user{i}" for i in range(50)]
T0 = datetime(2025, 1, 1, tzinfo=UTC)
TASKS_PER_STEP = 50


def make_run(i: int, rng: random.Random) -> RunView:
    flow = FLOWS[i % len(FLOWS)]
    number = i // len(FLOWS) + 1
    created = T0 + timedelta(seconds=i)
    state = RunState.FAILED if rng.random() < 0.4 else RunState.COMPLETED
    if i % 97 == 0:
        state = RunState.RUNNING
    user = rng.choice(USERS)
    tags = {"production"} if rng.random() < 0.1 else set()
    if rng.random() < 0.5:
        tags.add(f"team:{rng.randrange(5)}")
    finished = (
        None if state is RunState.RUNNING else created + timedelta(seconds=rng.randrange(1, 3600))
    )
    done = TaskState.COMPLETED if state is RunState.COMPLETED else TaskState.FAILED
    steps = (
        StepSummary(name="start", created_at=created, finished_at=created, task_states={"1": done}),
        StepSummary(
            name="train",
            created_at=created,
            task_states={str(k): done for k in range(2, 2 + TASKS_PER_STEP)},
        ),
        StepSummary(name="end", created_at=created, task_states={"60": done}),
    )
    return RunView(
        pathspec=f"{flow}/{number}",
        flow=flow,
        run_id=str(number),
        run_number=number,
        state=state,
        created_at=created,
        started_at=created,
        finished_at=finished,
        user=user,
        tags=frozenset(tags),
        system_tags=frozenset({f"user:{user}", "runtime:dev", "python_version:3.11.7"}),
        parameters={"alpha": rng.choice([0.1, 0.5, 1.0]), "epochs": rng.randrange(1, 20)},
        script_name="flow.py",
        steps=steps,
        end_task=f"{flow}/{number}/end/60",
        position=(i + 1, 0),
    )


def make_tasks(run: RunView) -> list[TaskView]:
    return [
        TaskView(
            pathspec=f"{run.pathspec}/train/{k}",
            flow=run.flow,
            run_id=run.run_id,
            step="train",
            task_id=str(k),
            state=TaskState.COMPLETED if k % 7 else TaskState.FAILED,
            created_at=run.created_at,
            started_at=run.created_at,
            finished_at=run.created_at + timedelta(seconds=k),
            foreach_index=k - 2,
            parent_tasks=(f"{run.pathspec}/start/1",),
            runtime_name="local",
            environment_info={"python": "3.11.7", "platform": "linux"},
            position=(k, 0),
        )
        for k in range(2, 2 + TASKS_PER_STEP)
    ]


def timed(label: str, fn: Callable[[], Any], repeat: int = 2000) -> None:
    for _ in range(50):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    p50 = statistics.median(samples) / 1e6
    p99 = samples[int(len(samples) * 0.99)] / 1e6
    print(f"{label:<58} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms")


def commit_rate(
    label: str,
    store: SQLiteReadStore,
    runs: list[RunView],
    tasks: list[TaskView],
    batch: int = 5000,
) -> None:
    """Commit in batches of ``batch`` views; report views/s and the share spent making JSON."""
    views: list[RunView | TaskView] = [*runs, *tasks]
    cpu = time.process_time()
    start = time.perf_counter()
    for at in range(0, len(views), batch):
        chunk = views[at : at + batch]
        store.commit(
            [v for v in chunk if isinstance(v, RunView)],
            [v for v in chunk if isinstance(v, TaskView)],
            store.checkpoint() + 1,
        )
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    start = time.perf_counter()
    for view in views:
        view.model_dump_json()
    dumping = time.perf_counter() - start
    # under load from other processes, CPU time is the steadier measure
    print(
        f"{label:<46} {len(views) / seconds:7.0f} views/s wall, {len(views) / cpu:7.0f} cpu "
        f"({cpu / len(views) * 1e6:5.1f} us cpu/view, model_dump_json "
        f"{dumping / len(views) * 1e6:4.1f})"
    )


def main(count: int) -> None:
    rng = random.Random(7)
    runs = [make_run(i, rng) for i in range(count)]
    with_tasks = runs[::20]
    tasks = [task for run in with_tasks for task in make_tasks(run)]
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteReadStore(Path(tmp) / "store.db")
        commit_rate("commit new runs (3 steps, 52 tasks in summary)", store, runs, [])
        commit_rate("commit new tasks", store, [], tasks)
        n = min(20_000, count)
        moved = [
            run.model_copy(update={"position": (10**7 + i, 0)}) for i, run in enumerate(runs[:n])
        ]
        commit_rate("commit runs again, only JSON changed", store, moved, [])
        finished = [
            run.model_copy(update={"state": RunState.COMPLETED, "finished_at": run.created_at})
            for run in runs[n : 2 * n]
        ]
        commit_rate("commit runs again, state and finish changed", store, finished, [])
        retried = [task.model_copy(update={"state": TaskState.RUNNING}) for task in tasks[:n]]
        commit_rate("commit tasks again, state changed", store, [], retried)
        # what a projector commits while runs fan out: each run beside its 50 tasks
        fresh = [make_run(count + i, rng) for i in range(400)]
        mixed: list[RunView | TaskView] = []
        for run in fresh:
            mixed += [run, *make_tasks(run)]
        commit_rate(
            "commit new runs each with its 50 tasks",
            store,
            [v for v in mixed if isinstance(v, RunView)],
            [v for v in mixed if isinstance(v, TaskView)],
        )
        db = Path(tmp) / "store.db"
        size = db.stat().st_size + db.with_name("store.db-wal").stat().st_size
        print(f"{count} runs, {len(tasks)} tasks, store {size / 1e6:.0f} MB")

        some = runs[count // 2].pathspec
        step_run = with_tasks[len(with_tasks) // 2].pathspec
        timed("get_run_json", lambda: store.get_run_json(some))
        timed("get_run (parsed)", lambda: store.get_run(some))
        timed("latest_run_json", lambda: store.latest_run_json("Flow3"))
        timed("latest_run_json successful", lambda: store.latest_run_json("Flow3", successful=True))
        timed("latest_run successful (parsed)", lambda: store.latest_run("Flow3", successful=True))
        timed(
            "latest_run successful, namespace user:user7",
            lambda: store.latest_run("Flow3", successful=True, namespace="user:user7"),
        )
        q_prod = RunQuery(flow="Flow3", tags_all=["production"], limit=10)
        timed("list_runs_json flow+production, 10 newest", lambda: store.list_runs_json(q_prod))
        timed("list_runs flow+production, 10 newest (parsed)", lambda: store.list_runs(q_prod))
        q_prod_all = RunQuery(tags_all=["production"], limit=10)
        timed(
            "list_runs_json production (all flows), 10 newest",
            lambda: store.list_runs_json(q_prod_all),
        )
        q_tasks = TaskQuery(run=step_run, step="train")
        timed("list_tasks_json 50 tasks of a step", lambda: store.list_tasks_json(q_tasks))
        timed("list_tasks 50 tasks of a step (parsed)", lambda: store.list_tasks(q_tasks))
        q_failed = TaskQuery(run=step_run, step="train", state=[TaskState.FAILED])
        timed("list_tasks_json failed tasks of a step", lambda: store.list_tasks_json(q_failed))
        deep = RunQuery(flow="Flow3", limit=50)
        for _ in range(60):
            cursor = store.list_runs_json(deep)[1]
            deep = deep.model_copy(update={"cursor": cursor})
        timed(
            "list_runs_json flow, 50 newest, page 61 (cursor)", lambda: store.list_runs_json(deep)
        )
        q_dur = RunQuery(flow="Flow3", sort="-duration", limit=50)
        timed("list_runs_json flow by -duration, 50", lambda: store.list_runs_json(q_dur))
        q_param = RunQuery(flow="Flow3", parameters={"alpha": 0.5}, limit=50)
        timed("list_runs_json flow + parameter, 50", lambda: store.list_runs_json(q_param))
        timed("list_flows", store.list_flows, repeat=200)
        timed("list_flows namespace user:user7", lambda: store.list_flows("user:user7"), repeat=50)
        store.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
