"""Live subscriptions against a real nats-server: watch, events, run.wait, and clean exits.

The central check: a watcher of a run sees each of the run's events exactly
once and in log order, compared (as (sequence, index) positions) with the
events read back from the stream, while 8 writers append concurrently, across
a projector restart and across a NATS server restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from _workload import caught_up, drive_tasks, replica_client
from nats.aio.client import Client as NATS

from runstate.client import Change, Client, RunState, connect
from runstate.engine._server import NatsServer
from runstate.projections import ReplicaParts, RunView, serve_replica

pytestmark = pytest.mark.anyio

Position = tuple[int, int]

WRITERS = 8
TASKS_PER_WRITER = 8


@dataclass
class Watcher:
    """What one watcher of a run saw: its snapshot, every change after it, the final view."""

    pathspec: str
    ready: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    snapshot: Change | None = None
    seen: list[Position] = field(default_factory=list)
    final: RunView | None = None

    async def follow(self, client: Client) -> None:
        """Watch the run until it is finished."""
        async with client.watch(self.pathspec) as changes:
            async for change in changes:
                if change.event is None:
                    self.snapshot = change
                    self.ready.set()
                    continue
                self.seen.append(change.position)
                view = change.views.get(("run", self.pathspec))
                if isinstance(view, RunView) and view.finished:
                    self.final = view
                    break
        self.done.set()

    @property
    def snapshot_position(self) -> Position:
        assert self.snapshot is not None
        view = self.snapshot.views.get(("run", self.pathspec))
        return view.position if view is not None else (0, 0)


async def positions(client: Client, pathspec: str) -> list[Position]:
    """The (sequence, index) of every event of ``pathspec`` in the stream, oldest first."""
    async with client.events(pathspec, follow=False) as records:
        return [(record.sequence, record.index) async for record in records]


async def writers(url: str, tmp_path: Path, pathspec: str, *, pause: float = 0.0) -> None:
    """Eight writers, each on its own connection, drive their own tasks of the run."""

    async def one(number: int) -> None:
        async with connect(url, projector=False, data_dir=tmp_path) as client:
            handle = await client.run_handle(pathspec)
            ids = [f"w{number}-{i}" for i in range(TASKS_PER_WRITER)]
            await drive_tasks(handle, "work", ids, retry_every=3, pause=pause)

    async with anyio.create_task_group() as group:
        for number in range(WRITERS):
            group.start_soon(one, number)


def assert_exactly_once(seen: list[Position], expected: list[Position]) -> None:
    assert len(set(seen)) == len(seen), "a change was delivered twice"
    assert seen == sorted(seen), "changes arrived out of log order"
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    assert seen == expected


async def expect_final_run(client: Client, watcher: Watcher, pathspec: str, total: int) -> None:
    """The watcher's folded view equals the projector's, and every task is accounted for."""
    assert watcher.final is not None and watcher.final.state is RunState.COMPLETED
    stored = await client.run(pathspec, after=watcher.final.position[0])
    assert stored.view.model_dump(mode="json") == watcher.final.model_dump(mode="json")
    assert stored.progress == (total, total)


@asynccontextmanager
async def replica(client: Client, store: Path) -> AsyncIterator[ReplicaParts]:
    """A projector replica on ``store``, stopped when the block exits."""
    async with anyio.create_task_group() as group:
        yield await group.start(serve_replica, client.nc, client.settings, store)
        group.cancel_scope.cancel()


# -- exactly once ------------------------------------------------------------------------


async def test_watcher_sees_every_transition_once_with_8_writers(
    nats_url: str, tmp_path: Path
) -> None:
    """A run's watcher sees each event once, in order, while 8 writers append concurrently."""
    pathspec = "WatchFlow/1"
    watcher = Watcher(pathspec)
    with anyio.fail_after(30):
        async with replica_client(nats_url, tmp_path) as client, anyio.create_task_group() as tg:
            tg.start_soon(watcher.follow, client)
            await watcher.ready.wait()
            run = await client.create_run("WatchFlow", run_id="1")
            await run.start()
            await writers(nats_url, tmp_path, pathspec)
            await run.complete()
            await watcher.done.wait()
            expected = await positions(client, pathspec)
            assert len(expected) > 2 * WRITERS * TASKS_PER_WRITER
            assert_exactly_once(watcher.seen, expected)
            await expect_final_run(client, watcher, pathspec, WRITERS * TASKS_PER_WRITER)


