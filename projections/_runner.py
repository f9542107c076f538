"""Run a projector replica: the projector, its query service and the heartbeat reaper."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import structlog
from nats.aio.client import Client as NATS

from runstate.engine._log import EventLog
from runstate.engine._settings import Settings
from runstate.engine._worker import Writer
from runstate.projections._projector import Projector
from runstate.projections._reaper import Reaper
from runstate.projections._service import QueryService
from runstate.projections._store import ReadStore

__all__ = ["Replica", "serve_replica", "tune_gc_for_projection"]

log = structlog.get_logger("runstate.replica")


def tune_gc_for_projection() -> None:
    """Set up the cyclic garbage collector for a process whose job is projecting.

    Everything alive at start (modules, pydantic schemas) is frozen out of
    future collections. Young collections run every 5,000 allocations (a
    pause of a few ms) and older ones only after 1,000 of them: an older
    collection walks every cached view (70-100 ms with 20,000 of them), and
    with CPython's defaults (or any small second threshold) those pauses
    came every few seconds and were the tail of ``after=`` latency. Garbage
    in cycles that outlives a young collection waits longer to be freed;
    nothing else changes. Only processes dedicated to a replica call this
    (``runstate server``, ``runstate projector``, ``python -m
    runstate.projections``): it is process-wide, so a library never does.
    """
    gc.collect()
    gc.freeze()  # what is alive now (modules, schemas) is never scanned again
    gc.set_threshold(5_000, 1_000, 10)


@dataclass
class Replica:
    """The parts of a running replica, for callers that want to look inside."""

    projector: Projector
    service: QueryService
    reaper: Reaper | None
    store: ReadStore


async def serve_replica(
    nc: NATS,
    settings: Settings,
    store_path: Path | str,
    *,
    name: str = "projector",
    rebuild: bool = False,
    reaper: bool = True,
    task_status: anyio.abc.TaskStatus[Replica] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run one replica until cancelled; ``task_status.started`` gets the ``Replica``.

    ``rebuild`` drops the store and folds the log again from sequence 1.
    """
    if isinstance(store_path, Path):
        store_path.parent.mkdir(parents=True, exist_ok=True)
    store = ReadStore(store_path)
    try:
        event_log = EventLog(nc, settings)
        projector = Projector(nc, settings, store, name=name)
        if rebuild:
            await projector.rebuild()
        service = QueryService(nc, settings, projector, event_log)
        the_reaper = (
            Reaper(nc, Writer(event_log), timeout=settings.heartbeat_timeout) if reaper else None
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(projector.run)
            await projector.wait_started()
            await tg.start(service.run)
            if the_reaper is not None:
                tg.start_soon(the_reaper.run)
            log.info("replica.started", name=name, store=str(store_path), applied=projector.applied)
            task_status.started(Replica(projector, service, the_reaper, store))
    finally:
        store.close()
