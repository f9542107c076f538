"""Watches over an in-memory runstate: the hand-over from snapshot to live, events, run.wait
and what each watch covers, with no server."""

from __future__ import annotations

import anyio
import pytest
from _workload import caught_up

from runstate.client import Client, EventRecord, RunState
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


# -- events, run.wait and what a watch covers ----------------------------------------


async def test_events_since_goes_from_history_into_live() -> None:
    """events(since=) replays history from that sequence, then delivers new events live."""
    async with in_memory() as client:
        run = await client.create_run("EventsFlow")
        await run.start()
        task = await run.create_task("work", "a", start=True)
        middle = (await task.complete()).sequence
        await run.add_tag("history")
        history = await _positions(client, run.pathspec)
        assert len(history) == 6  # created, running, task created+running, completed, tag
        records: list[EventRecord] = []
        with anyio.fail_after(10):
            async with client.events(run.pathspec, since=middle) as events:
                async for record in events:
                    records.append(record)
                    if record.sequence == history[-1][0]:
                        await run.complete()  # written while we listen
                    if record.event.type == "run.state_changed" and record.sequence > middle:
                        break
        got = [(r.sequence, r.index) for r in records]
        assert got[:2] == [p for p in history if p[0] >= middle]
        assert len(got) == 3 and got[2][0] > history[-1][0]
        assert [r.event.type for r in records] == [
            "task.state_changed",
            "run.tags_changed",
            "run.state_changed",
        ]
        assert records[0].subject.endswith(".t.work.a") and records[1].subject.endswith(".r")
        assert records[2].event.payload.state is RunState.COMPLETED  # type: ignore[union-attr]
        final = await _positions(client, run.pathspec)
        assert final == history + got[2:]
        items, _ = await client.history(run.pathspec)
        assert [(r.sequence, r.index) for r in items] == final


async def test_events_without_follow_stop_at_the_end() -> None:
    """events(follow=False) yields the stored events from since and then ends."""
    async with in_memory() as client:
        run = await client.create_run("EventsFlow")
        await run.start()
        await run.create_task("work", "a", start=True)
        with anyio.fail_after(5):
            everything = await _positions(client, run.pathspec)
            async with client.events(run.pathspec, since=everything[1][0], follow=False) as ev:
                tail = [(r.sequence, r.index) async for r in ev]
            task_only = await _positions(client, f"{run.pathspec}/work/a")
        assert everything[1:] == tail and len(everything) == 4
        assert task_only == everything[2:]


async def test_run_wait_returns_when_finished() -> None:
    """run.wait() returns the finished run once it is terminal, and at once if it already is."""
    async with in_memory() as client, anyio.create_task_group() as tg:
        handle = await client.create_run("WaitFlow")
        await handle.start()
        run = await client.run(handle.pathspec, after=handle.receipt)

        async def finish_later() -> None:
            await anyio.sleep(0.3)
            await handle.fail("out of memory")

        tg.start_soon(finish_later)
        with anyio.fail_after(5):
            done = await run.wait(timeout=4)
            assert done.state is RunState.FAILED and done.finished
            assert done.message == "out of memory"
            again = await done.wait(timeout=1)
            assert again.state is RunState.FAILED


async def test_run_wait_times_out_while_running() -> None:
    """run.wait(timeout=) raises Timeout naming the run if it does not finish in time."""
    async with in_memory() as client:
        handle = await client.create_run("WaitFlow")
        await handle.start()
        run = await client.run(handle.pathspec, after=handle.receipt)
        with anyio.fail_after(5), pytest.raises(Timeout, match=handle.pathspec):
            await run.wait(timeout=0.3)
        assert (await run.refresh()).state is RunState.RUNNING


async def test_flow_watch_follows_new_runs_of_its_namespace() -> None:
    """A flow watch shows runs created while watching, but not those of other namespaces."""
    async with in_memory() as client:
        mine = await client.create_run("ScopeFlow")
        await caught_up(client)
        with anyio.fail_after(10):
            async with client.watch("ScopeFlow") as changes:
                snapshot = await anext(changes)
                assert list(snapshot.views) == [("run", mine.pathspec)]
                await client.create_run("ScopeFlow", user="bob")  # user:bob, not user:<me>
                new = await client.create_run("ScopeFlow")
                created = await anext(changes)
                assert created.changed == (("run", new.pathspec),)
                assert created.run is not None and created.run.pathspec == new.pathspec
                await mine.start()
                started = await anext(changes)
                assert started.changed == (("run", mine.pathspec),)
                assert started.run is not None and started.run.state is RunState.RUNNING
                assert len(started.runs) == 2


async def test_task_and_step_watches_follow_their_tasks() -> None:
    """A task watch shows its task's data, state and children; a step watch new tasks."""
    async with in_memory() as client:
        run = await client.create_run("ScopeFlow")
        await run.start()
        task = await run.create_task("work", "a", start=True)
        await caught_up(client)
        pathspec = task.pathspec
        with anyio.fail_after(10):
            async with (
                client.watch(pathspec) as on_task,
                client.watch(f"{run.pathspec}/work") as on_step,
            ):
                first = await anext(on_task)
                assert first.task is None and ("task", pathspec) in first.views
                assert [t.pathspec for t in (await anext(on_step)).tasks] == [pathspec]
                await task.save(loss=0.5)
                saved = await anext(on_task)
                assert saved.changed == (("task", pathspec),) and saved.task is not None
                assert [a.name for a in saved.task.artifacts] == ["loss"]
                await task.complete()
                done = await anext(on_task)
                assert set(done.changed) == {("run", run.pathspec), ("task", pathspec)}
                assert done.task is not None and done.task.state == "completed"
                child = await run.create_task("work", "b", parents=[task])
                linked = await anext(on_task)
                assert linked.views[("task", pathspec)].child_tasks == (child.pathspec,)
                assert ("task", child.pathspec) not in linked.views
                for _ in range(3):  # the step watch: save, complete, then the new task
                    step_change = await anext(on_step)
                assert ("task", child.pathspec) in step_change.changed
                assert sorted(t.pathspec for t in step_change.tasks) == [pathspec, child.pathspec]


async def test_an_error_inside_the_block_comes_out_as_itself() -> None:
    """An exception raised inside ``in_memory()`` is not wrapped in an ExceptionGroup."""
    with pytest.raises(KeyError):
        async with in_memory() as client:
            await client.create_run("Raises")
            raise KeyError("mine")
