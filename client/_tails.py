"""Live tails of metric rows: a run's or a task attempt's history, then each row as logged.

A tail reads the entity's own subject of the points stream
(``runstate.engine._points``), from its first batch (or right after a
position) on, through one live read (``PointLog.follow``). The stream is
where the history comes from, so the hand-over from history to live rows
has no seam at which a row could be missed or repeated, and the read
store's projection plays no part: a projector restarting, or behind, does
not touch a tail. The follow rides out NATS reconnects and server restarts,
resuming right after the last batch it delivered.

A row's position is ``(sequence, index)``: the points-stream sequence of
the batch it travelled in and its index in that batch. A tail started with
``resume=position`` yields exactly the rows after it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runstate.client._subscription import Subscription
from runstate.engine._names import parse_pathspec
from runstate.engine._points import STREAMS, decode_points, points_subject
from runstate.engine.errors import BadFilter, InvalidEvent

if TYPE_CHECKING:
    from runstate.engine._typing import EventLog

__all__ = ["ANY_ATTEMPT", "MetricRow", "Position", "follow_rows", "read_rows"]

#: ``(points-stream sequence of the row's batch, index of the row in it)``
Position = tuple[int, int]

#: ``follow_rows(attempt=ANY_ATTEMPT)``: rows of every attempt of a task
ANY_ATTEMPT = -1


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One logged row as a tail delivers it, with where it is in the points stream.

    ``row`` holds ``_step``, ``_timestamp`` and the keys logged (only the
    keys asked for when the tail names some); ``row["loss"]`` or
    ``metric_row["loss"]``. Pass ``position`` as ``resume=`` to a new tail to
    go on right after this row.
    """

    sequence: int
    index: int
    #: the task attempt that logged it (None for a run's rows)
    attempt: int | None
    row: dict[str, Any]

    @property
    def position(self) -> Position:
        return (self.sequence, self.index)

    @property
    def step(self) -> int:
        step: int = self.row["_step"]
        return step

    def __getitem__(self, key: str) -> Any:
        return self.row[key]


def _checked_position(resume: object) -> Position | None:
    """``resume`` as a position; ``BadFilter`` when it is not one."""
    if resume is None:
        return None
    if (
        isinstance(resume, tuple)
        and len(resume) == 2
        and all(type(part) is int for part in resume)
        and resume[0] >= 1
        and resume[1] >= 0
    ):
        return (resume[0], resume[1])
    raise BadFilter(
        f"resume={resume!r} is not a position: pass a delivered row's .position, "
        "(points-stream sequence >= 1, index in its batch >= 0)"
    )


def _checked_keys(keys: Sequence[str] | None) -> frozenset[str] | None:
    if keys is None:
        return None
    if isinstance(keys, str) or not all(isinstance(key, str) for key in keys):
        raise BadFilter(f"keys={keys!r}: pass a list of metric names, e.g. keys=['loss']")
    return frozenset(keys)


def follow_rows(
    log: EventLog,
    pathspec: str,
    attempt: int | None,
    keys: Sequence[str] | None = None,
    stream: str = "default",
    resume: Position | None = None,
) -> Subscription[MetricRow]:
    """Rows of ``pathspec`` (a run, ``attempt`` None; or a task's ``attempt``, or
    ``ANY_ATTEMPT``) in ``stream``, from the first (or right after ``resume``) on, live.

    With ``keys``, only rows that have all of them, holding only those and the
    underscored keys (as ``scan_history``). ``BadFilter`` for a stream, keys
    or position that cannot be, raised here, before anything is read.
    """
    if stream not in STREAMS:
        raise BadFilter(f"metric stream {stream!r} is not one of {', '.join(STREAMS)}")
    wanted = _checked_keys(keys)
    position = _checked_position(resume)
    subject = points_subject(log.settings.prefix, parse_pathspec(pathspec, min_depth=2))
    return Subscription(_rows(log, subject, attempt, wanted, stream, position))


def _rows_of(
    sequence: int,
    data: bytes,
    attempt: int | None,
    wanted: frozenset[str] | None,
    stream: str,
    first: int,
) -> Iterator[MetricRow]:
    """The rows of one delivered batch that a tail wants, from index ``first`` on."""
    try:
        batch = decode_points(data)
    except InvalidEvent:
        return  # not a points batch: the metrics projector skips it too
    if batch.stream != stream or (batch.attempt != attempt and attempt != ANY_ATTEMPT):
        return
    rows = batch.rows
    for index in range(first, len(rows)):
        row = rows[index]
        if wanted is not None:
            if not wanted.issubset(row):
                continue
            row = {key: value for key, value in row.items() if key[0] == "_" or key in wanted}
        yield MetricRow(sequence, index, batch.attempt, row)


async def _rows(
    log: EventLog,
    subject: str,
    attempt: int | None,
    wanted: frozenset[str] | None,
    stream: str,
    resume: Position | None,
) -> AsyncGenerator[MetricRow, None]:
    start, seen = (1, -1) if resume is None else resume
    async with log.points.follow(subject, start=start) as batches:
        async for deliveries in batches:
            for sequence, _, data in deliveries:
                first = seen + 1 if sequence == start else 0
                for row in _rows_of(sequence, data, attempt, wanted, stream, first):
                    yield row


async def read_rows(
    log: EventLog,
    pathspec: str,
    attempt: int | None,
    resume: Position | None = None,
    stream: str = "default",
) -> list[MetricRow]:
    """The rows a tail of ``pathspec`` would yield from ``resume`` up to the end of the
    points stream now (not live): what a tail stopped at ``resume`` has not seen yet."""
    subject = points_subject(log.settings.prefix, parse_pathspec(pathspec, min_depth=2))
    start, seen = (1, -1) if resume is None else resume
    rows: list[MetricRow] = []
    async for sequence, _, data in log.points.read(subject, start=start):
        first = seen + 1 if sequence == start else 0
        rows.extend(_rows_of(sequence, data, attempt, None, stream, first))
    return rows
