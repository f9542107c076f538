"""REST reads under ``/api/v1``: the async client's read API, one route per read.

Every route goes through the gateway's ``Client`` (the query service, or the
log for ETags and history), so it answers what ``client.<read>`` answers.
Bodies are the query service's own view models (``RunView``, ``TaskView``,
...), serialised once from the model; the hottest reads (a run, a task, a
page of runs) pass the query service's bytes through (``_passthrough``).
Every read takes ``after`` (a write's receipt sequence: the read waits
until a replica has applied it) and ``namespace`` (a tag runs must carry;
absent: every run). The run, step and
task reads (and their steps, tasks, metadata and artifacts) take ``as_of``
instead: a sequence of the events stream or an aware ISO time, to read
them as they were then (``client.run(p, as_of=...)``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from runstate.client._as_of import AsOf, check_as_of
from runstate.client._client import Client, ListAfter
from runstate.client._data import DataArtifact, _record
from runstate.client._history import History
from runstate.client._objects import Run, Step, Task
from runstate.client.web._filters import RunsFilters
from runstate.client.web._passthrough import get_view, result_bytes, versioned
from runstate.engine._names import parse_pathspec
from runstate.engine._points import PointReceipt
from runstate.engine.errors import BadFilter, NotFound
from runstate.projections._protocol import (
    HistoryRequest,
    MetricHistoryRequest,
    MetricKeysRequest,
    MetricScanRequest,
    RunsRequest,
)
from runstate.projections._queries import FlowSummary, Page
from runstate.projections._views import ArtifactView, MetadataView, RunView, StepView, TaskView

__all__ = ["ObjectReply", "TaskMetadata", "client_of", "json_response", "router"]

router = APIRouter(prefix="/api/v1", tags=["reads"])

After = Annotated[
    int | None,
    Query(ge=0, description="A write's receipt sequence: answer once a replica has applied it."),
]
Attempt = Annotated[
    int | None, Query(ge=0, description="The task's attempt (default: the latest).")
]
AsOfQuery = Annotated[
    str | None,
    Query(
        description="Read it as it was at this sequence of the events stream (e.g. a write's "
        "receipt sequence) or this time (ISO 8601 with a timezone, e.g. "
        "2026-12-06T09:30:00Z). Not with after.",
    ),
]
AfterPoints = Annotated[
    int | None,
    Query(
        ge=1,
        description="A metrics flush's points receipt sequence: answer once a replica has "
        "applied those points (summaries include them). Not with after.",
    ),
]


def as_of_value(text: str | None, after: int | None = None) -> AsOf | None:
    """The ``as_of`` query parameter as the client takes it: a sequence or an aware time.

    ``BadFilter`` for anything else, or with ``after`` (as the client refuses both).
    """
    if text is None:
        return None
    value: object = text
    if text.strip().isdigit():
        value = int(text)
    else:
        try:
            value = datetime.fromisoformat(text.strip())
        except ValueError:
            raise BadFilter(
                f"as_of is a sequence of the events stream (such as 42) or an ISO 8601 time "
                f"with a timezone (such as 2026-12-06T09:30:00Z), not {text!r}"
            ) from None
    return check_as_of(value, after)


def list_after(after: int | None, after_points: int | None) -> ListAfter:
    """A list's ``after``: a write's sequence, or a points receipt's (``BadFilter`` for both)."""
    if after_points is None:
        return after
    if after is not None:
        raise BadFilter(
            "after waits for a write and after_points for a metrics flush: pass one of them "
            "(a points receipt comes after the writes before it)"
        )
    return PointReceipt(after_points, "", "")  # only its sequence is read


def client_of(request: Request) -> Client:
    """The gateway's client (set by ``create_app``)."""
    client: Client = request.app.state.client
    return client


def reader(request: Request, namespace: str | None = None) -> Client:
    """The gateway's client, reading in ``namespace`` (every namespace when absent)."""
    client = client_of(request)
    return client if namespace is None else client.with_namespace(namespace)


async def _reader(
    request: Request,
    namespace: Annotated[
        str | None, Query(description="Only runs carrying this tag, e.g. user:alice.")
    ] = None,
) -> Client:
    # A coroutine: FastAPI runs a plain function dependency in a worker thread.
    return reader(request, namespace)


Reader = Annotated[Client, Depends(_reader)]


