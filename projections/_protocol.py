"""Requests and replies of the query service, shared by the service and the client.

Every request may carry ``after``: the stream sequence of a write (from its
receipt). The replica answers only once it has applied that sequence, so a
read after a write sees the write.

A reply is JSON: ``{"result": ...}`` on success; an error reply carries the
``Nats-Service-Error-Code`` header and a body of ``RunstateError.to_wire()``.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from runstate.engine._states import RunState, TaskState

__all__ = [
    "ENDPOINTS",
    "FlowsRequest",
    "GetRequest",
    "HistoryRequest",
    "LatestRequest",
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


class RunsRequest(_Request):
    flow: str | None = None
    tags_all: list[str] = Field(default_factory=list)
    tags_any: list[str] = Field(default_factory=list)
    state: list[RunState] = Field(default_factory=list)
    user: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    finished_after: datetime | None = None
    finished_before: datetime | None = None
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    namespace: str | None = None
    sort: str = "-created_at"
    limit: int = 50
    cursor: str | None = None


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


#: endpoint name -> request model; the subject is ``<prefix>.q.<name>``
ENDPOINTS: dict[str, type[_Request]] = {
    "get": GetRequest,
    "flows": FlowsRequest,
    "runs": RunsRequest,
    "latest": LatestRequest,
    "steps": StepsRequest,
    "tasks": TasksRequest,
    "history": HistoryRequest,
    "status": StatusRequest,
}
