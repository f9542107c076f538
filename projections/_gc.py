"""The garbage-collector policy of a process dedicated to projecting (a replica, a feeder)."""

from __future__ import annotations

import gc
import time

import anyio

__all__ = [
    "FREEZE_INTERVAL",
    "FULL_COLLECTION_INTERVAL",
    "keep_heap_frozen",
    "tune_gc_for_projection",
]

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

    Only processes dedicated to projecting call this (``Replica(...,
    dedicated=True)`` in ``runstate server``, ``runstate projector`` and
    ``python -m runstate.projections``; a feeder): it is process-wide, so a
    library never does.
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