def json_response(value: BaseModel | Any, *, headers: dict[str, str] | None = None) -> Response:
    """A JSON body serialised once (models by pydantic, the rest by orjson)."""
    if isinstance(value, BaseModel):
        body = value.model_dump_json().encode()
    else:
        body = orjson.dumps(value, default=_model_default)
    return Response(body, media_type="application/json", headers=headers)


def _model_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def etag(version: int) -> dict[str, str]:
    """The ETag of an entity at ``version`` (its last sequence), for ``If-Match`` on writes."""
    return {"ETag": f'"{version}"'}


class ObjectReply(BaseModel):
    """Any object by pathspec: its kind and its view."""

    kind: Literal["flow", "run", "step", "task", "artifact"]
    view: FlowSummary | RunView | StepView | TaskView | ArtifactView


class TaskMetadata(BaseModel):
    """A task's metadata: every entry recorded, and one attempt's entries by name.

    ``by_name`` is Metaflow's ``metadata_dict`` of the attempt (with the
    entries derived for every task: attempt, runtime, started_at, ...).
    """

    attempt: int
    entries: list[MetadataView]
    by_name: dict[str, str]


class HistoryPage(BaseModel):
    """A page of an object's events from the stream, and where the next page starts."""

    items: list[dict[str, Any]]
    next_start: int | None


# -- flows ------------------------------------------------------------------------


@router.get("/flows", response_model=list[FlowSummary], summary="Every flow with a run")
async def list_flows(client: Reader, after: After = None) -> Response:
    flows = await client.flows(after=after)
    return json_response([flow.info for flow in flows])


@router.get("/flows/{flow}", response_model=FlowSummary, summary="One flow")
async def get_flow(flow: str, client: Reader, after: After = None) -> Response:
    return json_response((await client.flow(flow, after=after)).info)


@router.get(
    "/flows/{flow}/latest-run",
    response_model=RunView,
    summary="The newest run of a flow (the newest successful one with successful=true)",
    responses={404: {"description": "The flow has no such run."}},
)
async def latest_run(
    flow: str, client: Reader, successful: bool = False, after: After = None
) -> Response:
    run = await client.latest_run(flow, successful=successful, after=after)
    if run is None:
        which = "successful run" if successful else "run"
        raise NotFound(f"flow {flow} has no {which} in this namespace")
    return json_response(run.view)


# -- runs -------------------------------------------------------------------------


@router.get("/runs", response_model=Page[RunView], summary="A page of runs, filtered and sorted")
async def list_runs(
    filters: RunsFilters,
    client: Reader,
    page_size: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the page before.")] = None,
    after: After = None,
    after_points: AfterPoints = None,
) -> Response:
    list_after(after, after_points)  # BadFilter for both
    query = filters.request(
        client, RunsRequest, limit=page_size, cursor=cursor, after=after, after_points=after_points
    )
    # The query service's page ({"items": [...], "next_cursor": ...}) is a Page[RunView].
    return _raw_json(result_bytes(await client._request(query, None)))


@router.get("/runs/{flow}/{run_id}", response_model=RunView, summary="One run (ETag: its version)")
async def get_run(
    flow: str, run_id: str, client: Reader, after: After = None, as_of: AsOfQuery = None
) -> Response:
    if as_of is not None:
        run = await _run(client, flow, run_id, after, as_of)
        return json_response(run.view)  # no ETag: a past version is not one to write after
    pathspec = str(parse_pathspec(f"{flow}/{run_id}", min_depth=2, max_depth=2))
    body, version = await versioned(
        client,
        client.subjects.run(flow, run_id),
        lambda: get_view(client, pathspec, "run", attempt=None, after=after),
    )
    return _raw_json(body, headers=etag(version))


@router.get("/runs/{flow}/{run_id}/steps", response_model=list[StepView], summary="A run's steps")
async def list_steps(
    flow: str, run_id: str, client: Reader, after: After = None, as_of: AsOfQuery = None
) -> Response:
    run = await _run(client, flow, run_id, after, as_of)
    return json_response([step.view for step in await run.steps()])


@router.get("/runs/{flow}/{run_id}/steps/{step}", response_model=StepView, summary="One step")
async def get_step(
    flow: str, run_id: str, step: str, client: Reader, after: After = None, as_of: AsOfQuery = None
) -> Response:
    return json_response((await _step(client, flow, run_id, step, after, as_of)).view)


async def _run(client: Client, flow: str, run_id: str, after: int | None, as_of: str | None) -> Run:
    moment = as_of_value(as_of, after)
    return await client.run(f"{flow}/{run_id}", after=after, as_of=moment)


