"""The write and read paths on a 3-node NATS cluster with streams of 3 replicas."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from runstate.client import connect
from runstate.engine import JetStreamEventLog, Settings, Writer, open_nats, provision
from runstate.engine._cluster import NatsCluster
from runstate.engine.errors import Unavailable
from runstate.projections import serve_replica

pytestmark = pytest.mark.anyio


async def test_writes_survive_a_node_killed_under_load(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """Killing a cluster node while writers append loses no acknowledged event; writes go on."""
    settings = Settings(nats_url=nats_cluster.url, replicas=3, retry_budget=30.0)
    nc = await open_nats(settings)
    try:
        await provision(nc, settings)
        writer = Writer(JetStreamEventLog(nc, settings))
        run = await writer.create_run("Cluster")
        await run.start()
        acknowledged: list[int] = []
        failed = 0
        killed = anyio.Event()
        stop = anyio.Event()

        async def write(worker: int) -> None:
            nonlocal failed
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    task = await run.create_task("work", f"{worker}-{i}")
                    assert task.receipt is not None
                    acknowledged.append(task.receipt.sequence)
                    acknowledged.append((await task.start()).sequence)
                except Unavailable:
                    failed += 1

        async def kill_one_then_stop() -> None:
            await anyio.sleep(0.3)
            nats_cluster.kill(2)
            killed.set()
            await anyio.sleep(1.5)
            stop.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_one_then_stop)
            for worker in range(4):
                tg.start_soon(write, worker)

        assert killed.is_set() and failed == 0, (
            "writes should ride out the loss of one node of three"
        )
        log = JetStreamEventLog(nc, settings)
        stored = {
            commit.sequence async for commit in log.read(log.subjects.run_all("Cluster", run.id))
        }
        assert set(acknowledged) <= stored
        assert len(stored) == 2 + len(acknowledged)
        nats_cluster.restart(2)
    finally:
        await nc.close()


async def test_a_replica_on_the_cluster_answers_reads(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """A projector replica on clustered streams folds the log and answers queries."""
    settings = Settings(nats_url=nats_cluster.url, replicas=3)
    nc = await open_nats(settings)
    try:
        await provision(nc, settings)
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: serve_replica(
                    nc, settings, tmp_path / "v.sqlite3", task_status=task_status
                )
            )
            async with connect(
                nats_cluster.url, settings=settings, projector=False, namespace=None
            ) as client:
                handle = await client.create_run("Cluster", tags=["production"])
                async with handle.running():
                    async with handle.task("only") as task:
                        await task.save(answer=42)
                started = time.monotonic()
                run = await client.run(handle.pathspec, after=handle.receipt)
                assert run.state == "completed" and "production" in run.tags
                assert (await (await run["only"]).task()).data.answer == 42
                assert time.monotonic() - started < 10
            tg.cancel_scope.cancel()
    finally:
        await nc.close()


async def test_a_folding_feeder_reads_a_cluster_as_a_projector_alone_does(
    nats_cluster: NatsCluster, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """On streams of 3 replicas, a catch-up through a feeder that folds half of the runs (and
    reads its consumer off its own socket, from whichever node it reached) folds the views a
    projector alone folds."""
    from runstate.projections import Projector, SQLiteReadStore
    from runstate.projections._feeder import feeder_command

    settings = Settings(nats_url=nats_cluster.url, replicas=3)
    nc = await open_nats(settings)
    try:
        await provision(nc, settings)
        writer = Writer(JetStreamEventLog(nc, settings))
        for _ in range(8):
            run = await writer.create_run("Cluster", tags=["fed"])
            await run.start()
            for number in range(15):
                task = await run.create_task("work", str(number))
                await task.start()
                await task.save(loss=number / 10)
                await task.complete()
            await run.complete()
        last = await JetStreamEventLog(nc, settings).stream_last_sequence()

        async def fold(store_path: Path, **options: object) -> Projector:
            store = SQLiteReadStore(store_path)
            try:
                async with anyio.create_task_group() as tg:
                    projector = Projector(JetStreamEventLog(nc, settings), store, **options)  # type: ignore[arg-type]
                    tg.start_soon(projector.run)
                    await projector.wait_for(last, timeout=60)
                    tg.cancel_scope.cancel()
            finally:
                store.close()
            return projector

        fed = await fold(
            tmp_path / "fed.sqlite3", feeder=feeder_command(), feed_from=1, batch_size=40
        )
        alone = await fold(tmp_path / "alone.sqlite3")
    finally:
        await nc.close()
    assert fed.fed == last and 0 < fed.folded_by_feeder < last
    assert fed.events_applied == alone.events_applied
    rows = []
    for name in ("fed", "alone"):
        with sqlite3.connect(tmp_path / f"{name}.sqlite3") as db:
            rows.append(
                (
                    db.execute("SELECT pathspec, json FROM runs ORDER BY pathspec").fetchall(),
                    db.execute("SELECT pathspec, json FROM tasks ORDER BY pathspec").fetchall(),
                )
            )
    assert rows[0] == rows[1]
    assert len(rows[0][1]) == 8 * 15
    assert "drain.wire_failed" not in capfd.readouterr().err  # it read off its own socket
