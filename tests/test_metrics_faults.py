"""Logging metric points while nats-server is killed and restarted: nothing lost, nothing twice."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from runstate.engine import JetStreamEventLog, Settings
from runstate.engine._connection import open_nats, provision
from runstate.engine._metrics_writer import MetricsBuffer
from runstate.engine._points import decode_points
from runstate.engine._server import NatsServer
from runstate.engine._worker import Writer
from runstate.projections._metrics_projector import MetricsProjector
from runstate.projections._metrics_store import MetricsStore

pytestmark = pytest.mark.anyio

#: rows acknowledged before the kill, and after the restart, before the writer stops
BEFORE_KILL = 2000
AFTER_RESTART = 2000


async def test_points_logged_across_a_server_kill_are_all_stored_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Every acknowledged row is in the points stream once after a kill -9 and a restart."""
    settings = Settings(
        nats_url=nats_server.url, data_dir=tmp_path / "data", retry_budget=8.0, request_timeout=1.0
    )
    nc = await open_nats(settings)
    await provision(nc, settings)
    log = JetStreamEventLog(nc, settings)
    run = await Writer(log).create_run("Train")
    run._metrics = buffer = MetricsBuffer(log, run.pathspec, None, max_rows=25)
    logged = 0
    acknowledged = 0
    stop = anyio.Event()

    async def write() -> None:
        nonlocal logged, acknowledged
        while not stop.is_set():
            await run.log({"loss": 1 / (logged + 1), "step_copy": logged})
            logged += 1
            if buffer.pending == 0:  # a full buffer was just sent and acknowledged
                acknowledged = logged
        await run.flush()
        acknowledged = logged

    async def wait_for(count: int) -> None:
        with anyio.fail_after(30):
            while acknowledged < count:  # noqa: ASYNC110 - polls the writer's progress
                await anyio.sleep(0.01)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(write)
            await wait_for(BEFORE_KILL)
            nats_server.kill()
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(nats_server.restart)
            await wait_for(acknowledged + AFTER_RESTART)
            stop.set()
    finally:
        await nc.close()

    reader_nc = await open_nats(settings)
    try:
        reader = JetStreamEventLog(reader_nc, settings)
        steps = [
            row["_step"]
            async for _, _, data in reader.points.read()
            for row in decode_points(data).rows
        ]
        assert steps == list(range(logged)), "a row was lost or stored twice"
        store = MetricsStore(":memory:")
        projector = MetricsProjector(reader, store)
        async with anyio.create_task_group() as group:
            group.start_soon(projector.run)
            await projector.wait_for(await reader.points.last_sequence(), timeout=20)
            group.cancel_scope.cancel()
        stream = store.stream_id(run.pathspec, None, "default")
        assert stream is not None
        (loss, _) = store.series(stream)
        assert (loss.count, loss.first_step, loss.last_step) == (logged, 0, logged - 1)
        store.close()
    finally:
        await reader_nc.close()