async def _step(
    client: Client, flow: str, run_id: str, step: str, after: int | None, as_of: str | None
) -> Step:
    moment = as_of_value(as_of, after)
    return await client.step(f"{flow}/{run_id}/{step}", after=after, as_of=moment)


@router.get(
    "/runs/{flow}/{run_id}/steps/{step}/tasks",
    response_model=Page[TaskView],
    summary="A page of a step's tasks, in task order",
    description="With as_of, every task of the step as it was then, in one page.",
)
async def list_tasks(
    flow: str,
    run_id: str,
    step: str,
    client: Reader,
    state: Annotated[list[str], Query(description="Tasks in one of these states.")] = [],  # noqa: B006
    page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
    after: After = None,
    as_of: AsOfQuery = None,
) -> Response:
    if as_of is not None:
        past = await _step(client, flow, run_id, step, after, as_of)
        wanted = set(state)
        for name in wanted:
            await past.tasks(name)  # BadFilter for a state that is not one
        views = [t.view for t in await past.tasks() if not wanted or t.view.state in wanted]
        return json_response(Page[TaskView](items=views, next_cursor=None))
    page = await client.tasks(
        f"{flow}/{run_id}",
        step,
        state=state or None,
        page_size=page_size,
        cursor=cursor,
        after=after,
    )
    return json_response(
        Page[TaskView](items=[t.view for t in page.items], next_cursor=page.next_cursor)
    )


_TASK = "/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}"


async def _task(
    client: Client,
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    attempt: int | None,
    after: int | None,
    as_of: str | None = None,
) -> Task:
    moment = as_of_value(as_of, after)
    pathspec = f"{flow}/{run_id}/{step}/{task_id}"
    return await client.task(pathspec, attempt=attempt, after=after, as_of=moment)


@router.get(
    _TASK,
    response_model=TaskView,
    summary="One task, every attempt (ETag: its version)",
    description="With attempt, 404 unless the task has that attempt.",
)
async def get_task(
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    client: Reader,
    attempt: Attempt = None,
    after: After = None,
    as_of: AsOfQuery = None,
) -> Response:
    if as_of is not None:
        task = await _task(client, flow, run_id, step, task_id, attempt, after, as_of)
        return json_response(task.view)
    path = parse_pathspec(f"{flow}/{run_id}/{step}/{task_id}", min_depth=4, max_depth=4)
    body, version = await versioned(
        client,
        client.subjects.task(flow, run_id, step, task_id),
        lambda: get_view(client, str(path), "task", attempt=attempt, after=after),
    )
    return _raw_json(body, headers=etag(version))


@router.get(_TASK + "/metadata", response_model=TaskMetadata, summary="A task's metadata")
async def get_metadata(
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    client: Reader,
    attempt: Attempt = None,
    after: After = None,
    as_of: AsOfQuery = None,
) -> Response:
    task = await _task(client, flow, run_id, step, task_id, attempt, after, as_of)
    return json_response(
        TaskMetadata(attempt=task.attempt, entries=task.metadata, by_name=task.metadata_dict)
    )


@router.get(
    _TASK + "/artifacts",
    response_model=list[ArtifactView],
    summary="The artifacts of a task's attempt",
)
async def list_artifacts(
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    client: Reader,
    attempt: Attempt = None,
    after: After = None,
    as_of: AsOfQuery = None,
) -> Response:
    task = await _task(client, flow, run_id, step, task_id, attempt, after, as_of)
    return json_response([artifact.view for artifact in task.artifacts])


@router.get(_TASK + "/artifacts/{name}", response_model=ArtifactView, summary="One artifact")
async def get_artifact(
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    name: str,
    client: Reader,
    attempt: Attempt = None,
    after: After = None,
) -> Response:
    artifact = await client.artifact(
        f"{flow}/{run_id}/{step}/{task_id}/{name}", attempt=attempt, after=after
    )
    return json_response(artifact.view)


@router.get(
    _TASK + "/artifacts/{name}/value",
    summary="An artifact's value: JSON for a JSON value, else its bytes (never unpickled)",
    responses={
        200: {
            "content": {"application/json": {}, "application/octet-stream": {}},
            "description": "The value as JSON (codec json), or the encoded bytes (codec pickle).",
        }
    },
)
async def get_artifact_value(
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    name: str,
    client: Reader,
    attempt: Attempt = None,
    after: After = None,
) -> Response:
    artifact: DataArtifact = await client.artifact(
        f"{flow}/{run_id}/{step}/{task_id}/{name}", attempt=attempt, after=after
    )
    view = artifact.view
    # The encoded bytes as stored: a pickle is never loaded here, whoever asks.
    data = await client.writer.artifacts.load_bytes(_record(view))
    headers = {"X-Runstate-Codec": view.codec, "ETag": f'"{view.sha256}"'}
    media = "application/json" if view.codec == "json" else "application/octet-stream"
    return Response(data, media_type=media, headers=headers)


