"""The filters of the runs lists over HTTP: GET /runs and GET /runs-frame.

Both routes take the filters ``client.runs`` and ``client.runs_frame`` take,
as the same query parameters. They are declared once, as a model of query
parameters (``RunsFilter``), so the two routes cannot drift apart and OpenAPI
documents them alike; the model builds either route's request to the query
service.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel

from runstate.client._client import Client
from runstate.engine.errors import BadFilter
from runstate.projections._conditions import parse_condition
from runstate.projections._protocol import RunsRequest

__all__ = ["RunsFilter", "RunsFilters", "parameters_filter"]

_Runs = TypeVar("_Runs", bound=RunsRequest)

Where = Annotated[
    list[str],
    Query(
        description="Conditions on summary and config values, all of which must hold, as the "
        "client writes them: summary.acc > 0.9, config.lr <= 0.01 (operators = != < <= > >=, "
        "values JSON literals).",
    ),
]
Sort = Annotated[
    str,
    Query(
        description="created_at, finished_at, duration, run_number, summary.<key> or "
        "config.<key> (runs without that value last); - descends.",
    ),
]


class RunsFilter(BaseModel):
    """The filters of ``client.runs`` and ``client.runs_frame``, as query parameters."""

    flow: str | None = None
    tag: Annotated[list[str], Query(description="Runs carrying every one of these.")] = []
    any_tag: Annotated[list[str], Query(description="Runs carrying one of these.")] = []
    state: Annotated[list[str], Query(description="Runs in one of these states.")] = []
    user: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    finished_after: datetime | None = None
    finished_before: datetime | None = None
    parameters: Annotated[
        str | None, Query(description='A JSON object the parameters match, e.g. {"lr": 0.1}.')
    ] = None
    where: Where = []
    sort: Sort = "-created_at"

    def request(self, client: Client, request: type[_Runs], **fields: Any) -> _Runs:
        """The ``request`` (``RunsRequest``, ``RunsFrameRequest``) ``client`` sends for
        these filters, with ``fields`` (``after``, a page's ``limit``, ...) as well."""
        return client.query(
            request,
            flow=self.flow,
            tags_all=self.tag,
            tags_any=self.any_tag,
            state=self.state,
            user=self.user,
            created_after=self.created_after,
            created_before=self.created_before,
            finished_after=self.finished_after,
            finished_before=self.finished_before,
            parameters=parameters_filter(self.parameters) or {},
            where=[parse_condition(condition) for condition in self.where],
            namespace=client.namespace,
            sort=self.sort,
            **fields,
        )


#: the filters as a route's query parameters (FastAPI lists the model's fields in its place)
RunsFilters = Annotated[RunsFilter, Query()]


def parameters_filter(text: str | None) -> dict[str, Any] | None:
    """The ``parameters`` query parameter (a JSON object) as a dict; ``BadFilter`` for
    anything else."""
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise BadFilter(f'parameters must be a JSON object such as {{"lr": 0.1}}, not {text!r}')
    return value
