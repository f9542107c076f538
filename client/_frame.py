"""``Client.runs_frame``: every run a list selects, as one pandas DataFrame.

The query service answers with columns (``runstate.projections._frame``),
many thousand runs a reply; this joins the replies' columns and makes the
frame in one go, so exporting 10,000 runs is a few requests, not 10,000
object reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from runstate.client._history import _pandas
from runstate.engine._points import untag
from runstate.projections._frame import BASE_COLUMNS
from runstate.projections._protocol import RunsFrameRequest

if TYPE_CHECKING:
    from runstate.client._client import Client

__all__ = ["runs_frame"]

_TAG = b'{"$f":'


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
        for part, columns in self.keyed.items():
            for key, values in page[part].items():
                if tagged and part == "summary":
                    values = [untag(value) for value in values]
                column = columns.get(key)
                if column is None:
                    column = columns[key] = [None] * self.size
                column += values
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
    """The DataFrame of every run ``query`` selects (``Client.runs_frame``)."""
    pd = _pandas("runs_frame")  # before the first request: say what is missing
    columns = _Columns()
    while True:
        raw = await client._request(query, None)
        page = orjson.loads(raw)["result"]
        columns.add(page, _TAG in raw)
        cursor = page["next_cursor"]
        if cursor is None:
            return columns.frame(pd)
        # seen once, ``after`` stays seen
        query = query.model_copy(update={"cursor": cursor, "after": None, "after_points": None})
