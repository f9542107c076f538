"""Logging metric rows as W&B does: a row of keys per call, buffered, sent in batches.

``await task.log({"loss": 0.31})`` adds a row at the next step (0, 1, 2, …)
or at the step given; a step before the last one is refused
(``StepWentBack``) and a row at the last step again is merged into it.
Rows wait in a ``MetricsBuffer`` and go to the points stream
(``runstate.engine._points``) as one message per batch: when the buffer is
full, every ``settings.metrics_flush_interval`` seconds while the task's
(or run's) block runs, at the block's exit, and on ``flush()``.

A batch keeps its commit id until it is acknowledged: a flush that fails
(``Unavailable`` once the retry budget is spent) raises to its caller and
leaves the batch in the buffer, and the next flush sends it again with the
same id, so JetStream stores it once. Nothing acknowledged is lost, and
nothing is acknowledged twice.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from runstate.engine._commits import new_commit_id
from runstate.engine._logging import get_logger
from runstate.engine._names import parse_pathspec
from runstate.engine._points import (
    STEP,
    STREAMS,
    TIMESTAMP,
    PointReceipt,
    check_row,
    encode_points,
    points_subject,
)
from runstate.engine._typing import EventLog
from runstate.engine.errors import InvalidEvent, StepWentBack

__all__ = ["MetricsBuffer", "PeriodicFlush", "flushing_periodically"]

log = get_logger("runstate.metrics")

#: rows held at most before ``log`` sends them
MAX_ROWS = 2000


class MetricsBuffer:
    """The rows one entity (a run, or one attempt of a task) has logged and not yet sent."""

    def __init__(
        self,
        event_log: EventLog,
        pathspec: str,
        attempt: int | None,
        stream: str = "default",
        *,
        max_rows: int = MAX_ROWS,
    ) -> None:
        if stream not in STREAMS:
            raise InvalidEvent(f"metric stream {stream!r} is not one of {', '.join(STREAMS)}")
        self._log = event_log
        self.pathspec = pathspec
        self.attempt = attempt
        self.stream = stream
        self._subject = points_subject(event_log.settings.prefix, parse_pathspec(pathspec))
        self._max_rows = max_rows
        self._rows: list[dict[str, Any]] = []
        # batches encoded and not yet acknowledged, oldest first: (commit id, data, rows)
        self._unacknowledged: list[tuple[str, bytes, int]] = []
        self._lock = anyio.Lock(fast_acquire=True)  # no checkpoint when uncontended
        #: the step of the last row logged (-1 before the first)
        self.step = -1
        #: the receipt of the last batch stored (pass its sequence as ``after=``)
        self.receipt: PointReceipt | None = None

    @property
    def pending(self) -> int:
        """Rows logged and not yet acknowledged."""
        return len(self._rows) + sum(rows for _, _, rows in self._unacknowledged)

    async def log(self, row: Mapping[str, Any], step: int | None = None) -> None:
        """Add a row at ``step`` (default: the last step + 1); send a batch when full.

        ``InvalidEvent`` for a value that is not a number, bool or string,
        ``StepWentBack`` for a step before the last one; both before anything
        is buffered.
        """
        values = check_row(row)
        if step is None:
            step = self.step + 1
        elif type(step) is not int:
            if isinstance(step, bool) or not isinstance(step, int):
                raise InvalidEvent(f"step must be an int, not {type(step).__name__}")
            step = int(step)
        if step < self.step:
            raise StepWentBack(
                f"{self.pathspec}: step {step} is before the last step logged, {self.step}; "
                "steps only go forward (log at the same step to add keys to its row)"
            )
        if step < 0:
            raise StepWentBack(f"{self.pathspec}: step {step} is negative")
        if step == self.step and self._rows and self._rows[-1][STEP] == step:
            last = self._rows[-1]
            last[TIMESTAMP] = time.time()
            last.update(values)
        else:
            self._rows.append({STEP: step, TIMESTAMP: time.time(), **values})
        self.step = step
        if len(self._rows) >= self._max_rows:
            await self.flush()

    async def flush(self) -> PointReceipt | None:
        """Send every buffered row; the last batch's receipt (None if nothing was pending).

        Raises ``Unavailable`` when the points stream cannot be reached within
        the retry budget; the rows stay buffered and the next flush sends them
        again with the same commit ids.
        """
        if not self._rows and not self._unacknowledged and not self._lock.locked():
            return self.receipt  # nothing to send, and no flush under way to wait for
        async with self._lock:
            if self._rows:
                rows, self._rows = self._rows, []
                self._unacknowledged.extend(self._encode(rows))
            while self._unacknowledged:
                commit_id, data, _ = self._unacknowledged[0]
                self.receipt = await self._log.points.append(self._subject, data, commit_id)
                del self._unacknowledged[0]
            return self.receipt

    def _encode(self, rows: list[dict[str, Any]]) -> list[tuple[str, bytes, int]]:
        """Rows as messages within the log's payload limit (halved until they fit)."""
        data = encode_points(self.pathspec, self.attempt, self.stream, rows)
        if len(data) <= self._log.max_payload:
            return [(new_commit_id(), data, len(rows))]
        if len(rows) == 1:
            raise InvalidEvent(
                f"one metric row of {self.pathspec} encodes to {len(data)} bytes, over the "
                f"log's limit of {self._log.max_payload}; log shorter strings"
            )
        half = len(rows) // 2
        return self._encode(rows[:half]) + self._encode(rows[half:])


