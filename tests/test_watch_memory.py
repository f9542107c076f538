"""Watches over an in-memory runstate: the hand-over from snapshot to live, no server."""

from __future__ import annotations

import anyio
import pytest

from runstate.client import Client, RunState
from runstate.client.testing import in_memory
from runstate.engine.errors import Timeout
from runstate.projections import RunView

pytestmark = pytest.mark.anyio

Position = tuple[int, int]


async def _positions(client: Client, pathspec: str) -> list[Position]:
    async with client.events(pathspec, follow=False) as records:
        return [(record.sequence, record.index) async for record in records]


async def test_a_watch_sees_each_change_once_in_order_while_writers_append() -> None:
    """With 6 concurrent writers, the watcher's changes are exactly the run's events after
    its snapshot, once each and in log order, and its last view equals the replica's."""
    async with in_memory() as client:
        run = await client.create_run("Watched", run_id="1")
        await run.start()
        seen: list[Position] = []
        ready, done = anyio.Event(), anyio.Event()
        snapshot_at: list[Position] = []
        final: list[RunView] = []

        async def watch() -> None:
            async with client.watch(run.pathspec) as changes:
                async for change in changes:
                    if change.event is None:
                        snapshot_at.append(change.position)
                        ready.set()
                        continue
                    seen.append(change.position)
                    if change.run is not None and change.run.finished:
                        final.append(change.run)
                        break
            done.set()

        async def writer(number: int) -> None:
            for i in range(5):
                task = await run.create_task("work", f"w{number}-{i}", start=True)
                await task.complete()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await ready.wait()
                async with anyio.create_task_group() as writers:
                    for number in range(6):
                        writers.start_soon(writer, number)
                await run.complete()
                await done.wait()
        expected = [p for p in await _positions(client, run.pathspec) if p > snapshot_at[0]]
        assert seen == expected and len(seen) == 6 * 5 * 3 + 1
        stored = await client.run(run.pathspec, after=final[0].position[0])
        assert stored.view == final[0] and stored.state is RunState.COMPLETED


async def test_a_snapshot_is_as_of_exactly_the_position_its_views_hold() -> None:
    """The snapshot's sequence is the newest position in its views, never lower; resuming
    ``events`` after it repeats nothing the snapshot holds."""
    async with in_memory() as client:
        run = await client.create_run("Snap")
        await run.start()
        for i in range(4):
            await (await run.create_task("work", str(i), start=True)).complete()
        await client.run(run.pathspec, after=run.receipt)
        async with client.watch(f"{run.pathspec}/work") as changes:
            snapshot = await anext(changes)
        newest = max(view.position for view in snapshot.views.values())
        assert snapshot.position == newest
        async with client.events(run.pathspec, since=snapshot.sequence + 1, follow=False) as rest:
            assert [record async for record in rest] == []


async def test_a_run_and_a_step_can_be_watched_before_they_exist() -> None:
    """A watch of a run not yet created, and of its step before its first task, see them come."""
    async with in_memory() as client:
        with anyio.fail_after(10):
            async with (
                client.watch("Later/1") as on_run,
                client.watch("Later/1/train") as on_step,
            ):
                assert (await anext(on_run)).views == {}
                assert (await anext(on_step)).views == {}
                run = await client.create_run("Later", run_id="1")
                created = await anext(on_run)
                assert created.run is not None and created.run.pathspec == run.pathspec
                (shard,) = await run.foreach("train", 1)
                fanned = await anext(on_step)
                while ("task", shard.pathspec) not in fanned.views:
                    fanned = await anext(on_step)
                assert fanned.task is not None and fanned.task.pathspec == shard.pathspec


async def test_watches_of_one_run_share_one_follow_of_the_log() -> None:
    """Three watches of a run hold one feed (one follow of the log); it goes with the last."""
    async with in_memory() as client:
        run = await client.create_run("Shared")
        async with client.watch(run.pathspec) as a, client.watch(run.pathspec) as b:
            await anext(a)
            await anext(b)
            async with client.watch(run.pathspec) as c:
                await anext(c)
                assert len(client.__dict__["_feeds"]) == 1
                # the replica's projector follows the log, and one feed for the three watches
                assert len(client.log._follows) == 2  # type: ignore[attr-defined]
                await run.start()
                for changes in (a, b, c):
                    change = await anext(changes)
                    assert change.run is not None and change.run.state is RunState.RUNNING
        assert client.__dict__["_feeds"] == {}
        assert len(client.log._follows) == 1  # type: ignore[attr-defined]


async def test_events_go_from_history_into_live_and_stop_at_the_end_without_follow() -> None:
    """``events(since=)`` replays stored events then live ones; without follow it ends."""
    async with in_memory() as client:
        run = await client.create_run("Events")
        await run.start()
        async with client.events(run.pathspec, since=1) as records:
            replayed = [await anext(records), await anext(records)]
            assert [r.event.type for r in replayed] == ["run.created", "run.state_changed"]
            await run.complete()
            live = await anext(records)
            assert live.sequence > replayed[-1].sequence
        async with client.events(run.pathspec, follow=False) as stored:
            assert len([record async for record in stored]) == 3


async def test_run_wait_returns_once_the_run_is_finished() -> None:
    """``Run.wait`` returns the finished run; with a short timeout on a running one, Timeout."""
    async with in_memory() as client:
        handle = await client.create_run("Waits")
        await handle.start()
        run = await client.run(handle.pathspec, after=handle.receipt)
        with pytest.raises(Timeout):
            await run.wait(timeout=0.2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.complete)
            finished = await run.wait(timeout=10)
        assert finished.state is RunState.COMPLETED
