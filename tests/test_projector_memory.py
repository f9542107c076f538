"""The projector over the in-memory event log and an in-memory store: its logic, no server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstate.client.testing import in_memory
from runstate.engine import Commit, MemoryEventLog, Settings
from runstate.engine.testing import EventFactory
from runstate.projections import Projector
from runstate.projections._protocol import StatusRequest
from runstate.projections._store import SQLiteReadStore

pytestmark = pytest.mark.anyio

FLOW = "Train"


async def _write_workload(log: MemoryEventLog, runs: int, tasks: int) -> int:
    """The standard workload's runs 1..runs, one event a commit; the events written."""
    factory = EventFactory("tester", FLOW)
    written = 0
    for number in range(1, runs + 1):
        for event in factory.workload_run(number, str(number), tasks):
            await log.append_commit(Commit([event]))
            written += 1
    return written


async def _fold(log: MemoryEventLog, **options: int) -> AsyncIterator[Projector]:
    store = SQLiteReadStore(":memory:")
    projector = Projector(log, store, **options)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(projector.run)
        await projector.wait_started()
        with anyio.fail_after(20):
            await projector.wait_for(await log.stream_last_sequence(), timeout=20)
        yield projector
        tg.cancel_scope.cancel()
    store.close()


def _views(store: SQLiteReadStore, runs: Iterable[str], tasks: Iterable[str]) -> tuple[dict, dict]:  # type: ignore[type-arg]
    return store.load_runs(list(runs)), store.load_tasks(list(tasks))


def _pathspecs(runs: int, tasks: int) -> tuple[list[str], list[str]]:
    run_specs = [f"{FLOW}/{n}" for n in range(1, runs + 1)]
    task_specs = [
        f"{FLOW}/{n}/{step}/{t}"
        for n in range(1, runs + 1)
        for step, ids in (("start", [1]), ("train", range(2, tasks + 2)))
        for t in ids
    ]
    return run_specs, task_specs


async def test_the_projector_folds_the_workload_from_the_in_memory_log() -> None:
    """Run states, step counts and retries come out as the workload wrote them."""
    log = MemoryEventLog(Settings())
    written = await _write_workload(log, runs=8, tasks=10)
    async for projector in _fold(log):
        store = projector.store
        assert store.get_run(f"{FLOW}/1").state.value == "completed"  # type: ignore[union-attr]
        assert store.get_run(f"{FLOW}/7").state.value == "failed"  # type: ignore[union-attr]
        step = store.get_step(f"{FLOW}/2", "train")
        assert step is not None and step.counts == {"completed": 10}
        retried = store.get_task(f"{FLOW}/2/train/11")  # k = 10: failed once, then completed
        assert retried is not None and retried.attempt == 1
        assert projector.events_applied == written


async def test_a_fold_in_batches_of_one_equals_a_fold_in_one_batch() -> None:
    """Incremental application (batches of 1) and a rebuild in one batch give the same views."""
    log = MemoryEventLog(Settings())
    await _write_workload(log, runs=3, tasks=6)
    runs, tasks = _pathspecs(3, 6)
    async for one_by_one in _fold(log, batch_size=1):
        small = _views(one_by_one.store, runs, tasks)
    async for at_once in _fold(log, batch_size=100_000):
        large = _views(at_once.store, runs, tasks)
    assert small == large and len(small[1]) == len(tasks)


async def test_malformed_commits_are_dead_lettered_and_the_fold_goes_on() -> None:
    """Bytes that are not a commit, or a commit on another entity's subject, are set aside."""
    log = MemoryEventLog(Settings())
    factory = EventFactory("tester", FLOW)
    await log.append(factory.run_created("1"))
    junk = log.put_raw("rs.ev.Train.1.r", b"not json")
    misplaced = log.put_raw("rs.ev.Train.9.r", log.encode(Commit([factory.run_created("1")])).data)
    await log.append(factory.run_created("2"))
    async for projector in _fold(log):
        assert [letter[0] for letter in log.deadletters] == [junk, misplaced]
        assert projector.deadlettered == 2
        assert projector.store.get_run(f"{FLOW}/2") is not None
        assert [d.sequence for d in projector.store.list_deadletters()] == [junk, misplaced]


