"""/metrics reports the replica's lag in milliseconds beside its lag in events: the age of
the oldest event it has not applied, 0 once it has applied the whole log."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import anyio
import httpx
import pytest

from runstate.client import Client
from runstate.client._queries import LocalQueries
from runstate.client.web import create_app
from runstate.engine._memory import MemoryEventLog
from runstate.engine._settings import Settings
from runstate.projections._projector import Projector
from runstate.projections._service import QueryService
from runstate.projections._store import SQLiteReadStore

pytestmark = pytest.mark.anyio


def _gauge(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


async def test_lag_in_milliseconds_is_the_age_of_the_oldest_unapplied_event() -> None:
    """A replica that has not started applying: lag in events is the log's length and lag
    in milliseconds the time since the first event was written; once it has caught up,
    both are 0."""
    log = MemoryEventLog(Settings())
    store = SQLiteReadStore(":memory:")
    try:
        projector = Projector(log, store)
        client = Client(log, LocalQueries(QueryService(projector, log)))
        run = await client.create_run("Train")
        receipt = await run.start()
        (commit,) = [commit async for commit in log.read(limit=1)]
        first = commit.events[0].occurred_at
        transport = httpx.ASGITransport(app=create_app(client))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            before = datetime.now(UTC)
            text = (await http.get("/metrics")).text
            after = datetime.now(UTC)
            assert _gauge(text, "runstate_projector_lag_events") == receipt.sequence
            lag_ms = _gauge(text, "runstate_projector_lag_milliseconds")
            assert (before - first).total_seconds() * 1000 <= lag_ms
            assert lag_ms <= (after - first).total_seconds() * 1000
            async with anyio.create_task_group() as tg:
                tg.start_soon(projector.run)
                await projector.wait_for(receipt.sequence, timeout=10)
                text = (await http.get("/metrics")).text
                tg.cancel_scope.cancel()
            assert _gauge(text, "runstate_projector_lag_events") == 0
            assert _gauge(text, "runstate_projector_lag_milliseconds") == 0
    finally:
        store.close()