async def test_watchers_survive_a_projector_restart(nats_url: str, tmp_path: Path) -> None:
    """Across a projector restart mid-stream, watchers still see each event exactly once."""
    pathspec = "WatchFlow/7"
    first, second = Watcher(pathspec), Watcher(pathspec)
    store = tmp_path / "views.sqlite3"
    written = anyio.Event()
    with anyio.fail_after(30):
        async with (
            connect(nats_url, projector=False, data_dir=tmp_path) as client,
            anyio.create_task_group() as tg,
        ):

            async def write_all() -> None:
                await writers(nats_url, tmp_path, pathspec, pause=0.1)
                written.set()

            async with replica(client, store) as before:
                tg.start_soon(first.follow, client)
                await first.ready.wait()
                run = await client.create_run("WatchFlow", run_id="7")
                await run.start()
                tg.start_soon(write_all)
                await anyio.sleep(0.3)
                applied_before = before.projector.applied
            stopped_at = await client.log.stream_last_sequence()
            await anyio.sleep(0.2)  # writes go on with no projector at all
            async with replica(client, store) as after:
                assert after.projector.applied >= applied_before  # resumed, not rebuilt
                restarted_at = await client.log.stream_last_sequence()
                assert restarted_at > stopped_at and not written.is_set()
                tg.start_soon(second.follow, client)
                await second.ready.wait()
                await written.wait()
                await run.complete()
                await first.done.wait()
                await second.done.wait()
                expected = await positions(client, pathspec)
                assert_exactly_once(first.seen, expected)
                since = second.snapshot_position
                assert since > (0, 0)
                assert_exactly_once(second.seen, [p for p in expected if p > since])
                assert len(second.seen) > WRITERS  # it joined while the writers were busy
                total = WRITERS * TASKS_PER_WRITER
                await expect_final_run(client, first, pathspec, total)
                await expect_final_run(client, second, pathspec, total)


async def test_watcher_survives_a_nats_restart(nats_server: NatsServer, tmp_path: Path) -> None:
    """A NATS kill and restart mid-stream: writers retry, the watcher sees every event once."""
    pathspec = "WatchFlow/9"
    watcher = Watcher(pathspec)
    written = anyio.Event()
    with anyio.fail_after(30):
        async with (
            replica_client(nats_server.url, tmp_path) as client,
            anyio.create_task_group() as tg,
        ):
            client.read_wait = 20  # the replica's own consumer takes seconds to notice the restart

            async def write_all() -> None:
                await writers(nats_server.url, tmp_path, pathspec, pause=0.1)
                written.set()

            tg.start_soon(watcher.follow, client)
            await watcher.ready.wait()
            run = await client.create_run("WatchFlow", run_id="9")
            await run.start()
            tg.start_soon(write_all)
            await anyio.sleep(0.3)
            killed_at = await client.log.stream_last_sequence()
            await anyio.to_thread.run_sync(nats_server.kill)
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(nats_server.restart)
            assert not written.is_set()
            await written.wait()
            await run.complete()
            await watcher.done.wait()
            expected = await positions(client, pathspec)
            assert expected[-1][0] > killed_at + WRITERS  # the writers went on after the restart
            assert_exactly_once(watcher.seen, expected)
            await expect_final_run(client, watcher, pathspec, WRITERS * TASKS_PER_WRITER)


# -- events ------------------------------------------------------------------------------


# -- leaving the block stops the consumer ------------------------------------------------


