"""Run a projector replica: the projector, its query service and the heartbeat reaper."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import structlog
from nats.aio.client import Client as NATS

from runstate.engine._log import EventLog
from runstate.engine._settings import Settings
from runstate.engine._worker import Writer
from runstate.projections._feeder import feeder_command
from runstate.projections._projector import Projector
from runstate.projections._reaper import Reaper
from runstate.projections._service import QueryService
from runstate.projections._store import SQLiteReadStore
from runstate.projections._typing import ReadStore

__all__ = ["Replica", "keep_heap_frozen", "serve_replica", "tune_gc_for_projection"]

log = structlog.get_logger("runstate.replica")


#: how often what survived is moved out of the collector's generations (seconds)
FREEZE_INTERVAL = 0.05
#: how often everything is collected all the same (seconds)
FULL_COLLECTION_INTERVAL = 600.0


def tune_gc_for_projection() -> None:
    """Set up the cyclic garbage collector for a process whose job is projecting.

    A replica keeps many long-lived objects (the cached views), and every
    collection of CPython's older generations walks all of them: 60-300 ms
    pauses every few seconds with the defaults, and still 70-100 ms every
    half minute or so with rare older collections, which were the tail of
    ``after=`` latency. So what is alive now (modules, pydantic schemas) is
    frozen out of collections for good, young collections run every 5,000
    allocations, and ``keep_heap_frozen`` (run beside the replica) moves
    survivors out of the generations as they survive.

    Only processes dedicated to a replica call this (``serve_replica(...,
    dedicated=True)`` from ``runstate server``, ``runstate projector`` and
    ``python -m runstate.projections``): it is process-wide, so a library
    never does.
    """
    gc.collect()
    gc.freeze()  # what is alive now (modules, schemas) is never scanned again
    gc.set_threshold(5_000, 1_000, 10)


async def keep_heap_frozen(
    *, interval: float = FREEZE_INTERVAL, full_every: float = FULL_COLLECTION_INTERVAL
) -> None:
    """Freeze what has survived every ``interval`` s; collect everything every ``full_every`` s.

    ``gc.freeze()`` costs the same for any heap (it splices lists), and a
    frozen object is still freed as soon as nothing refers to it: only the
    cycle collector stops walking it. Collections then walk what was
    allocated in the last few ms, never the views the replica holds. The
    price: garbage in reference cycles that lived through a freeze waits
    for the next full collection (a pause of 100-300 ms) to be freed.
    Runs until cancelled.
    """
    last_full = time.monotonic()
    while True:
        await anyio.sleep(interval)
        if time.monotonic() - last_full >= full_every:
            gc.unfreeze()
            gc.collect()
            last_full = time.monotonic()
        gc.freeze()


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
    dedicated: bool = False,
    feed_from: int | None = None,
    task_status: anyio.abc.TaskStatus[Replica] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run one replica until cancelled; ``task_status.started`` gets the ``Replica``.

    ``rebuild`` drops the store and folds the log again from sequence 1.
    ``dedicated``: this process exists for this replica, so the replica may
    set the process-wide garbage-collector policy (``tune_gc_for_projection``
    and ``keep_heap_frozen``); never in a user's process. A dedicated
    replica catches up through a feeder process from ``feed_from`` events
    behind (50,000 unless given).
    """
    if dedicated:
        tune_gc_for_projection()
    if isinstance(store_path, Path):
        store_path.parent.mkdir(parents=True, exist_ok=True)
    store: ReadStore = SQLiteReadStore(store_path)
    try:
        event_log = EventLog(nc, settings)
        # a process of its own may start processes of its own: a feeder for long backlogs
        feeder = feeder_command() if dedicated else None
        options = {} if feed_from is None else {"feed_from": feed_from}
        projector = Projector(nc, settings, store, name=name, feeder=feeder, **options)
        if rebuild:
            await projector.rebuild()
        service = QueryService(nc, settings, projector, event_log)
        the_reaper = (
            Reaper(nc, Writer(event_log), timeout=settings.heartbeat_timeout) if reaper else None
        )
        async with anyio.create_task_group() as tg:
            if dedicated:
                tg.start_soon(keep_heap_frozen)
            tg.start_soon(projector.run)
            await projector.wait_started()
            await tg.start(service.run)
            if the_reaper is not None:
                tg.start_soon(the_reaper.run)
            log.info("replica.started", name=name, store=str(store_path), applied=projector.applied)
            task_status.started(Replica(projector, service, the_reaper, store))
    finally:
        store.close()
