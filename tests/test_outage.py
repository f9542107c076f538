"""During a NATS outage every call rides it out or raises Unavailable/Timeout, never nats-py's own.

A real nats-server is stopped while the engine's operations run: run
creation with and without an idempotency key, appends, reads, counters,
keys. Restarted within the retry budget, the operations succeed; left down,
they raise ``Unavailable`` (or ``Timeout``) once the budget is spent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from runstate.client import Timeout, Unavailable, connect
from runstate.client._client import Client
from runstate.engine._connection import provision_server
from runstate.engine._server import NatsServer
from runstate.engine._settings import Settings

pytestmark = pytest.mark.anyio

#: seconds of retries: long enough to ride out a short outage (the server restarted
#: _RESTART seconds after it stopped), short enough for a test
_BUDGET = 4.0
_RESTART = 0.5
#: seconds of retries where the server stays down: the error after they are spent is
#: the point, not how long they last
_SHORT_BUDGET = 2.0
#: seconds one request waits for its reply: several tries fit in a budget, so a request
#: lost with the connection is asked again
_REQUEST_TIMEOUT = 1.0


def _outage_client(plain: Client, budget: float) -> Client:
    """A client on ``plain``'s connection with a ``budget`` of retries and short requests."""
    settings = plain.settings.replace(retry_budget=budget, request_timeout=_REQUEST_TIMEOUT)
    return Client.over_nats(plain.nc, settings)  # type: ignore[arg-type]


Operation = Callable[[Client, int], Awaitable[object]]


async def _create_keyed(client: Client, i: int) -> object:
    return await client.create_run("Outage", idempotency_key=f"key-{i}")


async def _create(client: Client, i: int) -> object:
    return await client.create_run("Outage")


async def _append(client: Client, i: int) -> object:
    run = await client.run_handle("Outage/1")
    return await run.add_tags(f"tag-{i}")


async def _read(client: Client, i: int) -> object:
    return [c async for c in client.log.read(client.subjects.all_events)]


async def _read_entity(client: Client, i: int) -> object:
    return await client.log.read_entity(client.subjects.run("Outage", "1"))


async def _last_sequence(client: Client, i: int) -> object:
    return await client.log.stream_last_sequence()


async def _claim_key(client: Client, i: int) -> object:
    return await client.log.claim_key(f"claim-{i}", b"x")


async def _task(client: Client, i: int) -> object:
    run = await client.run_handle("Outage/1")
    (task,) = await run.foreach(f"s{i}", 1)
    return await task.start()


_OPERATIONS: dict[str, Operation] = {
    "create_run(idempotency_key=)": _create_keyed,
    "create_run()": _create,
    "add_tags": _append,
    "read": _read,
    "read_entity": _read_entity,
    "stream_last_sequence": _last_sequence,
    "claim_key": _claim_key,
    "foreach and start": _task,
}


async def _prepared(url: str) -> None:
    await provision_server(Settings(nats_url=url))  # as an admin would
    async with connect(url, projector=False) as client:
        await client.create_run("Outage")


@pytest.mark.parametrize("name", list(_OPERATIONS))
async def test_an_operation_rides_out_a_short_outage(tmp_path: Path, name: str) -> None:
    """Stopped and restarted within the retry budget, the server sees the operation succeed."""
    operation = _OPERATIONS[name]
    with NatsServer(tmp_path / "nats") as server:
        await _prepared(server.url)
        async with connect(server.url, projector=False) as plain:
            client = _outage_client(plain, _BUDGET)
            await anyio.to_thread.run_sync(server.stop)
            async with anyio.create_task_group() as tg:

                async def restart_soon() -> None:
                    await anyio.sleep(_RESTART)
                    await anyio.to_thread.run_sync(server.start)

                tg.start_soon(restart_soon)
                with anyio.fail_after(60):
                    await operation(client, 1)


@pytest.mark.parametrize("name", list(_OPERATIONS))
async def test_an_operation_during_a_long_outage_raises_unavailable(
    tmp_path: Path, name: str
) -> None:
    """With the server down past the retry budget, the operation raises Unavailable or Timeout."""
    operation = _OPERATIONS[name]
    with NatsServer(tmp_path / "nats") as server:
        await _prepared(server.url)
        async with connect(server.url, projector=False) as plain:
            client = _outage_client(plain, _SHORT_BUDGET)
            await anyio.to_thread.run_sync(server.stop)
            with anyio.fail_after(60), pytest.raises((Unavailable, Timeout)):
                await operation(client, 2)


async def test_writes_and_reads_cut_off_mid_way_raise_only_unavailable_or_timeout(
    tmp_path: Path,
) -> None:
    """Writers and readers running when the server is killed end with Unavailable/Timeout only."""
    with NatsServer(tmp_path / "nats") as server:
        await _prepared(server.url)
        async with connect(server.url, projector=False) as plain:
            client = _outage_client(plain, _SHORT_BUDGET)
            outcomes: list[BaseException | None] = []
            killed = anyio.Event()

            async def keep_going(operation: Operation) -> None:
                i = 0
                while True:
                    i += 1
                    try:
                        await operation(client, i)
                    except Exception as exc:
                        outcomes.append(exc)
                        return
                    if killed.is_set() and i > 1_000:
                        outcomes.append(None)
                        return

            with anyio.fail_after(90):
                async with anyio.create_task_group() as tg:
                    for operation in (_create_keyed, _create, _append, _read, _task):
                        tg.start_soon(keep_going, operation)
                    await anyio.sleep(1.0)
                    await anyio.to_thread.run_sync(server.kill)
                    killed.set()
    assert len(outcomes) == 5
    raw = [exc for exc in outcomes if not isinstance(exc, Unavailable | Timeout)]
    assert raw == [], raw
