"""The query service: a NATS micro service answering reads from this replica's store.

All replicas join one queue group, so any of them answers and any one can
die. The service answers ``$SRV.PING/INFO/STATS`` like every micro service.
Errors come back as typed error replies (``RunstateError.to_wire()``), never
as a traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import orjson
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import BaseModel, ValidationError

from runstate.engine._logging import get_logger
from runstate.engine._names import parse_pathspec
from runstate.engine._typing import EventLog
from runstate.engine.errors import (
    BadFilter,
    InvalidEvent,
    NotFound,
    NotInNamespace,
    RunstateError,
    Unavailable,
)
from runstate.projections._history import history_rows, keys_reply, scan_page
from runstate.projections._metrics_projector import MetricsProjector
from runstate.projections._metrics_store import MetricsStore
from runstate.projections._projector import Projector
from runstate.projections._protocol import (
    ENDPOINTS,
    METRIC_ENDPOINTS,
    FlowsRequest,
    GetRequest,
    HistoryRequest,
    LatestRequest,
    MetricHistoryRequest,
    MetricKeysRequest,
    MetricScanRequest,
    MetricsRequest,
    RunsFrameRequest,
    RunsRequest,
    StatusRequest,
    StepsRequest,
    TasksRequest,
)
from runstate.projections._queries import TaskQuery
from runstate.projections._views import StepView

__all__ = ["QueryService"]

log = get_logger("runstate.query")

VERSION = "0.1.0"

#: the subjects the service answers on: clients' inboxes (nats-py's default prefix), and
#: the replies nats-server maps a request crossing accounts to (a server still running the
#: block of an earlier ``runstate auth init``, which imported the queries into the clients'
#: account): the server takes those back to the asker's own reply subject, in the asker's
#: account, and passes them no further (not into a stream through another import)
REPLY_PREFIXES = ("_INBOX.", "_R_.")

Handler = Callable[[Any], Awaitable[bytes]]


def _result(raw_json: bytes) -> bytes:
    return b'{"result":' + raw_json + b"}"


def _dump(value: Any) -> bytes:
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode()
    return orjson.dumps(value, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


class QueryService:
    """Answers the endpoints of ``runstate.projections._protocol`` from a projector's store."""

    def __init__(
        self,
        projector: Projector,
        log: EventLog,
        *,
        nc: NATS | None = None,
        metrics: MetricsProjector | None = None,
        also_on: Sequence[NATS] = (),
    ) -> None:
        self._nc = nc
        #: further connections it serves on: the projector's user in the clients' account
        self._also_on = tuple(also_on)
        self._projector = projector
        self._metrics = metrics
        self._store = projector.store
        if metrics is not None:
            # summary conditions, sorts and frames read the logged values there
            self._store.attach_metrics(metrics.store.uri)
        self._log = log
        self._handlers: dict[str, Handler] = {
            "get": self._get,
            "flows": self._flows,
            "runs": self._runs,
            "runs_frame": self._runs_frame,
            "latest": self._latest,
            "steps": self._steps,
            "tasks": self._tasks,
            "history": self._history,
            "status": self._status,
            "metric_keys": self._metric_keys,
            "metric_history": self._metric_history,
            "metric_scan": self._metric_scan,
        }
        self._task_group: anyio.abc.TaskGroup | None = None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve over NATS until cancelled: on its connection and on each of ``also_on``
        (one micro service each, in the same queue group; a query is answered on the
        connection it came in on, in the account it was asked in)."""
        if self._nc is None:
            raise RuntimeError("this query service has no NATS connection to serve on")
        services: list[Service] = []
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                for nc in (self._nc, *self._also_on):
                    services.append(await self._add_service(nc))
                task_status.started()
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                for service in services:
                    await service.stop()

    async def _add_service(self, nc: NATS) -> Service:
        subjects = self._log.subjects
        service = await add_service(
            nc,
            name=subjects.service_name,
            version=VERSION,
            description="runstate queries over the projected views",
            queue_group=subjects.service_name,
        )
        group = service.add_group(name=subjects.query_prefix)
        for name in ENDPOINTS:
            await group.add_endpoint(name=name, handler=self._endpoint(name))
        return service

    def _parse(self, endpoint: str, data: bytes) -> Any:
        """The request model of ``endpoint``; ``BadFilter`` when ``data`` is not one."""
        model = ENDPOINTS.get(endpoint)
        if model is None:
            raise BadFilter(f"no query endpoint {endpoint!r}; there are {', '.join(ENDPOINTS)}")
        try:
            return model.model_validate_json(data or b"{}")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "request"
            raise BadFilter(f"bad {endpoint} request: {where}: {first['msg']}") from None

    async def _reply(self, endpoint: str, parsed: Any) -> bytes:
        """The reply to a parsed request, once ``after`` is applied; typed errors only."""
        try:
            if parsed.after is not None:
                await self._follower(endpoint).wait_for(parsed.after, parsed.wait)
            if getattr(parsed, "after_points", None) is not None:
                await self._metrics_projector().wait_for(parsed.after_points, parsed.wait)
            return await self._handlers[endpoint](parsed)
        except RunstateError:
            raise
        except Exception as exc:  # a bug: say so, without a traceback on the wire
            log.exception("query.failed", endpoint=endpoint)
            raise RunstateError(f"internal error: {type(exc).__name__}: {exc}") from None

    async def answer(self, endpoint: str, data: bytes) -> bytes:
        """Answer one request in this process (``{"result": ...}``); raises its typed error."""
        return await self._reply(endpoint, self._parse(endpoint, data))

    def _endpoint(self, name: str) -> Callable[[Request], Awaitable[None]]:
        async def handle(request: Request) -> None:
            reply = request._msg.reply
            if not reply.startswith(REPLY_PREFIXES):
                # An answer goes to the asker's inbox only: a reply subject on the events
                # stream or a key-value bucket would let a reader write there through us.
                log.warning("query.reply_refused", endpoint=name, reply=reply[:200])
                return
            try:
                parsed = self._parse(name, request.data)
            except RunstateError as exc:  # includes a query model that checks itself
                await self._error(request, exc)
                return
            after = parsed.after
            points = getattr(parsed, "after_points", None)
            if (after is not None and self._follower(name).applied < after) or (
                points is not None and (self._metrics is None or self._metrics.applied < points)
            ):
                assert self._task_group is not None
                self._task_group.start_soon(self._respond, request, name, parsed)
                return
            await self._respond(request, name, parsed)

        return handle

    def _follower(self, endpoint: str) -> Projector | MetricsProjector:
        """The projector whose sequence an endpoint's ``after`` counts in."""
        if endpoint in METRIC_ENDPOINTS:
            return self._metrics_projector()
        return self._projector

    def _metrics_projector(self) -> MetricsProjector:
        if self._metrics is None:
            raise Unavailable("this replica does not project metrics")
        return self._metrics

    async def _respond(self, request: Request, endpoint: str, parsed: Any) -> None:
        try:
            body = await self._reply(endpoint, parsed)
        except RunstateError as exc:
            await self._error(request, exc)
            return
        await request.respond(body)

    async def _error(self, request: Request, error: RunstateError) -> None:
        await request.respond_error(
            error.code, error.message[:200], data=orjson.dumps(error.to_wire(), default=str)
        )

    # -- endpoints -------------------------------------------------------------

    def _check_namespace(self, run_pathspec: str, namespace: str | None) -> None:
        if namespace is not None and not self._store.run_in_namespace(run_pathspec, namespace):
            raise NotInNamespace(
                f"{run_pathspec} is not in namespace {namespace!r}; "
                "use namespace(None) to see every run"
            )

    async def _get(self, req: GetRequest) -> bytes:
        path = parse_pathspec(req.pathspec)
        if path.run is None:
            flow = self._store.get_flow(path.flow, req.namespace)
            if flow is None:
                if req.namespace is not None and self._store.get_flow(path.flow) is not None:
                    raise NotInNamespace(
                        f"flow {path.flow} has no runs in namespace {req.namespace!r}; "
                        "use namespace(None) to see every run"
                    )
                raise NotFound(f"flow {path.flow} has no runs")
            return _result(b'{"kind":"flow","view":' + _dump(flow) + b"}")
        run_pathspec = path.run_pathspec
        if path.step is None:
            raw = self._store.get_run_json(run_pathspec)
            if raw is None:
                raise NotFound(f"run {run_pathspec} does not exist")
            self._check_namespace(run_pathspec, req.namespace)
            return _result(b'{"kind":"run","view":' + raw + b"}")
        if path.task is None:
            step = self._store.get_step(run_pathspec, path.step)
            if step is None:
                raise NotFound(f"step {path} does not exist")
            self._check_namespace(run_pathspec, req.namespace)
            return _result(b'{"kind":"step","view":' + _dump(step) + b"}")
        task_pathspec = path.task_pathspec
        if path.artifact is None and req.attempt is None:
            raw = self._store.get_task_json(task_pathspec)
            if raw is None:
                raise NotFound(f"task {task_pathspec} does not exist")
            self._check_namespace(run_pathspec, req.namespace)
            return _result(b'{"kind":"task","view":' + raw + b"}")
        task = self._store.get_task(task_pathspec)
        if task is None:
            raise NotFound(f"task {task_pathspec} does not exist")
        self._check_namespace(run_pathspec, req.namespace)
        if req.attempt is not None and task.attempt_view(req.attempt) is None:
            raise NotFound(
                f"task {task_pathspec} has no attempt {req.attempt} (attempts: 0..{task.attempt})"
            )
        if path.artifact is None:
            return _result(b'{"kind":"task","view":' + _dump(task) + b"}")
        artifacts = task.artifacts_of(req.attempt)
        artifact = artifacts.get(path.artifact)
        if artifact is None:
            raise NotFound(
                f"task {task_pathspec} has no artifact {path.artifact!r}"
                + (f"; it has {sorted(artifacts)}" if artifacts else "")
            )
        return _result(b'{"kind":"artifact","view":' + _dump(artifact) + b"}")

    async def _flows(self, req: FlowsRequest) -> bytes:
        flows = self._store.list_flows(req.namespace)
        return _result(b"[" + b",".join(_dump(f) for f in flows) + b"]")

    async def _runs(self, req: RunsRequest) -> bytes:
        items, cursor = self._store.list_runs_json(req)
        return _page(items, cursor)

    async def _runs_frame(self, req: RunsFrameRequest) -> bytes:
        return _result(self._store.runs_frame_json(req, self._reply_limit()))

    async def _latest(self, req: LatestRequest) -> bytes:
        view = self._store.latest_run(req.flow, successful=req.successful, namespace=req.namespace)
        if view is None:
            what = "successful run" if req.successful else "run"
            raise NotFound(f"flow {req.flow} has no {what}" + _ns(req.namespace))
        return _result(_dump(view))

    async def _steps(self, req: StepsRequest) -> bytes:
        path = parse_pathspec(req.run, min_depth=2, max_depth=2)
        if self._store.get_run_json(str(path)) is None:
            raise NotFound(f"run {path} does not exist")
        self._check_namespace(str(path), req.namespace)
        steps: list[StepView] = self._store.list_steps(str(path))
        return _result(b"[" + b",".join(_dump(s) for s in steps) + b"]")

    async def _tasks(self, req: TasksRequest) -> bytes:
        path = parse_pathspec(req.run, min_depth=2, max_depth=2)
        self._check_namespace(str(path), req.namespace)
        query = TaskQuery(  # raises BadFilter itself
            run=str(path), step=req.step, state=req.state, limit=req.limit, cursor=req.cursor
        )
        items, cursor = self._store.list_tasks_json(query)
        if not items and req.cursor is None and self._store.get_step(str(path), req.step) is None:
            raise NotFound(f"step {path}/{req.step} does not exist")
        return _page(items, cursor)

    async def _history(self, req: HistoryRequest) -> bytes:
        path = parse_pathspec(req.pathspec, min_depth=1, max_depth=4)
        subject = self._log.subjects.for_pathspec(path)
        items: list[bytes] = []
        last = req.start - 1
        commits = 0
        try:
            async for commit in self._log.read(subject, start=req.start, limit=req.limit):
                last = commit.sequence
                commits += 1
                for index, event in enumerate(commit.events):
                    items.append(
                        b'{"sequence":%d,"index":%d,"subject":%s,"event":%s}'
                        % (
                            commit.sequence,
                            index,
                            orjson.dumps(commit.subject),
                            event.model_dump_json().encode(),
                        )
                    )
        except InvalidEvent as exc:
            raise InvalidEvent(f"{exc.message}; see the dead letters for it") from None
        # A full page may have more after it; a short one reached the end of the log.
        next_start = last + 1 if commits == req.limit else None
        return _result(
            b'{"items":['
            + b",".join(items)
            + b'],"next_start":'
            + (str(next_start).encode() if next_start else b"null")
            + b"}"
        )

    async def _status(self, req: StatusRequest) -> bytes:
        return _result(
            orjson.dumps(
                {
                    "applied": self._projector.applied,
                    "events_applied": self._projector.events_applied,
                    "deadlettered": self._projector.deadlettered,
                    "name": self._projector.name,
                }
            )
        )

    # -- metrics (runstate.projections._history) ----------------------------------

    def _metrics_target(self, req: MetricsRequest) -> tuple[MetricsStore, str, int | None]:
        """The store, entity and attempt a metric read is about; ``NotFound`` for neither
        a run nor a task that exists."""
        store = self._metrics_projector().store
        path = parse_pathspec(req.pathspec, min_depth=2, max_depth=4)
        if path.step is None:
            if self._store.get_run_json(str(path)) is None:
                raise NotFound(f"run {path} does not exist")
            return store, str(path), None
        if path.task is None:
            raise BadFilter(f"metrics belong to a run or a task, not to step {path}")
        if self._store.get_task_json(str(path)) is None:
            raise NotFound(f"task {path} does not exist")
        if req.attempt is not None:
            return store, str(path), req.attempt
        attempts = store.attempts(str(path))
        return store, str(path), attempts[-1] if attempts else 0

    def _reply_limit(self) -> int:
        """The bytes of rows a reply may carry: NATS's message limit, less room around them."""
        return (self._nc.max_payload if self._nc is not None else 1024 * 1024) - 4096

    async def _metric_keys(self, req: MetricKeysRequest) -> bytes:
        store, entity, attempt = self._metrics_target(req)
        return _result(orjson.dumps(keys_reply(store, entity, attempt, req.stream)))

    async def _metric_history(self, req: MetricHistoryRequest) -> bytes:
        store, entity, attempt = self._metrics_target(req)
        rows = history_rows(
            store,
            entity,
            attempt,
            req.stream,
            samples=req.samples,
            keys=req.keys,
            x_axis=req.x_axis,
        )
        return _result(b"[" + b",".join(rows) + b"]")

    async def _metric_scan(self, req: MetricScanRequest) -> bytes:
        store, entity, attempt = self._metrics_target(req)
        rows, next_start = scan_page(
            store,
            entity,
            attempt,
            req.stream,
            keys=req.keys,
            min_step=req.min_step,
            max_step=req.max_step,
            page_size=req.page_size,
            start=req.start,
            max_bytes=self._reply_limit(),
        )
        return _result(
            b'{"rows":[' + b",".join(rows) + b'],"next_start":' + orjson.dumps(next_start) + b"}"
        )


def _page(items: list[bytes], cursor: str | None) -> bytes:
    return _result(
        b'{"items":[' + b",".join(items) + b'],"next_cursor":' + orjson.dumps(cursor) + b"}"
    )


def _ns(namespace: str | None) -> str:
    return f" in namespace {namespace!r}" if namespace is not None else ""
