"""Reading a run's or task's metrics with W&B's names, through the query service.

``Run`` and ``Task`` (``_objects``) call these: ``history`` (sampled, see
``runstate.projections._sampling``), ``scan_history`` (every row, paged),
``history_keys``, ``last_history_step`` and ``summary`` (each key's latest
logged value), and ``follow_history`` (a live tail, ``_tails``).
``after=`` takes a flush's receipt (or its sequence): the read then sees
every point of that flush.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from runstate.client._subscription import Subscription
from runstate.client._tails import MetricRow, Position, follow_rows
from runstate.engine._points import PointReceipt, decode_value
from runstate.engine.errors import ConfigurationError
from runstate.projections._protocol import (
    MetricHistoryRequest,
    MetricKeysRequest,
    MetricScanRequest,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from runstate.client._client import Client

__all__ = [
    "History",
    "MetricReads",
]

_History = list[dict[str, Any]]


def _rows(rows: list[dict[str, Any]], raw: bytes) -> list[dict[str, Any]]:
    """Rows from the wire (``raw``, the reply): tagged NaN and infinities back to floats.

    Most replies hold none, and are then taken as they are."""
    if _TAG not in raw:
        return rows
    for row in rows:
        for key, value in row.items():
            if type(value) is dict:
                row[key] = decode_value(value)
    return rows


_TAG = b'{"$f":'


def _pandas(what: str = "pandas=True") -> Any:
    try:
        return importlib.import_module("pandas")
    except ImportError:
        raise ConfigurationError(
            f"{what} needs pandas: install the extra, pip install 'runstate[pandas]'"
        ) from None


class History:
    """The requests behind the metric reads of one run, or of one attempt of a task
    (``attempt`` None: a run)."""

    def __init__(self, client: Client, pathspec: str, attempt: int | None) -> None:
        self._client = client
        self._pathspec = pathspec
        self._attempt = attempt

    def _body(self, stream: str, after: int | PointReceipt | None) -> dict[str, Any]:
        """The fields every metric request has (``Client.query`` adds ``wait`` to ``after``)."""
        return {
            "pathspec": self._pathspec,
            "stream": stream,
            "attempt": self._attempt,
            "after": after.sequence if isinstance(after, PointReceipt) else after,
        }

    async def _reply(self, request: type[BaseModel], body: dict[str, Any]) -> bytes:
        """The query service's reply to ``request`` with the fields ``body``, as bytes."""
        return await self._client._request(self._client.query(request, **body), None)

    async def scan_pages(
        self,
        keys: Sequence[str] | None = None,
        page_size: int = 1000,
        min_step: int | None = None,
        max_step: int | None = None,
        stream: str = "default",
        *,
        after: int | PointReceipt | None = None,
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """``scan_history`` a page at a time (the blocking facades cross threads per page)."""
        body = self._body(stream, after)
        body.update(
            keys=list(keys) if keys is not None else None,
            page_size=page_size,
            min_step=min_step,
            max_step=max_step,
        )
        while True:
            raw = await self._reply(MetricScanRequest, body)
            page = orjson.loads(raw)["result"]
            yield _rows(page["rows"], raw)
            if page["next_start"] is None:
                return
            body["start"] = page["next_start"]
            body["after"] = None  # seen once, it stays seen

    async def keys(
        self, stream: str = "default", *, after: int | PointReceipt | None = None
    ) -> dict[str, Any]:
        """``{"keys": [...], "last_step": int | None, "summary": {...}}``."""
        reply: dict[str, Any] = await self._client.request(
            self._client.query(MetricKeysRequest, **self._body(stream, after))
        )
        summary = reply["summary"]
        for key, value in summary.items():
            summary[key] = decode_value(value)
        return reply

    def follow(
        self, keys: Sequence[str] | None, stream: str, resume: Position | None
    ) -> Subscription[MetricRow]:
        return follow_rows(self._client.log, self._pathspec, self._attempt, keys, stream, resume)


class MetricReads:
    """Metric reads with W&B's names, for a run or one attempt of a task (``_history``)."""

    def _history(self) -> History:
        raise NotImplementedError

    async def history(
        self,
        samples: int = 500,
        keys: Sequence[str] | None = None,
        x_axis: str = "_step",
        pandas: bool = False,
        stream: str = "default",
        *,
        after: int | PointReceipt | None = None,
    ) -> Any:
        """Sampled metric rows (first, last, and each bucket's minimum, maximum and last
        kept; at most ``samples`` rows), a list of dicts or with ``pandas=True`` a
        DataFrame (``ConfigurationError`` naming the extra when pandas is missing)."""
        history = self._history()
        body = history._body(stream, after)
        body.update(samples=samples, keys=list(keys) if keys is not None else None, x_axis=x_axis)
        module = _pandas() if pandas else None  # before the request: say what is missing
        raw = await history._reply(MetricHistoryRequest, body)
        rows: _History = _rows(orjson.loads(raw)["result"], raw)
        return rows if module is None else module.DataFrame.from_records(rows)

    async def scan_history(
        self,
        keys: Sequence[str] | None = None,
        page_size: int = 1000,
        min_step: int | None = None,
        max_step: int | None = None,
        stream: str = "default",
        *,
        after: int | PointReceipt | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every metric row from ``min_step`` to ``max_step`` (both included), ``page_size``
        rows a request; with ``keys``, only rows that have all of them."""
        pages = self._history().scan_pages(keys, page_size, min_step, max_step, stream, after=after)
        async for page in pages:
            for row in page:
                yield row

    async def history_keys(
        self, stream: str = "default", *, after: int | PointReceipt | None = None
    ) -> list[str]:
        """The metric keys logged."""
        keys: list[str] = (await self._history().keys(stream, after=after))["keys"]
        return keys

    async def last_history_step(
        self, stream: str = "default", *, after: int | PointReceipt | None = None
    ) -> int | None:
        """The last step a row was logged at (None before the first)."""
        step: int | None = (await self._history().keys(stream, after=after))["last_step"]
        return step

    async def summary(
        self, stream: str = "default", *, after: int | PointReceipt | None = None
    ) -> dict[str, Any]:
        """Each metric key's latest logged value."""
        summary: dict[str, Any] = (await self._history().keys(stream, after=after))["summary"]
        return summary

    def follow_history(
        self,
        keys: Sequence[str] | None = None,
        stream: str = "default",
        *,
        resume: Position | None = None,
    ) -> Subscription[MetricRow]:
        """Every metric row from the first (or right after ``resume``), then each row as it
        is logged, live: ``async with task.follow_history() as rows: async for row in rows:``.

        Read from the points stream itself, so no row is missed or repeated between
        history and live rows, across NATS reconnects and projector restarts. Each
        ``MetricRow`` has a ``position``; pass it as ``resume=`` to a new tail to go on
        right after that row. A task's tail follows the attempt this ``Task`` shows
        (its latest when it was read). With ``keys``, only rows that have all of them
        (holding only those keys, as ``scan_history``). ``BadFilter`` for an unknown
        stream, keys that are not a list of names, or a ``resume`` that is not a position.
        """
        return self._history().follow(keys, stream, resume)

    async def system_metrics(self, *, after: int | PointReceipt | None = None) -> dict[str, Any]:
        """The latest system metrics sampled (``Settings.system_metrics_interval``)."""
        return await self.summary("system", after=after)