class PeriodicFlush:
    """The periodic flush of one block; ``wanted()`` starts it, once, if it is not running.

    Started through ``wanted()``, it begins after one interval, from a timer of the
    event loop: most blocks that log are over before then, and a task in a task
    group costs about 150 µs to start and stop, more than a short task's appends.
    """

    def __init__(
        self,
        group: anyio.abc.TaskGroup,
        tick: Callable[[float], Coroutine[Any, Any, None]],
        interval: float,
    ) -> None:
        self._group = group
        self._tick = tick
        self._interval = interval
        self._timer: asyncio.TimerHandle | None = None
        self.started = False
        # the loop's thread: a captured print in another thread asks through the loop
        self._thread = threading.get_ident()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio (trio): no timer to wait with
            self._loop = None

    def wanted(self) -> None:
        """Make sure the flush runs from one interval on (rows or lines wait to be sent).

        Callable from any thread: from another than the loop's, it is passed on to
        the loop (a thread started in a task's context writes to its log).
        """
        if self.started or self._timer is not None:
            return
        if threading.get_ident() != self._thread:
            if self._loop is not None:  # (else the block's exit sends what waits)
                self._loop.call_soon_threadsafe(self.wanted)
            return
        if self._loop is None:
            self.start(self._interval)
            return
        self._timer = self._loop.call_later(self._interval, self.start, 0.0)

    def start(self, first_delay: float) -> None:
        """Flush every interval, the first time after ``first_delay`` seconds."""
        self._timer = None
        if not self.started:
            self.started = True
            self._group.start_soon(self._tick, first_delay)

    def stop(self) -> None:
        """Cancel a start still waiting for its timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@asynccontextmanager
async def flushing_periodically(
    flush: Callable[[], Awaitable[object]], interval: float, *, lazy: bool = False
) -> AsyncIterator[PeriodicFlush]:
    """Call ``flush`` every ``interval`` seconds while inside; its faults are left for
    the flush at the block's exit to raise.

    With ``lazy``, the flushing starts only once ``wanted()`` is called on what the
    block is given (as the first row is logged), and then one interval later (see
    ``PeriodicFlush``).
    """

    async def tick(first_delay: float) -> None:
        delay = first_delay
        while True:
            await anyio.sleep(delay)
            delay = interval
            try:
                await flush()
            except Exception as exc:  # the rows stay buffered; the exit's flush raises
                log.debug("metrics.flush_failed", error=str(exc))

    # As in _heartbeating: the block's exception is re-raised outside the task group,
    # so that callers can catch it by type rather than inside an ExceptionGroup.
    error: Exception | None = None
    async with anyio.create_task_group() as group:
        periodic = PeriodicFlush(group, tick, interval)
        if not lazy:
            periodic.start(interval)
        try:
            yield periodic
        except Exception as exc:
            error = exc
        finally:
            periodic.stop()
            if periodic.started:
                group.cancel_scope.cancel()
    if error is not None:
        raise error
