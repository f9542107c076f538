"""Writing a task's log lines: buffered, sent in batches, each batch stored once.

A ``LogBuffer`` holds what one task attempt wrote to stdout and stderr (by
``TaskHandle.write_log``, or captured inside its block: ``_capture``) and
sends it to the log lines stream (``runstate.engine._lines``) as one
message per batch: every ``settings.metrics_flush_interval`` seconds while
the task's block runs, when the buffer is full (``write_log``), at the
block's exit, and on ``flush()``.

As ``MetricsBuffer`` does for metric rows: a batch keeps its commit id until
it is acknowledged, a flush that fails raises to its caller and leaves the
batch buffered, and the next flush sends it again with the same id, so
JetStream stores it once.

Writes may come from several threads (a thread started with the task's
context writes to its buffer), so the lines themselves are guarded by a
thread lock; sending is guarded by the event loop's lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio

from runstate.engine._batches import BatchReceipt
from runstate.engine._commits import new_commit_id
from runstate.engine._lines import Line, encode_lines, lines_subject, max_line_chars
from runstate.engine._names import parse_pathspec
from runstate.engine._typing import EventLog

__all__ = ["MAX_LINES", "LogBuffer"]

#: lines held at most before ``write_log`` sends them
MAX_LINES = 20_000
#: bytes a line costs in a message besides its text (time, stream, brackets)
_LINE_OVERHEAD = 32


class LogBuffer:
    """The lines one task attempt has written and not yet sent."""

    def __init__(
        self, event_log: EventLog, pathspec: str, attempt: int, *, max_lines: int = MAX_LINES
    ) -> None:
        self._log = event_log
        self.pathspec = pathspec
        self.attempt = attempt
        self._subject = lines_subject(event_log.settings.prefix, parse_pathspec(pathspec))
        self._max_lines = max_lines
        self._max_line = max_line_chars(event_log.max_payload)
        self._guard = threading.Lock()
        # (time, stream, text): tuples of atoms, which the garbage collector stops tracking
        self._lines: list[Line] = []
        # per stream, a line begun and not yet ended: (time, text so far)
        self._partial: dict[int, tuple[float, str]] = {}
        # batches encoded and not yet acknowledged, oldest first: (commit id, data, lines)
        self._unacknowledged: list[tuple[str, bytes, int]] = []
        self._lock = anyio.Lock(fast_acquire=True)  # no checkpoint when uncontended
        #: the receipt of the last batch stored (a position in the lines stream)
        self.receipt: BatchReceipt | None = None
        #: called (from any thread) when lines start waiting in an empty buffer: the
        #: block running the task starts its periodic flush then (``PeriodicFlush``)
        self.wanted: Callable[[], None] | None = None

    @property
    def pending(self) -> int:
        """Lines written and not yet acknowledged (a line not yet ended is not counted)."""
        return len(self._lines) + sum(lines for _, _, lines in self._unacknowledged)

    @property
    def full(self) -> bool:
        return len(self._lines) >= self._max_lines

    def write(self, stream: int, text: str) -> None:
        """Add ``text`` written to ``stream`` (1 stdout, 2 stderr), as a file would take it.

        Each newline ends a line; what follows the last one waits for the
        rest of its line (or ``end_lines``). A line keeps the time its first
        character was written.
        """
        # print() writes its text, then "\n": both paths below are the hot ones
        with self._guard:
            partial = self._partial.pop(stream, None)
            if partial is None:
                if "\n" not in text:
                    if text:
                        self._partial[stream] = (time.time(), text)
                    return
                at = time.time()
            else:
                at, text = partial[0], partial[1] + text
            if not self._lines and self.wanted is not None:
                self.wanted()
            end = text.find("\n")
            if end == len(text) - 1 and end < self._max_line:  # one whole line
                self._lines.append((at, stream, text))
                return
            start = 0
            while end >= 0:
                self._add(at, stream, text[start : end + 1])
                at = time.time()
                start, end = end + 1, text.find("\n", end + 1)
            rest = text[start:]
            if len(rest) >= self._max_line:  # a line that never ends (a progress bar)
                self._add(at, stream, rest)
            elif rest:
                self._partial[stream] = (at, rest)

    def write_lines(self, stream: int, text: str) -> None:
        """Add ``text`` as whole lines: each newline ends one, and so does its end."""
        now = time.time()
        pieces = text.split("\n")
        if text.endswith("\n"):
            pieces.pop()
        with self._guard:
            if not self._lines and self.wanted is not None:
                self.wanted()
            for piece in pieces:
                self._add(now, stream, piece + "\n")

    def end_lines(self) -> None:
        """End the lines begun and not ended (the block that wrote them is over)."""
        with self._guard:
            partials, self._partial = self._partial, {}
            for stream, (started, text) in sorted(partials.items(), key=lambda i: i[1][0]):
                self._add(started, stream, text)

    def _add(self, at: float, stream: int, line: str) -> None:
        limit = self._max_line
        if len(line) <= limit:
            self._lines.append((at, stream, line))
            return
        for start in range(0, len(line), limit):
            self._lines.append((at, stream, line[start : start + limit]))

    async def flush(self) -> BatchReceipt | None:
        """Send every buffered line; the last batch's receipt (None if nothing was sent yet).

        Raises ``Unavailable`` when the lines stream cannot be reached within
        the retry budget; the lines stay buffered and the next flush sends
        them again with the same commit ids.
        """
        if not self._lines and not self._unacknowledged and not self._lock.locked():
            return self.receipt  # nothing to send, and no flush under way to wait for
        async with self._lock:
            with self._guard:
                lines, self._lines = self._lines, []
            if lines:
                self._unacknowledged.extend(self._encode(lines))
            while self._unacknowledged:
                commit_id, data, _ = self._unacknowledged[0]
                self.receipt = await self._log.lines.append(self._subject, data, commit_id)
                del self._unacknowledged[0]
            return self.receipt

    def _encode(self, lines: list[Line]) -> list[tuple[str, bytes, int]]:
        """Lines as messages within the log's payload limit: cut where their texts would
        fill half of it, then halved until each fits (a piece of a line always fits)."""
        budget = self._log.max_payload // 2
        messages: list[tuple[str, bytes, int]] = []
        first = size = 0
        for index, line in enumerate(lines):
            size += len(line[2]) + _LINE_OVERHEAD
            if size > budget and index > first:
                messages += self._fitted(lines[first:index])
                first, size = index, len(line[2]) + _LINE_OVERHEAD
        return messages + self._fitted(lines[first:])

    def _fitted(self, lines: list[Line]) -> list[tuple[str, bytes, int]]:
        data = encode_lines(self.pathspec, self.attempt, lines)
        if len(data) <= self._log.max_payload or len(lines) == 1:
            return [(new_commit_id(), data, len(lines))]
        half = len(lines) // 2
        return self._fitted(lines[:half]) + self._fitted(lines[half:])
