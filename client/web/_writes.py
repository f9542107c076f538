"""REST writes for workers that are not Python: runs, tasks, transitions, tags, data.

Each write goes through the engine's ``Writer`` (the same checks and the same
events as the Python worker API) and answers its receipt: ``sequence`` in the
body and the ``X-Runstate-Sequence`` header, to pass as ``after`` to the next
read, and the entity's ``version`` (also the ``ETag``).

Transitions use optimistic concurrency in HTTP's terms: ``If-Match`` carries
the version a read's ``ETag`` gave (``*``: whatever it is now). It is
required (428 without it); a stale one is 412 with ``current_version``.
Tags, metadata and artifacts commute, so they need no ``If-Match``. The
gateway keeps the handles of what it wrote last (``_kept``), so a worker's
next transition naming the version it was given costs one append.
Creating a run honours ``Idempotency-Key`` as the IETF draft describes.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from datetime import datetime
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from starlette.datastructures import State

from runstate.client._client import Client
from runstate.client.web._problems import Problem
from runstate.client.web._reads import client_of
from runstate.engine._events import ExceptionInfo, RunCreated, decode_commit
from runstate.engine._handles import RunHandle, TaskHandle
from runstate.engine._names import parse_pathspec
from runstate.engine._states import RunState, TaskState
from runstate.engine.errors import ConflictError, IdempotencyKeyReused, InvalidEvent

__all__ = [
    "CreateRun",
    "CreateTask",
    "RecordArtifacts",
    "RecordMetadata",
    "RunTransition",
    "TagChange",
    "TaskTransition",
    "UpdateRun",
    "Written",
    "WrittenParts",
    "move_run",
    "move_task",
    "router",
    "written_parts",
    "written_response",
]

router = APIRouter(prefix="/api/v1", tags=["writes"])

IfMatch = Annotated[
    str | None,
    Header(description='The version a read\'s ETag gave, e.g. "41"; * for whatever it is now.'),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateRun(_Body):
    """A new run of ``flow`` (the next integer id unless ``run_id`` is given)."""

    flow: str
    run_id: str | None = None
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    user: str | None = None
    scheduled_at: datetime | None = None
    script_name: str | None = None
    state: RunState = RunState.PENDING


class RunTransition(_Body):
    state: RunState
    label: str | None = None
    message: str | None = None
    #: required to go back to running from failed, crashed or cancelled
    resume: bool = False


class TagChange(_Body):
    """Tags to add and remove, or (``replace``) the user tags to have exactly."""

    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)
    replace: list[str] | None = None


class UpdateRun(_Body):
    """Edits of a run, in any state: a field left out stays as it is.

    ``name`` and ``notes``: its display name and notes (null clears them);
    ``config`` and ``summary``: values to add or change (a summary value
    overrides the latest logged value of its key).
    """

    name: str | None = None
    notes: str | None = None
    config: dict[str, JsonValue] | None = None
    summary: dict[str, JsonValue] | None = None


class CreateTask(_Body):
    """A new task of ``step`` (pending, or running with ``start``)."""

    step: str
    task_id: str | None = None
    index: int | None = None
    parents: list[str] = Field(default_factory=list)
    runtime_name: str | None = None
    environment_info: dict[str, JsonValue] = Field(default_factory=dict)
    start: bool = False


class TaskTransition(_Body):
    """Move an attempt (default: the current one; the next one to retry) to ``state``."""

    state: TaskState
    attempt: int | None = Field(default=None, ge=0)
    label: str | None = None
    message: str | None = None
    exception: ExceptionInfo | None = None


class RecordMetadata(_Body):
    """Metadata of the task's current attempt, by name (values: any JSON)."""

    entries: dict[str, JsonValue] = Field(min_length=1)


class RecordArtifacts(_Body):
    """JSON artifacts of the task's current attempt, by name."""

    artifacts: dict[str, JsonValue] = Field(min_length=1)


class Written(BaseModel):
    """What a write did: the entity, its state and version now, and the receipt's sequence."""

    pathspec: str
    state: str | None = None
    attempt: int | None = None
    #: the entity's version now: send it as If-Match on its next transition
    version: int
    #: the receipt's stream sequence: pass it as ``after`` to read this write
    sequence: int


#: a write's answer: its status, its JSON body and its headers (names in lower case)
WrittenParts = tuple[int, bytes, list[tuple[bytes, bytes]]]