async def consumers(client: Client) -> int:
    js = client.nc.jetstream()
    return len(await js.consumers_info(client.subjects.events_stream))


def subscriptions(nc: NATS) -> int:
    return len(nc._subs)


async def test_leaving_a_watch_stops_its_consumer(nats_url: str, tmp_path: Path) -> None:
    """Leaving `async with client.watch()` by break, exception or cancel drops its subscription."""
    async with replica_client(nats_url, tmp_path) as client:
        run = await client.create_run("StopFlow")
        await caught_up(client)
        subs, cons = subscriptions(client.nc), await consumers(client)

        async def inside(change: Change) -> None:
            assert change.event is None
            assert subscriptions(client.nc) == subs + 1
            assert await consumers(client) == cons + 1

        async with client.watch(run.pathspec) as changes:
            async for change in changes:
                await inside(change)
                break
        assert subscriptions(client.nc) == subs and await consumers(client) == cons

        with pytest.raises(LookupError, match="boom"):
            async with client.watch(run.pathspec) as changes:
                async for change in changes:
                    await inside(change)
                    raise LookupError("boom")
        assert subscriptions(client.nc) == subs and await consumers(client) == cons

        with anyio.move_on_after(0.5) as scope:
            async with client.watch(run.pathspec) as changes:
                async for change in changes:
                    await inside(change)
        assert scope.cancelled_caught
        assert subscriptions(client.nc) == subs and await consumers(client) == cons

        await leave_events(client, run.pathspec, lambda: subscriptions(client.nc) == subs + 1)
        assert subscriptions(client.nc) == subs and await consumers(client) == cons


async def leave_events(client: Client, pathspec: str, subscribed: Callable[[], bool]) -> None:
    with anyio.move_on_after(0.5):
        async with client.events(pathspec) as events:
            async for _ in events:
                assert subscribed()


async def test_watches_of_one_run_share_one_consumer_and_each_sees_every_change_once(
    nats_url: str, tmp_path: Path
) -> None:
    """Many watches of a run share one consumer; each, a late one too, sees each change once."""
    async with replica_client(nats_url, tmp_path, namespace=None) as client:
        run = await client.create_run("Shared")
        await run.start()
        stream = client.subjects.events_stream
        seen: dict[int, list[tuple[int, int]]] = {}
        # where each watch's snapshot stands: later events must each come once
        cuts: dict[int, tuple[int, int]] = {}
        ready = anyio.Event()
        joined = 0

        async def watch(number: int, stop_after: int | None = None) -> None:
            nonlocal joined
            async with client.watch(run.pathspec) as changes:
                async for change in changes:
                    if change.event is None:
                        # a snapshot taken before the replica had the run holds nothing
                        cuts[number] = change.run.position if change.run else (0, 0)
                        joined += 1
                        if joined == 5:
                            ready.set()
                        continue
                    seen.setdefault(number, []).append(change.position)
                    if stop_after is not None and len(seen[number]) >= stop_after:
                        return
                    if change.run is not None and change.run.finished:
                        return

        async with anyio.create_task_group() as tg:
            for number in range(4):
                tg.start_soon(watch, number)
            tg.start_soon(watch, 4, 3)  # leaves early: the others must go on
            await ready.wait()
            info = await client.nc.jetstream().stream_info(stream)
            assert info.state.consumer_count == 2  # the replica's projector and one shared feed
            for k in range(6):
                task = await run.create_task("work", start=True)
                await task.complete()
                if k == 2:
                    tg.start_soon(watch, 5)  # joins after some changes were delivered
            await run.complete()

        log = [
            (record.sequence, record.index)
            async for record in client.events(run.pathspec, follow=False)
        ]
        for number in (0, 1, 2, 3, 5):
            expected = [position for position in log if position > cuts[number]]
            assert seen[number] == expected, number
        assert seen[4] == [position for position in log if position > cuts[4]][:3]
        info = await client.nc.jetstream().stream_info(stream)
        assert info.state.consumer_count == 1  # the feed left with its last watch
