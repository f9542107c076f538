"""``Client.runs_frame``: every run a list selects, as one pandas DataFrame.

The query service answers with columns (``runstate.projections._frame``),
many thousand runs a reply; this joins the replies' columns and makes the
frame in one go, so exporting 10,000 runs is a few requests, not 10,000
object reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.abc import TaskGroup

from runstate.client._history import _pandas
from runstate.engine._points import untag
from runstate.projections._frame import BASE_COLUMNS
from runstate.projections._protocol import RunsFrameRequest

if TYPE_CHECKING:
    from runstate.client._client import Client

__all__ = ["frame_columns", "runs_frame"]

_TAG = b'{"$f":'

#: the most runs a request asks for
_MAX_LIMIT = 100_000


class _Columns:
    """Columns of runs, joined page after page (a key a page lacks is None there)."""

    def __init__(self) -> None:
        self.size = 0
        self.base: dict[str, list[Any]] = {name: [] for name in BASE_COLUMNS}
        self.keyed: dict[str, dict[str, list[Any]]] = {"config": {}, "summary": {}}

    def add(self, page: dict[str, Any], tagged: bool) -> None:
        count = len(page["columns"]["pathspec"])
        for name, values in page["columns"].items():
            self.base[name] += values
        # explicit summary values after the logged ones: they win
        for part, values_of in (
            ("config", page["config"]),
            ("summary", page["logged"]),
            ("summary", page["explicit"]),
        ):
            columns = self.keyed[part]
            for key, values in values_of.items():
                column = columns.get(key)
                if column is None:
                    column = columns[key] = [None] * self.size
                if len(column) < self.size + count:
                    column += [None] * (self.size + count - len(column))
                offset = self.size
                if tagged and part == "summary":
                    for index, value in values.items():
                        column[offset + int(index)] = untag(value)
                else:
                    for index, value in values.items():
                        column[offset + int(index)] = value
        self.size += count
        for columns in self.keyed.values():
            for column in columns.values():
                if len(column) < self.size:
                    column += [None] * (self.size - len(column))

    def frame(self, pd: Any) -> Any:
        data: dict[str, Any] = dict(self.base)
        for name in ("created_at", "finished_at"):
            data[name] = pd.to_datetime(pd.Series(data[name], dtype="float64"), unit="us", utc=True)
        data["duration"] = pd.Series(data["duration"], dtype="float64") / 1e6
        for part, columns in self.keyed.items():
            for key in sorted(columns):
                data[f"{part}.{key}"] = columns[key]
        return pd.DataFrame(data)


async def runs_frame(client: Client, query: RunsFrameRequest) -> Any:
    """The DataFrame of every run ``query`` selects (``Client.runs_frame``).

    The next page is asked for as soon as a reply arrives, before this one
    is read: the replica makes it while the client turns this one into
    columns.
    """
    pd = _pandas("runs_frame")  # before the first request: say what is missing
    return (await frame_columns(client, query)).frame(pd)


async def frame_columns(
    client: Client, query: RunsFrameRequest, *, untagged: bool = True
) -> _Columns:
    """The columns of every run ``query`` selects (``runs_frame`` makes its frame of them;
    the HTTP gateway sends them as JSON, with ``untagged`` False so that a NaN or an
    infinity stays tagged, as JSON has no such numbers)."""
    columns = _Columns()
    async with anyio.create_task_group() as tg:
        reply = _Reply(client, query, tg)
        while True:
            raw = await reply.wait()
            cursor, count = _head(raw)
            if cursor is not None:
                # as many runs as fill most of a reply, at this page's bytes a run: the
                # service need not try a page that is too long first
                limit = int(0.8 * _reply_bytes(client) * max(1, count) / len(raw))
                # seen once, ``after`` stays seen
                query = query.model_copy(
                    update={
                        "cursor": cursor,
                        "after": None,
                        "after_points": None,
                        "limit": max(1, min(_MAX_LIMIT, limit)),
                    }
                )
                next_reply = _Reply(client, query, tg)
            columns.add(orjson.loads(raw)["result"], untagged and _TAG in raw)
            if cursor is None:
                break
            reply = next_reply
    return columns


class _Reply:
    """One page's request, sent at once in ``tg``; ``wait()`` for its bytes."""

    def __init__(self, client: Client, query: RunsFrameRequest, tg: TaskGroup) -> None:
        self._done = anyio.Event()
        self._raw = b""
        self._error: BaseException | None = None
        tg.start_soon(self._send, client, query)

    async def _send(self, client: Client, query: RunsFrameRequest) -> None:
        try:
            self._raw = await client._request(query, None)
        except Exception as exc:  # raised to the waiter, not out of the task group
            self._error = exc
        self._done.set()

    async def wait(self) -> bytes:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._raw


def _head(raw: bytes) -> tuple[str | None, int]:
    """The cursor and count a page starts with (``{"result":{"next_cursor":...,"count":n``),
    read without parsing the page."""
    start = raw.index(b'"next_cursor":') + len(b'"next_cursor":')
    middle = raw.index(b',"count":', start)
    end = raw.index(b",", middle + 1)
    cursor: str | None = orjson.loads(raw[start:middle])
    return cursor, int(raw[middle + len(b',"count":') : end])


def _reply_bytes(client: Client) -> int:
    """The bytes a reply may carry: the server's message limit (1 MB without NATS)."""
    return client.nc.max_payload if client.nc is not None else 1024 * 1024
