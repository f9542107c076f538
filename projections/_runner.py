"""Run a replica's parts: the projector, its query service and the heartbeat reaper.

``Replica`` (``_replica``) runs them with everything they stand on (server,
connection, store lock); ``serve_replica`` is the part that folds and answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
from nats.aio.client import Client as NATS

from runstate.engine._jetstream import JetStreamEventLog
from runstate.engine._logging import get_logger
from runstate.engine._private import private_dir
from runstate.engine._settings import Settings
from runstate.engine._worker import Writer
from runstate.projections._feeder import feeder_command
from runstate.projections._gc import keep_heap_frozen, tune_gc_for_projection
from runstate.projections._metrics_projector import MetricsProjector
from runstate.projections._metrics_store import MetricsStore
from runstate.projections._projector import Projector
from runstate.projections._reaper import Reaper
from runstate.projections._service import QueryService
from runstate.projections._store import SQLiteReadStore
from runstate.projections._typing import ReadStore

__all__ = ["ReplicaParts", "metrics_store_path", "serve_replica"]

log = get_logger("runstate.replica")


@dataclass
class ReplicaParts:
    """The parts of a running replica, for callers that want to look inside."""

    projector: Projector
    service: QueryService
    reaper: Reaper | None
    store: ReadStore
    metrics: MetricsProjector | None = None


async def serve_replica(
    nc: NATS,
    settings: Settings,
    store_path: Path | str,
    *,
    name: str = "projector",
    rebuild: bool = False,
    reaper: bool = True,
    dedicated: bool = False,
    feed_from: int | None = None,
    query_connections: Sequence[NATS] = (),
    task_status: anyio.abc.TaskStatus[ReplicaParts] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run one replica until cancelled; ``task_status.started`` gets its parts.

    ``rebuild`` drops the store and folds the log again from sequence 1.
    ``dedicated``: this process exists for this replica, so the replica may
    set the process-wide garbage-collector policy (``tune_gc_for_projection``
    and ``keep_heap_frozen``); never in a user's process. A dedicated
    replica catches up through a feeder process from ``feed_from`` events
    behind (50,000 unless given). ``query_connections``: more connections the query
    service answers on (the projector's user in the clients' account).
    """
    if dedicated:
        tune_gc_for_projection()
    if isinstance(store_path, Path):
        private_dir(store_path.parent, tighten=False)
    store: ReadStore = SQLiteReadStore(store_path)
    metrics_store = MetricsStore(metrics_store_path(store_path))
    try:
        event_log = JetStreamEventLog(nc, settings)
        # a process of its own may start processes of its own: a feeder for long backlogs
        feeder = feeder_command() if dedicated else None
        options = {} if feed_from is None else {"feed_from": feed_from}
        projector = Projector(event_log, store, name=name, feeder=feeder, **options)
        metrics = MetricsProjector(event_log, metrics_store)
        if rebuild:
            await projector.rebuild()
            await metrics.rebuild()
        service = QueryService(
            projector, event_log, nc=nc, metrics=metrics, also_on=query_connections
        )
        the_reaper = (
            Reaper(nc, Writer(event_log), timeout=settings.heartbeat_timeout) if reaper else None
        )
        async with anyio.create_task_group() as tg:
            if dedicated:
                tg.start_soon(keep_heap_frozen)
            tg.start_soon(projector.run)
            await projector.wait_started()
            tg.start_soon(metrics.run)
            await metrics.wait_started()
            await tg.start(service.run)
            if the_reaper is not None:
                tg.start_soon(the_reaper.run)
            log.info("replica.started", name=name, store=str(store_path), applied=projector.applied)
            task_status.started(ReplicaParts(projector, service, the_reaper, store, metrics))
    finally:
        store.close()
        metrics_store.close()


def metrics_store_path(store_path: Path | str) -> Path | str:
    """The metrics store beside a read store: ``views.sqlite3`` -> ``views.metrics.sqlite3``."""
    if str(store_path) == ":memory:":
        return ":memory:"
    path = Path(store_path)
    return path.with_name(f"{path.stem}.metrics{path.suffix}")
