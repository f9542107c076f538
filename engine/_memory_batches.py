"""A side stream (metric points, log lines) in this process's memory, for ``MemoryEventLog``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import anyio.lowlevel

from runstate.engine._batches import BatchReceipt, SideStream
from runstate.engine._commits import Delivery
from runstate.engine._names import subject_matches

__all__ = ["MemoryBatchLog"]


class _MemoryBatchFollow:
    """A follow of a ``MemoryBatchLog``."""

    def __init__(self, log: MemoryBatchLog, pattern: str, start: int) -> None:
        self._log = log
        self._pattern = pattern
        self._start = start
        self._pending: list[Delivery] = []
        self._arrived = anyio.Event()
        self.delivered = start - 1

    async def __aenter__(self) -> _MemoryBatchFollow:
        for delivery in self._log.messages[max(0, self._start - 1) :]:
            self.offer(delivery)
        self._log.follows.add(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._log.follows.discard(self)

    def offer(self, delivery: Delivery) -> None:
        if delivery[0] >= self._start and subject_matches(self._pattern, delivery[1]):
            self._pending.append(delivery)
            self._arrived.set()

    def __aiter__(self) -> AsyncIterator[list[Delivery]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[Delivery]]:
        while True:
            if not self._pending:
                self._arrived = anyio.Event()
                await self._arrived.wait()
                continue
            batch, self._pending = self._pending, []
            self.delivered = batch[-1][0]
            yield batch


class MemoryBatchLog:
    """A side stream in memory: commit ids stored once, follows in order."""

    def __init__(self, side: SideStream) -> None:
        self._side = side
        self.stream = side.name
        self.messages: list[Delivery] = []
        self.follows: set[_MemoryBatchFollow] = set()
        self._receipts: dict[str, BatchReceipt] = {}
        #: when set, called before each append (tests use it to inject faults)
        self.before_append: Callable[[], None] | None = None

    async def append(self, subject: str, data: bytes, commit_id: str) -> BatchReceipt:
        await anyio.lowlevel.checkpoint()
        if self.before_append is not None:
            self.before_append()
        earlier = self._receipts.get(commit_id)
        if earlier is not None:
            return BatchReceipt(earlier.sequence, earlier.subject, commit_id, True)
        delivery = (len(self.messages) + 1, subject, bytes(data))
        self.messages.append(delivery)
        receipt = BatchReceipt(delivery[0], subject, commit_id)
        self._receipts[commit_id] = receipt
        for follow in list(self.follows):
            follow.offer(delivery)
        return receipt

    async def last_sequence(self) -> int:
        return len(self.messages)

    async def read(
        self, subject_filter: str | None = None, *, start: int = 1
    ) -> AsyncIterator[Delivery]:
        pattern = subject_filter or self._side.subjects
        for delivery in self.messages[max(0, start - 1) :]:
            if subject_matches(pattern, delivery[1]):
                yield delivery
                await anyio.lowlevel.checkpoint()

    def follow(self, subject_filter: str | None = None, *, start: int = 1) -> _MemoryBatchFollow:
        return _MemoryBatchFollow(self, subject_filter or self._side.subjects, start)
