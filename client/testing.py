"""Test helpers for code that uses runstate's client: a whole runstate in this process.

``in_memory()`` gives a ``Client`` whose event log is a ``MemoryEventLog``,
whose replica folds into in-memory SQLite stores (events and metric points), and whose queries are
answered by a query service in this process: every read, write and watch
works as against a server, with no server. Nothing outlives the block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from runstate.client._client import Client
from runstate.client._queries import LocalQueries
from runstate.engine._memory import MemoryEventLog
from runstate.engine._settings import Settings
from runstate.projections._metrics_projector import MetricsProjector
from runstate.projections._metrics_store import MetricsStore
from runstate.projections._projector import Projector
from runstate.projections._service import QueryService
from runstate.projections._store import SQLiteReadStore

__all__ = ["in_memory"]


@asynccontextmanager
async def in_memory(settings: Settings | None = None) -> AsyncIterator[Client]:
    """A client of a runstate held in memory: a log, a replica and its query service."""
    # a log in this process holds only what this process wrote: its pickles are trusted
    settings = (settings or Settings()).trusting_pickles_if(True)
    log = MemoryEventLog(settings)
    store = SQLiteReadStore(":memory:")
    metrics_store = MetricsStore(":memory:")
    try:
        projector = Projector(log, store)
        metrics = MetricsProjector(log, metrics_store)
        client = Client(log, LocalQueries(QueryService(projector, log, metrics=metrics)))
        # The block's exception is raised outside the task group: inside it, anyio
        # would wrap it in an ExceptionGroup and callers could not catch it by type.
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(projector.run)
            tg.start_soon(metrics.run)
            await projector.wait_started()
            await metrics.wait_started()
            try:
                yield client
            except Exception as exc:
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error
    finally:
        store.close()
        metrics_store.close()