def written_parts(
    handle: RunHandle | TaskHandle, sequence: int, status: int = 200, location: str | None = None
) -> WrittenParts:
    """``Written``'s fields, in its order, encoded directly (every write answers this),
    with the headers ``Response`` would send, in its order."""
    body = orjson.dumps(
        {
            "pathspec": handle.pathspec,
            "state": handle.state.value,
            "attempt": handle.attempt if isinstance(handle, TaskHandle) else None,
            "version": handle.version,
            "sequence": sequence,
        }
    )
    headers = [(b"etag", b'"%d"' % handle.version), (b"x-runstate-sequence", b"%d" % sequence)]
    if location is not None:
        headers.append((b"location", location.encode("latin-1")))
    headers += [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
    return status, body, headers


def written_response(parts: WrittenParts) -> Response:
    status, body, headers = parts
    response = Response(status_code=status)
    response.body = body
    response.raw_headers = headers
    return response


def _written(
    handle: RunHandle | TaskHandle, sequence: int, status: int = 200, location: str | None = None
) -> Response:
    return written_response(written_parts(handle, sequence, status, location))


def _versions(if_match: str | None, *, required: bool, what: str) -> set[int] | None:
    """The versions ``If-Match`` accepts (None: any); 428 when required and missing."""
    if if_match is None:
        if required:
            raise Problem(
                428,
                "precondition_required",
                "Precondition required",
                f"{what} needs If-Match with the version its read's ETag gave (or * for any "
                "version), so that it cannot overwrite a change it has not seen",
            )
        return None
    if if_match.strip() == "*":
        return None
    versions = set()
    for part in if_match.split(","):
        tag = part.strip().removeprefix("W/").strip('"')
        if not tag.isdigit():
            raise Problem(
                400,
                "bad_if_match",
                "Bad If-Match",
                f'If-Match holds versions such as "41" (an ETag of a read), not {part.strip()!r}',
            )
        versions.add(int(tag))
    return versions


def _check_version(handle: RunHandle | TaskHandle, versions: set[int] | None) -> None:
    """412 unless the entity is at one of ``versions``; then appends expect that version."""
    if versions is not None and handle.version not in versions:
        raise _stale(handle.pathspec, handle.version)


#: handles kept by the gateway after its writes (by pathspec), the oldest dropped first
_HANDLES_KEPT = 10_000

_H = TypeVar("_H", RunHandle, TaskHandle)


def _kept(state: State, pathspec: str, versions: set[int] | None) -> Any:
    """A copy of the handle this gateway kept of ``pathspec``, if it is at one of
    ``versions``; else None (load it from the log).

    An entity's state at a version never changes, so a handle kept at the
    version ``If-Match`` names is as good as one read from the log: the
    append still expects that version, and a writer that came in between
    makes it a 412. Each request gets its own copy, so two requests naming
    one version cannot both succeed.
    """
    if versions is None:
        return None
    handles: OrderedDict[str, RunHandle | TaskHandle] = state.handles
    handle = handles.get(pathspec)
    if handle is None or handle.version not in versions:
        return None
    return copy.copy(handle)


def _keep(state: State, handle: _H) -> _H:
    handles: OrderedDict[str, RunHandle | TaskHandle] = state.handles
    handles[handle.pathspec] = handle
    handles.move_to_end(handle.pathspec)
    if len(handles) > _HANDLES_KEPT:
        handles.popitem(last=False)
    return handle


def _forget(state: State, pathspec: str) -> None:
    state.handles.pop(pathspec, None)


def _stale(pathspec: str, current: int) -> Problem:
    return Problem(
        412,
        "conflict",
        "Precondition failed",
        f"{pathspec} is at version {current}, not the one If-Match names: another writer "
        "changed it; read it again and decide again",
        current_version=current,
    )


# -- runs -------------------------------------------------------------------------


@router.post(
    "/runs",
    response_model=Written,
    status_code=201,
    summary="Create a run (Idempotency-Key: create it once, whoever retries)",
    responses={422: {"description": "The Idempotency-Key was used with another request."}},
)
async def create_run(
    body: CreateRun,
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(description="Repeating the request with this key returns the same run."),
    ] = None,
) -> Response:
    client = client_of(request)
    if idempotency_key is not None:
        await _check_same_body(client, idempotency_key, body)
    handle = await client.create_run(
        body.flow,
        run_id=body.run_id,
        parameters=body.parameters,
        tags=body.tags,
        user=body.user,
        idempotency_key=idempotency_key,
        scheduled_at=body.scheduled_at,
        script_name=body.script_name,
        state=body.state,
    )
    sequence = handle.receipt.sequence if handle.receipt is not None else handle.version
    location = f"/api/v1/runs/{handle.pathspec}"
    return _written(handle, sequence, 201, location)