# -- any object, history, status ---------------------------------------------------


@router.get(
    "/objects/{pathspec:path}",
    response_model=ObjectReply,
    summary="Any object by pathspec: flow, run, step, task or artifact",
)
async def get_object(
    pathspec: str, client: Reader, attempt: Attempt = None, after: After = None
) -> Response:
    obj = await client.get(pathspec, attempt=attempt, after=after)
    kind = parse_pathspec(pathspec).kind
    view = obj.info if kind == "flow" else obj.view  # type: ignore[union-attr]
    return json_response({"kind": kind, "view": view})


@router.get(
    "/history/{pathspec:path}",
    response_model=HistoryPage,
    summary="A page of an object's events, oldest first (next page: start=next_start)",
)
async def get_history(
    pathspec: str,
    client: Reader,
    start: Annotated[int, Query(ge=1)] = 1,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Response:
    parse_pathspec(pathspec)
    query = client.query(HistoryRequest, pathspec=pathspec, start=start, limit=limit)
    # The query service's page, as it sent it: the events in their wire form.
    return Response(_result(await client._request(query, None)), media_type="application/json")


@router.get("/status", summary="The answering replica's progress")
async def get_status(client: Reader) -> dict[str, Any]:
    return await client.status()


_result = result_bytes


def _raw_json(body: bytes, headers: dict[str, str] | None = None) -> Response:
    """A JSON body already encoded (the query service's bytes)."""
    return Response(body, media_type="application/json", headers=headers)


# -- metrics ---------------------------------------------------------------------

Stream = Annotated[Literal["default", "system"], Query(description="default or system")]
_TAGGED = 'Values that are NaN or infinite come as {"$f": "nan"} (or inf, -inf).'


def _history(client: Client, pathspec: str, attempt: int | None) -> History:
    parse_pathspec(pathspec, min_depth=2, max_depth=4)
    return History(client, pathspec, attempt)


async def _metric_read(client: Client, model: type[BaseModel], body: dict[str, Any]) -> Response:
    query = client.query(model, **body)
    return Response(_result(await client._request(query, None)), media_type="application/json")


@router.get(
    "/metrics/{pathspec:path}/history",
    summary="Sampled metric rows of a run or task (W&B's history)",
    description=_TAGGED,
)
async def metric_history(
    pathspec: str,
    client: Reader,
    samples: Annotated[int, Query(ge=8, le=1_000_000)] = 500,
    keys: Annotated[list[str] | None, Query()] = None,
    x_axis: str = "_step",
    stream: Stream = "default",
    attempt: Attempt = None,
    after: After = None,
) -> Response:
    body = _history(client, pathspec, attempt)._body(stream, after)
    body.update(samples=samples, keys=keys, x_axis=x_axis)
    return await _metric_read(client, MetricHistoryRequest, body)


@router.get(
    "/metrics/{pathspec:path}/scan",
    summary="A page of every metric row in a step range (next page: start=next_start)",
    description=_TAGGED,
)
async def metric_scan(
    pathspec: str,
    client: Reader,
    keys: Annotated[list[str] | None, Query()] = None,
    page_size: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    min_step: int | None = None,
    max_step: int | None = None,
    start: int | None = None,
    stream: Stream = "default",
    attempt: Attempt = None,
    after: After = None,
) -> Response:
    body = _history(client, pathspec, attempt)._body(stream, after)
    body.update(keys=keys, page_size=page_size, min_step=min_step, max_step=max_step, start=start)
    return await _metric_read(client, MetricScanRequest, body)


@router.get(
    "/metrics/{pathspec:path}/keys",
    summary="The metric keys logged, the last step and each key's latest value (summary)",
    description=_TAGGED,
)
async def metric_keys(
    pathspec: str,
    client: Reader,
    stream: Stream = "default",
    attempt: Attempt = None,
    after: After = None,
) -> Response:
    body = _history(client, pathspec, attempt)._body(stream, after)
    return await _metric_read(client, MetricKeysRequest, body)