async def test_a_store_folded_from_another_log_is_rebuilt() -> None:
    """A store whose checkpoint belongs to another log is folded again from sequence 1."""
    first, second = MemoryEventLog(Settings()), MemoryEventLog(Settings())
    factory = EventFactory("tester", FLOW)
    for n in range(1, 4):
        await first.append(factory.run_created(str(n)))
    await second.append(factory.run_created("9"))
    store = SQLiteReadStore(":memory:")
    for log in (first, second):
        projector = Projector(log, store)
        async with anyio.create_task_group() as tg:
            tg.start_soon(projector.run)
            await projector.wait_started()
            await projector.wait_for(await log.stream_last_sequence(), timeout=10)
            tg.cancel_scope.cancel()
    assert store.get_run(f"{FLOW}/9") is not None
    assert store.get_run(f"{FLOW}/1") is None
    assert store.checkpoint() == 1
    store.close()


@settings(max_examples=15, deadline=None)
@given(split=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8))
def test_live_appends_in_any_chunking_fold_to_the_same_views(split: list[int]) -> None:
    """Appending while the projector follows, in chunks of any size, folds what a catch-up folds."""

    async def scenario() -> None:
        events = list(EventFactory("tester", FLOW).workload_run(2, "2", 5))
        runs, tasks = (
            [f"{FLOW}/2"],
            [f"{FLOW}/2/start/1", *(f"{FLOW}/2/train/{t}" for t in range(2, 7))],
        )
        live_log = MemoryEventLog(Settings())
        store = SQLiteReadStore(":memory:")
        projector = Projector(live_log, store)
        async with anyio.create_task_group() as tg:
            tg.start_soon(projector.run)
            await projector.wait_started()
            position, chunks = 0, iter(split * len(events))
            while position < len(events):
                size = next(chunks)
                for event in events[position : position + size]:
                    await live_log.append(event)
                position += size
                await anyio.lowlevel.checkpoint()
            await projector.wait_for(len(events), timeout=10)
            tg.cancel_scope.cancel()
        caught_up_log = MemoryEventLog(Settings())
        for event in events:
            await caught_up_log.append(event)
        async for caught_up in _fold(caught_up_log):
            assert _views(store, runs, tasks) == _views(caught_up.store, runs, tasks)
        store.close()

    anyio.run(scenario)


async def test_a_batch_wider_than_the_view_cache_loses_nothing() -> None:
    """A batch touching more views than the projector caches folds every event all the same."""
    log = MemoryEventLog(Settings())
    await _write_workload(log, runs=4, tasks=30)
    runs, tasks = _pathspecs(4, 30)
    async for small_cache in _fold(log, cache_size=5, batch_size=10_000):
        small = _views(small_cache.store, runs, tasks)
    async for fresh in _fold(log):
        expected = _views(fresh.store, runs, tasks)
    assert small == expected and len(small[1]) == len(tasks)


async def test_history_pages_through_an_objects_events() -> None:
    """The history endpoint returns an object's events oldest first, a page of commits at a time."""
    factory = EventFactory("tester", FLOW)
    async with in_memory() as client:
        for run_id in ("1", "2"):
            for commit in factory.run_commits(run_id, 3):
                await client.log.append_commit(Commit(commit))
        await client.request(
            client.query(StatusRequest, after=await client.log.stream_last_sequence())
        )
        seen: list[tuple[int, int]] = []
        start: int | None = 1
        pages = 0
        while start is not None:
            records, start = await client.history(f"{FLOW}/2", start=start, limit=3)
            seen.extend((r.sequence, r.index) for r in records)
            assert all(r.event.pathspec.startswith(f"{FLOW}/2") for r in records)
            pages += 1
        expected = [(r.sequence, r.index) async for r in client.events(f"{FLOW}/2", follow=False)]
        assert seen == expected and len(seen) == 2 + 3 * 4 + 1
        assert pages == 4  # 9 commits, 3 a page, then an empty last page
