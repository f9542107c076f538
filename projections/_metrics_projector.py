"""The metrics projector: follow the points stream into a ``MetricsStore``, each batch once.

It is a companion of the events projector in every replica, on a stream,
a store file and a checkpoint of its own: points arrive at tens of
thousands a second, and folding them must not slow the events' catch-up or
hold the events store's transactions. As the events projector, it commits
each chunk of points with its checkpoint in one transaction and resumes
from that checkpoint, so acks play no part in being exactly once.

The points stream may age batches out (``settings.metrics_max_age``), so
sequences may have gaps; the follow starts at the first batch still there.
A message that is not a points batch is logged and skipped.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

from runstate.engine._commits import Delivery
from runstate.engine._logging import get_logger
from runstate.engine._points import PointBatch, decode_points
from runstate.engine._typing import EventLog
from runstate.engine.errors import InvalidEvent, Timeout, Unavailable
from runstate.projections._metrics_store import MetricsStore

__all__ = ["MetricsProjector"]

log = get_logger("runstate.metrics")

#: points committed at most per transaction, so that queries are answered between them
_CHUNK_POINTS = 50_000


class MetricsProjector:
    """Consumes the points stream into a ``MetricsStore``.

    ``applied`` is the last points sequence committed; ``wait_for(seq)``
    blocks until it reaches ``seq`` (for ``after=`` metric reads).
    """

    def __init__(self, log: EventLog, store: MetricsStore) -> None:
        self._log = log
        self.store = store
        self.applied = store.checkpoint()
        #: points stored since the start
        self.points_applied = 0
        #: messages skipped because they were not points batches
        self.skipped = 0
        self._advanced = anyio.Event()
        self._started = anyio.Event()

    async def wait_started(self) -> None:
        await self._started.wait()

    async def wait_for(self, sequence: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - the bound is the API
        """Return once points sequence ``sequence`` is applied; ``Timeout`` after ``timeout``."""
        if self.applied >= sequence:
            return
        with anyio.move_on_after(timeout):
            while self.applied < sequence:
                await self._advanced.wait()
            return
        raise Timeout(
            f"this replica has applied points up to sequence {self.applied}, not {sequence}, "
            f"after waiting {timeout:g}s; the batch may not exist yet, or the replica is behind"
        )

    async def rebuild(self) -> None:
        """Forget every point and fold the points stream again from its start."""
        self.store.clear()
        self.applied = 0

    async def run(self) -> None:
        """Follow and apply forever (until cancelled), riding out faults of the log."""
        while True:
            try:
                async with self._log.points.follow(start=self.applied + 1) as batches:
                    self._started.set()
                    async for deliveries in batches:
                        await self.apply(deliveries)
            except Unavailable as exc:
                log.warning("metrics.follow_failed", error=exc.message, applied=self.applied)
                await anyio.sleep(1.0)

    async def apply(self, deliveries: list[Delivery]) -> None:
        """Store deliveries (in sequence order) with the checkpoint, in chunks."""
        chunk: list[PointBatch] = []
        size = 0
        last = self.applied
        for sequence, subject, data in deliveries:
            if sequence <= self.applied:
                continue  # delivered again after a consumer reset
            try:
                batch = decode_points(data)
            except InvalidEvent as exc:
                self.skipped += 1
                log.warning("metrics.skipped", sequence=sequence, subject=subject, reason=str(exc))
            else:
                chunk.append(batch)
                size += sum(len(row) for row in batch.rows)
            last = sequence
            if size >= _CHUNK_POINTS:
                self._commit(chunk, last)
                chunk, size = [], 0
                await anyio.lowlevel.checkpoint()
        if last > self.applied:
            self._commit(chunk, last)

    def _commit(self, chunk: list[PointBatch], last: int) -> None:
        self.points_applied += self.store.apply(chunk, last)
        self.applied = last
        self._advanced.set()
        self._advanced = anyio.Event()
