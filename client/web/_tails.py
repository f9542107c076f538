"""Task logs, live tails and the runs table over HTTP.

- ``.../tasks/{task_id}/logs?stream=``: what the attempt wrote to stdout or
  stderr, as text (``task.logs()``).
- ``.../tasks/{task_id}/log-lines?stream=&after=&limit=``: a page of its
  lines with their positions (``task.log_lines()``); ``next_after`` is the
  ``after`` of the next page.
- ``.../tasks/{task_id}/log-lines/follow``: server-sent events of the lines,
  stored then live (``task.follow_logs()``).
- ``/metrics/{pathspec}/follow``: server-sent events of a run's or task's
  metric rows, stored then live (``follow_history()``).
- ``/runs-frame``: every run a list selects, as JSON columns
  (``client.runs_frame()`` without pandas).

A line or a row is at a position ``(sequence, index)`` (its batch's
sequence in its side stream, its index in the batch). Over HTTP a position
is one string, ``"sequence:index"``: each SSE message's ``id``, so a
browser's reconnect (``Last-Event-ID``) resumes right after the last line or
row it got, as the client's ``after=`` and ``resume=`` do.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from runstate.client._client import Client
from runstate.client._frame import frame_columns
from runstate.client._logs import LogLine
from runstate.client._logs import _stream as stream_number
from runstate.client._tails import MetricRow, Position
from runstate.client.web._filters import RunsFilters
from runstate.client.web._live import Frames, LastEventId, sse_frame
from runstate.client.web._live import _stream as event_stream
from runstate.client.web._reads import After, AfterPoints, Attempt, Reader, list_after, reader
from runstate.engine._names import parse_pathspec
from runstate.engine._points import wire_value
from runstate.engine.errors import BadFilter
from runstate.projections._frame import BASE_COLUMNS
from runstate.projections._protocol import RunsFrameRequest

__all__ = ["LogLinePage", "LogLineView", "RunsFrame", "format_position", "parse_position", "router"]

router = APIRouter(prefix="/api/v1", tags=["logs and tails"])

_TASK = "/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}"
_SSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}

LogStream = Annotated[
    str | None, Query(description="stdout or stderr (absent: both).", examples=["stdout"])
]


def format_position(position: tuple[int, int]) -> str:
    """A line's or a row's position as one string: ``"sequence:index"``."""
    return f"{position[0]}:{position[1]}"


def parse_position(text: str, what: str = "after") -> tuple[int, int] | int:
    """``"sequence:index"`` as a position, or ``"sequence"`` as a whole batch's sequence;
    ``BadFilter`` for anything else."""
    head, colon, tail = text.strip().partition(":")
    if head.isdigit() and (not colon or tail.isdigit()):
        return (int(head), int(tail)) if colon else int(head)
    raise BadFilter(
        f"{what} is a position as an SSE id gives it, sequence:index (such as 12:3), or a "
        f"batch's sequence (such as 12), not {text!r}"
    )


def _resumed(last_event_id: str | None) -> tuple[int, int] | None:
    """The position in ``Last-Event-ID``; None for none or one not ours (start afresh)."""
    if last_event_id is None:
        return None
    try:
        position = parse_position(last_event_id)
    except BadFilter:
        return None
    return position if isinstance(position, tuple) else None


class LogLineView(BaseModel):
    """One line of a task's output (``LogLine``); ``position`` is its ``sequence:index``."""

    sequence: int
    index: int
    #: when its first character was written, seconds since the epoch
    time: float
    stream: str
    text: str
    position: str

    @classmethod
    def of(cls, line: LogLine) -> LogLineView:
        return cls(
            sequence=line.sequence,
            index=line.index,
            time=line.time,
            stream=line.stream,
            text=line.text,
            position=format_position(line.position),
        )


class LogLinePage(BaseModel):
    """A page of log lines, oldest first; pass ``next_after`` as ``after`` for the next."""

    items: list[LogLineView]
    next_after: str | None


async def _task(
    client: Client, flow: str, run_id: str, step: str, task_id: str, attempt: int | None
) -> Any:
    path = parse_pathspec(f"{flow}/{run_id}/{step}/{task_id}", min_depth=4, max_depth=4)
    return await client.task(str(path), attempt=attempt)


@router.get(
    _TASK + "/logs",
    response_class=PlainTextResponse,
    summary="Everything a task's attempt wrote to stdout or stderr, as text",
    responses={200: {"content": {"text/plain": {}}}},
)
async def get_logs(
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    client: Reader,
    stream: Annotated[str, Query(description="stdout or stderr.")] = "stdout",
    attempt: Attempt = None,
) -> PlainTextResponse:
    task = await _task(client, flow, run_id, step, task_id, attempt)
    return PlainTextResponse(await task.logs(stream))


@router.get(
    _TASK + "/log-lines",
    response_model=LogLinePage,
    summary="A page of a task attempt's log lines, oldest first (next: after=next_after)",
)
async def get_log_lines(
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    client: Reader,
    stream: LogStream = None,
    after: Annotated[
        str, Query(description="Lines after this position (sequence:index) or batch sequence.")
    ] = "0",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    attempt: Attempt = None,
) -> Response:
    position = parse_position(after)
    task = await _task(client, flow, run_id, step, task_id, attempt)
    lines: list[LogLine] = []
    more = False
    async for line in task.log_lines(stream, after=position):
        if len(lines) == limit:
            more = True
            break
        lines.append(line)
    next_after = format_position(lines[-1].position) if more else None
    page = LogLinePage(items=[LogLineView.of(line) for line in lines], next_after=next_after)
    return Response(page.model_dump_json(), media_type="application/json")