async def _check_same_body(client: Client, key: str, body: CreateRun) -> None:
    """``IdempotencyKeyReused`` when ``key`` created a run from a request unlike ``body``.

    The writer compares the run id and parameters; a request is more than
    those, and the draft asks that any other payload with the key be refused.
    """
    # The writer's create-once claim: the creation event, under the flow and the key.
    stored = await client.log.read_key(f"{body.flow}\0{key}")
    if stored is None:
        return
    created = decode_commit(stored)[0]
    assert isinstance(created, RunCreated)
    first = created.payload
    differing = [
        name
        for name, before, now in (
            ("tags", sorted(first.tags), sorted(body.tags)),
            ("script_name", first.script_name, body.script_name),
            ("scheduled_at", first.scheduled_at, body.scheduled_at),
            ("state", first.state, body.state),
            ("user", first.user, body.user or client.writer.user),
        )
        if before != now
    ]
    if differing:
        raise IdempotencyKeyReused(
            f"idempotency key {key!r} created {created.pathspec} with other values: "
            f"{', '.join(differing)} differ. A key stands for one request: use a new key "
            "for a new request, or repeat the first one unchanged",
            key=key,
            run=created.pathspec,
        )


def _run_pathspec(flow: str, run_id: str) -> str:
    return str(parse_pathspec(f"{flow}/{run_id}", min_depth=2, max_depth=2))


@router.post(
    "/runs/{flow}/{run_id}/transitions",
    response_model=Written,
    summary="Move a run to a state (If-Match: its version)",
    responses={
        409: {"description": "The state machine does not allow it."},
        412: {"description": "The run changed since that version (current_version)."},
        428: {"description": "If-Match is missing."},
    },
)
async def transition_run(
    flow: str, run_id: str, body: RunTransition, request: Request, if_match: IfMatch = None
) -> Response:
    return written_response(await move_run(request.app.state, (flow, run_id), body, if_match))


async def move_run(
    state: State, parts: tuple[str, ...], body: RunTransition, if_match: str | None
) -> WrittenParts:
    """The run transition of the route above, ``parts`` its path's flow and run id (also
    answered by ``_direct``)."""
    versions = _versions(if_match, required=True, what="a transition")
    pathspec = _run_pathspec(*parts)
    handle: RunHandle | None = _kept(state, pathspec, versions)
    if handle is None:
        handle = await state.client.run_handle(pathspec)
        _check_version(handle, versions)
    try:
        receipt = await handle.transition(
            body.state, label=body.label, message=body.message, resume=body.resume
        )
    except ConflictError as exc:
        _forget(state, pathspec)
        raise _stale(handle.pathspec, exc.current_version) from None
    return written_parts(_keep(state, handle), receipt.sequence)


@router.post(
    "/runs/{flow}/{run_id}/tags",
    response_model=Written,
    summary="Add, remove or replace a run's user tags (they commute: no If-Match)",
)
async def change_tags(flow: str, run_id: str, body: TagChange, request: Request) -> Response:
    handle = await client_of(request).run_handle(_run_pathspec(flow, run_id))
    if body.replace is not None:
        if body.add or body.remove:
            raise InvalidEvent("replace sets the tags exactly: send it without add or remove")
        receipt = await handle.replace_tags(body.replace)
    elif body.add and body.remove:
        await handle.add_tags(*body.add)
        receipt = await handle.remove_tags(*body.remove)
    elif body.add:
        receipt = await handle.add_tags(*body.add)
    elif body.remove:
        receipt = await handle.remove_tags(*body.remove)
    else:
        raise InvalidEvent("a tag change needs add, remove or replace")
    return _written(handle, receipt.sequence)


@router.patch(
    "/runs/{flow}/{run_id}",
    response_model=Written,
    summary="Edit a run's name, notes, config or summary (edits commute: no If-Match)",
)
async def update_run(flow: str, run_id: str, body: UpdateRun, request: Request) -> Response:
    # As client.update_run, through the run's handle so that the answer has its version.
    edits: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set}
    if not edits:
        raise InvalidEvent("an edit of a run needs one of name, notes, config or summary")
    handle = await client_of(request).run_handle(_run_pathspec(flow, run_id))
    receipt = await handle.update(**edits)
    return _written(_keep(request.app.state, handle), receipt.sequence)


