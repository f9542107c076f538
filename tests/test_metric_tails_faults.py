"""Live metric tails against a real nats-server: across a server kill and a projector restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from runstate.client import Client, MetricRow, Receipt, connect
from runstate.client._tails import follow_rows
from runstate.engine import JetStreamEventLog, Settings
from runstate.engine._connection import open_nats, provision
from runstate.engine._metrics_writer import MetricsBuffer
from runstate.engine._server import NatsServer
from runstate.engine._worker import Writer

pytestmark = pytest.mark.anyio

#: rows acknowledged before the fault, and after it, before the writer stops
BEFORE = 1000
AFTER = 1000


async def test_a_tail_across_a_server_kill_delivers_every_acknowledged_row_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A tail following while nats-server is killed and restarted has no gap and no repeat."""
    settings = Settings(
        nats_url=nats_server.url, data_dir=tmp_path / "data", retry_budget=8.0, request_timeout=1.0
    )
    nc = await open_nats(settings)
    await provision(nc, settings)
    log = JetStreamEventLog(nc, settings)
    run = await Writer(log).create_run("Train")
    run._metrics = buffer = MetricsBuffer(log, run.pathspec, None, max_rows=25)
    tail_nc = await open_nats(settings.replace(retry_budget=60.0))
    tail_log = JetStreamEventLog(tail_nc, settings.replace(retry_budget=60.0))
    delivered: list[MetricRow] = []
    logged = acknowledged = 0
    stop = anyio.Event()

    async def write() -> None:
        nonlocal logged, acknowledged
        while not stop.is_set():
            await run.log({"n": logged})
            logged += 1
            if buffer.pending == 0:
                acknowledged = logged
        await run.flush()
        acknowledged = logged

    async def tail() -> None:
        async with follow_rows(tail_log, run.pathspec, None) as rows:
            async for row in rows:
                delivered.append(row)

    async def wait_until(done: Callable[[], bool]) -> None:
        with anyio.fail_after(45):
            while not done():  # noqa: ASYNC110 - polls the writer's and the tail's progress
                await anyio.sleep(0.01)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(tail)
            group.start_soon(write)
            await wait_until(lambda: len(delivered) >= BEFORE)
            nats_server.kill()
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(nats_server.restart)
            target = acknowledged + AFTER
            await wait_until(lambda: acknowledged >= target)
            stop.set()
            await wait_until(lambda: acknowledged == logged and not buffer.pending)
            await wait_until(lambda: len(delivered) >= logged)
            await anyio.sleep(0.2)  # room for a row too many to show
            group.cancel_scope.cancel()
    finally:
        await nc.close()
        await tail_nc.close()
    assert [row["n"] for row in delivered] == list(range(logged)), "a row missed or repeated"
    assert len({row.position for row in delivered}) == logged


async def test_a_tail_goes_on_across_a_projector_restart_and_agrees_with_history(
    nats_url: str, tmp_path: Path
) -> None:
    """Tailing while the replica stops and starts again: every row once, as history reads them."""
    delivered: list[MetricRow] = []
    async with connect(nats_url, projector=False, namespace=None) as client:
        run = await client.create_run("Train")
        task = await run.create_task("train", start=True)

        async def log(first: int, count: int) -> None:
            for n in range(first, first + count):
                await task.log({"loss": 1 / (n + 1), "n": n})
                if n % 7 == 0:
                    await task.flush()
            await task.flush()

        async def wait_for(count: int) -> None:
            with anyio.fail_after(20):
                while len(delivered) < count:  # noqa: ASYNC110 - polls the tail
                    await anyio.sleep(0.01)

        async with anyio.create_task_group() as group:

            async def tail() -> None:
                async with follow_rows(client.log, task.pathspec, 0) as rows:
                    async for row in rows:
                        delivered.append(row)

            group.start_soon(tail)
            data_dir = tmp_path / "replica"
            async with connect(nats_url, projector=True, data_dir=data_dir) as replica:
                await log(0, 50)
                await wait_for(50)
                await _history_of(replica, task.pathspec, task.receipt, 50)
            await log(50, 50)  # no projector at all now
            await wait_for(100)
            async with connect(nats_url, projector=True, data_dir=data_dir) as replica:
                await log(100, 50)
                await wait_for(150)
                rows = await _history_of(replica, task.pathspec, task.receipt, 150)
            await anyio.sleep(0.2)  # room for a row too many to show
            group.cancel_scope.cancel()
    assert [row["n"] for row in delivered] == list(range(150))
    assert [row.row for row in delivered] == rows


async def _history_of(
    replica: Client, pathspec: str, receipt: Receipt | None, count: int
) -> list[dict[str, Any]]:
    """The task's history as the replica reads it once it holds ``count`` rows."""
    task = await replica.task(pathspec, after=receipt)
    with anyio.fail_after(20):
        while True:
            rows = [row async for row in task.scan_history()]
            if len(rows) >= count:
                return rows
            await anyio.sleep(0.05)