@router.get(
    _TASK + "/log-lines/follow",
    summary="Server-sent events: a task attempt's log lines, stored then live",
    description="One line message per line, its id the line's position (sequence:index): "
    "a reconnect with Last-Event-ID resumes right after it.",
    response_class=PlainTextResponse,
    responses=_SSE,
)
async def follow_logs(
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    request: Request,
    stream: LogStream = None,
    after: Annotated[
        str, Query(description="Start after this position (sequence:index) or batch sequence.")
    ] = "0",
    attempt: Attempt = None,
    last_event_id: LastEventId = None,
    namespace: Annotated[str | None, Query()] = None,
) -> Response:
    stream_number(stream)  # a bad one: 422 before streaming
    start: tuple[int, int] | int = parse_position(after)
    resumed = _resumed(last_event_id)
    if resumed is not None:
        start = resumed
    task = await _task(reader(request, namespace), flow, run_id, step, task_id, attempt)

    async def produce(frames: Frames) -> None:
        async with task.follow_logs(stream, after=start) as lines:
            async for line in lines:
                body = LogLineView.of(line).model_dump_json().encode()
                await frames.send(sse_frame("line", body, format_position(line.position)))

    return event_stream(request, "logs", produce)


@router.get(
    "/metrics/{pathspec:path}/follow",
    summary="Server-sent events: a run's or task's metric rows, stored then live",
    description="One row message per row ({sequence, index, attempt, row}), its id the row's "
    "position (sequence:index): a reconnect with Last-Event-ID resumes right after it. Values "
    'that are NaN or infinite come as {"$f": "nan"} (or inf, -inf).',
    response_class=PlainTextResponse,
    responses=_SSE,
)
async def follow_history(
    pathspec: str,
    request: Request,
    keys: Annotated[list[str] | None, Query(description="Only rows with all of these.")] = None,
    stream: Annotated[str, Query(description="default or system")] = "default",
    resume: Annotated[
        str | None, Query(description="Start right after this row position (sequence:index).")
    ] = None,
    attempt: Attempt = None,
    last_event_id: LastEventId = None,
    namespace: Annotated[str | None, Query()] = None,
) -> Response:
    path = parse_pathspec(pathspec, min_depth=2, max_depth=4)
    if path.kind not in ("run", "task"):
        raise BadFilter(f"metrics are logged by a run or a task, not a {path.kind} ({path})")
    position: Position | None = _resumed(last_event_id)
    if position is None and resume is not None:
        given = parse_position(resume, "resume")
        position = given if isinstance(given, tuple) else (given, 1 << 62)
    client = reader(request, namespace)
    target: Any
    if path.kind == "run":
        target = await client.run(str(path))
    else:
        target = await client.task(str(path), attempt=attempt)
    rows = target.follow_history(keys, stream, resume=position)  # BadFilter: 422 here

    async def produce(frames: Frames) -> None:
        async with rows:
            async for row in rows:
                await frames.send(sse_frame("row", _row_json(row), format_position(row.position)))

    return event_stream(request, "history", produce)


def _row_json(row: MetricRow) -> bytes:
    values = {key: wire_value(value) for key, value in row.row.items()}
    return orjson.dumps(
        {"sequence": row.sequence, "index": row.index, "attempt": row.attempt, "row": values}
    )


# -- the runs table -------------------------------------------------------------------


class RunsFrame(BaseModel):
    """Every run a list selects, as columns: ``data[column][i]`` is run ``i``'s value.

    The columns of ``client.runs_frame()``: pathspec, flow, run_id,
    display_name, state, user, tags, created_at, finished_at (ISO times, UTC),
    duration (seconds), then ``config.<key>`` and ``summary.<key>`` for every
    key any run has (null where a run has none). Summary values that are NaN
    or infinite come as ``{"$f": "nan"}`` (or inf, -inf).
    """

    columns: list[str]
    data: dict[str, list[Any]]


@router.get(
    "/runs-frame",
    response_model=RunsFrame,
    summary="Every run a list selects, as JSON columns (client.runs_frame)",
)
async def runs_frame(
    filters: RunsFilters,
    client: Reader,
    after: After = None,
    after_points: AfterPoints = None,
) -> Response:
    list_after(after, after_points)  # BadFilter for both
    query = filters.request(client, RunsFrameRequest, after=after, after_points=after_points)
    columns = await frame_columns(client, query, untagged=False)
    data: dict[str, list[Any]] = dict(columns.base)
    for name in ("created_at", "finished_at"):
        data[name] = [_iso(micros) for micros in data[name]]
    data["duration"] = [None if us is None else us / 1e6 for us in data["duration"]]
    for part, keyed in columns.keyed.items():
        for key in sorted(keyed):
            data[f"{part}.{key}"] = keyed[key]
    assert list(data)[: len(BASE_COLUMNS)] == list(BASE_COLUMNS)
    frame = {"columns": list(data), "data": data}
    return Response(orjson.dumps(frame), media_type="application/json")


def _iso(micros: int | None) -> str | None:
    if micros is None:
        return None
    return (_EPOCH + timedelta(microseconds=micros)).isoformat()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