@router.post(
    "/runs/{flow}/{run_id}/heartbeat",
    status_code=204,
    summary="Record that a run is alive (the latest beat only: no sequence)",
)
async def heartbeat_run(flow: str, run_id: str, request: Request) -> Response:
    await client_of(request).writer.heartbeat(_run_pathspec(flow, run_id))
    return Response(status_code=204)


# -- tasks ------------------------------------------------------------------------


@router.post(
    "/runs/{flow}/{run_id}/tasks",
    response_model=Written,
    status_code=201,
    summary="Create a task of a step (the run's next integer id unless task_id is given)",
)
async def create_task(flow: str, run_id: str, body: CreateTask, request: Request) -> Response:
    run = await client_of(request).run_handle(_run_pathspec(flow, run_id))
    task = await run.create_task(
        body.step,
        body.task_id,
        index=body.index,
        parents=body.parents,
        runtime_name=body.runtime_name,
        environment_info=body.environment_info,
        start=body.start,
    )
    assert task.receipt is not None
    _keep(request.app.state, task)
    location = f"/api/v1/runs/{flow}/{run_id}/steps/{task.step}/tasks/{task.id}"
    return _written(task, task.receipt.sequence, 201, location)


_TASK = "/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}"


async def _task_handle(
    request: Request, flow: str, run_id: str, step: str, task_id: str
) -> TaskHandle:
    path = parse_pathspec(f"{flow}/{run_id}/{step}/{task_id}", min_depth=4, max_depth=4)
    return await client_of(request).writer.task(str(path))


@router.post(
    _TASK + "/transitions",
    response_model=Written,
    summary="Move a task's attempt to a state (If-Match: its version)",
    responses={
        409: {"description": "The state machine does not allow it."},
        412: {"description": "The task changed since that version (current_version)."},
        428: {"description": "If-Match is missing."},
    },
)
async def transition_task(
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    body: TaskTransition,
    request: Request,
    if_match: IfMatch = None,
) -> Response:
    parts = (flow, run_id, step, task_id)
    return written_response(await move_task(request.app.state, parts, body, if_match))


async def move_task(
    state: State, parts: tuple[str, ...], body: TaskTransition, if_match: str | None
) -> WrittenParts:
    """The task transition of the route above, ``parts`` its path's flow, run id, step
    and task id (also answered by ``_direct``)."""
    versions = _versions(if_match, required=True, what="a transition")
    pathspec = str(parse_pathspec("/".join(parts), min_depth=4, max_depth=4))
    handle: TaskHandle | None = _kept(state, pathspec, versions)
    if handle is None:
        handle = await state.client.writer.task(pathspec)
        _check_version(handle, versions)
    try:
        receipt = await handle.transition(
            body.state,
            attempt=body.attempt,
            label=body.label,
            message=body.message,
            exception=body.exception,
        )
    except ConflictError as exc:
        _forget(state, pathspec)
        raise _stale(handle.pathspec, exc.current_version) from None
    return written_parts(_keep(state, handle), receipt.sequence)


@router.post(
    _TASK + "/metadata",
    response_model=Written,
    summary="Record metadata of the task's current attempt",
)
async def record_metadata(
    flow: str, run_id: str, step: str, task_id: str, body: RecordMetadata, request: Request
) -> Response:
    handle = await _task_handle(request, flow, run_id, step, task_id)
    receipt = await handle.record_metadata(**body.entries)
    return _written(handle, receipt.sequence)


@router.post(
    _TASK + "/artifacts",
    response_model=Written,
    summary="Record JSON artifacts of the task's current attempt",
)
async def record_artifacts(
    flow: str, run_id: str, step: str, task_id: str, body: RecordArtifacts, request: Request
) -> Response:
    handle = await _task_handle(request, flow, run_id, step, task_id)
    receipt = await handle.save(**body.artifacts)
    return _written(handle, receipt.sequence)


@router.post(
    _TASK + "/heartbeat",
    status_code=204,
    summary="Record that a task is alive (the latest beat only: no sequence)",
)
async def heartbeat_task(
    flow: str, run_id: str, step: str, task_id: str, request: Request
) -> Response:
    path = parse_pathspec(f"{flow}/{run_id}/{step}/{task_id}", min_depth=4, max_depth=4)
    await client_of(request).writer.heartbeat(str(path))
    return Response(status_code=204)
