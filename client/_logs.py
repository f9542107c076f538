"""Reading a task's log lines (its stdout and stderr) straight from their stream.

Lines are not projected: a read goes to the log lines stream
(``runstate.engine._lines``, ``EventLog.lines``) with the task's subject and
keeps the batches of one attempt. Positions are the stream's: a line is at
``(sequence, index)``, the sequence of its batch and its index in it, and
``after=`` takes such a position (or a batch's sequence, or a flush's
receipt) so that a read or a follow resumes exactly after it.

``Task`` (``_objects``) reads with these as ``task.logs()``,
``task.log_lines()`` and ``task.follow_logs()``; ``runstate logs`` too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from runstate.engine._batches import BatchReceipt
from runstate.engine._lines import STDERR, STDOUT, decode_lines, lines_subject
from runstate.engine._names import parse_pathspec
from runstate.engine._typing import EventLog
from runstate.engine.errors import BadFilter

if TYPE_CHECKING:
    from runstate.client._client import Client

__all__ = [
    "LogLine",
    "LogPosition",
    "LogReads",
    "follow_log_lines",
    "read_log_lines",
    "read_log_text",
]

#: a line's place in the log lines stream: (its batch's sequence, its index in the batch)
LogPosition = tuple[int, int]

#: where a read resumes: after a line's position, after a whole batch (its sequence or
#: receipt), or from the beginning (0)
After = LogPosition | BatchReceipt | int

_NAMES = {STDOUT: "stdout", STDERR: "stderr"}


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a task's output.

    ``text`` is the line as written, ending in a newline unless it was cut
    (a block that ended mid-line, or a very long line split in pieces).
    """

    sequence: int
    index: int
    #: when its first character was written, seconds since the epoch
    time: float
    #: ``"stdout"`` or ``"stderr"``
    stream: str
    text: str

    @property
    def position(self) -> LogPosition:
        """Where the line is; pass it as ``after=`` to resume right after it."""
        return (self.sequence, self.index)

    @property
    def at(self) -> datetime:
        """``time`` as a datetime (UTC)."""
        return datetime.fromtimestamp(self.time, UTC)


def _stream(stream: str | None) -> int | None:
    if stream is None:
        return None
    for number, name in _NAMES.items():
        if stream == name:
            return number
    raise BadFilter(f"a log stream is 'stdout' or 'stderr' (or None for both), not {stream!r}")


def _resume(after: After) -> LogPosition:
    """``after`` as the position the read goes on after (a whole batch: an index past
    any batch's end)."""
    if isinstance(after, BatchReceipt):
        return (after.sequence, 1 << 62)
    if isinstance(after, tuple):
        sequence, index = after
        return (int(sequence), int(index))
    if isinstance(after, int) and not isinstance(after, bool) and after >= 0:
        return (after, 1 << 62)
    raise BadFilter(f"after= takes a line's position, a sequence or a receipt, not {after!r}")


def _subject(log: EventLog, pathspec: str) -> str:
    return lines_subject(log.settings.prefix, parse_pathspec(pathspec, min_depth=4, max_depth=4))


def _lines_of(
    sequence: int, data: bytes, attempt: int, number: int | None, resume: LogPosition
) -> list[LogLine]:
    """The lines of one batch that the read wants."""
    batch = decode_lines(data)
    if batch.attempt != attempt:
        return []
    skip = resume[1] if sequence == resume[0] else -1
    return [
        LogLine(sequence, index, line[0], _NAMES.get(line[1], str(line[1])), line[2])
        for index, line in enumerate(batch.lines())
        if index > skip and (number is None or line[1] == number)
    ]


async def read_log_lines(
    log: EventLog, pathspec: str, attempt: int, *, stream: str | None = None, after: After = 0
) -> AsyncIterator[LogLine]:
    """The lines of a task's ``attempt`` stored after ``after``, oldest first, up to what
    was stored when the read began (``stream``: ``stdout``, ``stderr`` or both)."""
    number, resume = _stream(stream), _resume(after)
    subject = _subject(log, pathspec)
    async for sequence, _, data in log.lines.read(subject, start=max(1, resume[0])):
        for line in _lines_of(sequence, data, attempt, number, resume):
            yield line


async def read_log_text(log: EventLog, pathspec: str, attempt: int, stream: str = "stdout") -> str:
    """Everything a task's ``attempt`` wrote to ``stream``, as one string."""
    number = _stream(stream)
    assert number is not None
    subject = _subject(log, pathspec)
    texts: list[str] = []
    async for _, _, data in log.lines.read(subject):
        batch = decode_lines(data)  # a bulk read: each batch's text whole, no LogLine each
        if batch.attempt == attempt:
            texts.append(batch.text_of(number))
    return "".join(texts)


@asynccontextmanager
async def follow_log_lines(
    log: EventLog, pathspec: str, attempt: int, *, stream: str | None = None, after: After = 0
) -> AsyncIterator[AsyncIterator[LogLine]]:
    """The lines of a task's ``attempt`` after ``after``: those stored, then each as it
    is stored, none missed or repeated (a reconnect resumes after the last batch given)."""
    number, resume = _stream(stream), _resume(after)
    subject = _subject(log, pathspec)

    async def lines(batches: Any) -> AsyncIterator[LogLine]:
        async for batch in batches:
            for sequence, _, data in batch:
                for line in _lines_of(sequence, data, attempt, number, resume):
                    yield line

    async with log.lines.follow(subject, start=max(1, resume[0])) as batches:
        yield lines(batches)


class LogReads:
    """A task's log reads (``Task`` mixes them in): its attempt's stdout and stderr."""

    _client: Client
    pathspec: str
    _attempt: int

    async def logs(self, stream: str = "stdout") -> str:
        """Everything this attempt wrote to ``stream`` (``stdout`` or ``stderr``), as one
        string: Metaflow's ``task.stdout``. ``BadFilter`` for another stream."""
        return await read_log_text(self._client.log, self.pathspec, self._attempt, stream)

    def log_lines(self, stream: str | None = None, *, after: After = 0) -> AsyncIterator[LogLine]:
        """This attempt's lines stored after ``after`` (both streams unless ``stream``
        names one), oldest first: ``async for line in task.log_lines():``."""
        return read_log_lines(
            self._client.log, self.pathspec, self._attempt, stream=stream, after=after
        )

    def follow_logs(
        self, stream: str | None = None, *, after: After = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[LogLine]]:
        """This attempt's lines after ``after``, then each as it is written, for ever:
        ``async with task.follow_logs() as lines: async for line in lines:``.

        None is missed or repeated, across reconnects too; pass a line's
        ``position`` as ``after=`` to resume right after it. Leave the block
        to stop.
        """
        return follow_log_lines(
            self._client.log, self.pathspec, self._attempt, stream=stream, after=after
        )
