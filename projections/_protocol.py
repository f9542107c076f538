"""Requests and replies of the query service, shared by the service and the client.

Every request may carry ``after``: the stream sequence of a write (from its
receipt). The replica answers only once it has applied that sequence, so a
read after a write sees the write.

A reply is JSON: ``{"result": ...}`` on success; an error reply carries the
``Nats-Service-Error-Code`` header and a body of ``RunstateError.to_wire()``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runstate.engine._states import TaskState
from runstate.projections._queries import RunQuery

__all__ = [
    "ENDPOINTS",
    "METRIC_ENDPOINTS",
    "FlowsRequest",
    "GetRequest",
    "HistoryRequest",
    "LatestRequest",
    "MetricHistoryRequest",
    "MetricKeysRequest",
    "MetricScanRequest",
    "MetricsRequest",
    "RunsFrameRequest",
    "RunsRequest",
    "StatusRequest",
    "StepsRequest",
    "TasksRequest",
]


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: wait until the replica has applied this stream sequence
    after: int | None = None
    #: seconds to wait for ``after``
    wait: float = Field(default=5.0, gt=0, le=60)


class GetRequest(_Request):
    """Any object by pathspec: a flow, run, step, task (``attempt=``) or artifact."""

    pathspec: str
    attempt: int | None = None
    namespace: str | None = None


class FlowsRequest(_Request):
    namespace: str | None = None


class RunsRequest(RunQuery):
    """A ``RunQuery`` (the same fields, checked the same way) sent to the query service.

    ``after_points``: a points sequence (a flush's receipt) to wait for as
    well, so that summary conditions and sorts see those points.
    """

    after: int | None = None
    after_points: int | None = None
    wait: float = Field(default=5.0, gt=0, le=60)


class RunsFrameRequest(RunsRequest):
    """Runs as columns (``runstate.projections._frame``), up to ``limit`` a reply (fewer
    when they would not fit in one)."""

    limit: int = Field(default=2_000, ge=1, le=100_000)


class LatestRequest(_Request):
    flow: str
    successful: bool = False
    namespace: str | None = None


class StepsRequest(_Request):
    run: str
    namespace: str | None = None


class TasksRequest(_Request):
    run: str
    step: str
    state: list[TaskState] = Field(default_factory=list)
    limit: int = 100
    cursor: str | None = None
    namespace: str | None = None


class HistoryRequest(_Request):
    """The events of an object, oldest first, read from the stream: ``limit`` commits a page."""

    pathspec: str
    start: int = 1
    limit: int = Field(default=100, ge=1, le=10_000)


class StatusRequest(_Request):
    pass


class MetricsRequest(_Request):
    """Metric reads of a run or task (``after`` is a points sequence: a flush's receipt).

    ``attempt``: a task's attempt (default: the latest that logged metrics).
    """

    pathspec: str
    attempt: int | None = Field(default=None, ge=0)
    stream: Literal["default", "system"] = "default"


class MetricKeysRequest(MetricsRequest):
    """The keys logged, the last step and the summary."""


class MetricHistoryRequest(MetricsRequest):
    """Sampled history (``runstate.projections._sampling``)."""

    samples: int = Field(default=500, ge=8, le=1_000_000)
    keys: list[str] | None = None
    x_axis: str = "_step"


class MetricScanRequest(MetricsRequest):
    """Every row in a step range, a page at a time from ``start``."""

    keys: list[str] | None = None
    page_size: int = Field(default=1000, ge=1, le=100_000)
    min_step: int | None = None
    max_step: int | None = None
    start: int | None = None


#: endpoint name -> request model; the subject is ``<prefix>.q.<name>``
ENDPOINTS: dict[str, type[_Request] | type[RunsRequest]] = {
    "get": GetRequest,
    "flows": FlowsRequest,
    "runs": RunsRequest,
    "runs_frame": RunsFrameRequest,
    "latest": LatestRequest,
    "steps": StepsRequest,
    "tasks": TasksRequest,
    "history": HistoryRequest,
    "status": StatusRequest,
    "metric_keys": MetricKeysRequest,
    "metric_history": MetricHistoryRequest,
    "metric_scan": MetricScanRequest,
}

#: the endpoints answered from the metrics store, whose ``after`` is a points sequence
METRIC_ENDPOINTS = frozenset({"metric_keys", "metric_history", "metric_scan"})
