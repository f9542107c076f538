"""``connect()`` and the ``Client``: reads, live subscriptions and the worker API in one."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import orjson
from nats.aio.client import Client as NATS
from pydantic import BaseModel, ValidationError

from runstate.client import _namespace
from runstate.client._as_of import AsOf, check_as_of, run_at, step_at, task_at
from runstate.client._data import DataArtifact
from runstate.client._frame import runs_frame
from runstate.client._local import local_replica
from runstate.client._objects import Flow, FlowInfo, Run, Step, Task, object_from_reply
from runstate.client._pages import Page
from runstate.client._queries import NatsQueries, Queries
from runstate.client._watch import Change, EventRecord, Subscription, events, watch
from runstate.engine._commits import Receipt
from runstate.engine._connection import require_asyncio
from runstate.engine._handles import RunHandle
from runstate.engine._jetstream import JetStreamEventLog
from runstate.engine._logging import get_logger
from runstate.engine._names import Subjects, parse_pathspec
from runstate.engine._points import PointReceipt
from runstate.engine._run_update import UNCHANGED, run_update
from runstate.engine._settings import Settings
from runstate.engine._states import RunState, TaskState
from runstate.engine._typing import EventLog
from runstate.engine._worker import Writer
from runstate.engine.errors import BadFilter, NotFound
from runstate.projections._conditions import Condition, parse_condition
from runstate.projections._protocol import (
    ENDPOINTS,
    FlowsRequest,
    GetRequest,
    HistoryRequest,
    LatestRequest,
    RunsFrameRequest,
    RunsRequest,
    StatusRequest,
    TasksRequest,
)
from runstate.projections._queries import Page as ViewPage
from runstate.projections._replica import Replica
from runstate.projections._views import RunView, TaskView

__all__ = ["Client", "connect"]

log = get_logger("runstate.client")

After = int | Receipt | None


#: a list's ``after``: an events receipt or sequence, or a points receipt (a flush's)
ListAfter = int | Receipt | PointReceipt | None

#: a condition of ``runs(where=...)``: ``"summary.acc > 0.9"`` or ``("summary.acc", ">", 0.9)``
Where = str | tuple[Any, ...] | Condition


def _after(after: After) -> int | None:
    return after.sequence if isinstance(after, Receipt) else None if after is None else int(after)


def _list_after(after: ListAfter) -> dict[str, int | None]:
    """The ``after`` fields of a list request: a points receipt waits for its points."""
    if isinstance(after, PointReceipt):
        return {"after_points": after.sequence}
    return {"after": _after(after)}


class Client:
    """A connection to runstate: snapshot reads, live subscriptions, and writes.

    Get one with ``async with connect() as client:``. Reads go to the query
    service (``queries``); live subscriptions follow the event log directly;
    writes go through the engine's ``Writer`` (``client.create_run``). The
    log and the queries are seams: NATS in production, in-process objects in
    ``runstate.client.testing.in_memory()``.
    """

    def __init__(
        self,
        log: EventLog,
        queries: Queries,
        *,
        nc: NATS | None = None,
        namespace: Any = _namespace.DEFAULT,
    ) -> None:
        self.nc = nc
        self.settings = log.settings
        self.log = log
        self.queries = queries
        self.writer = Writer(self.log)
        self.subjects = self.log.subjects
        self._namespace = namespace
        #: seconds a read with ``after=`` waits for the replica to apply it, then ``Timeout``
        self.read_wait: float = self.settings.request_timeout
        #: what ``aclose`` calls: set by ``open_client``
        self._closer: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def over_nats(
        cls, nc: NATS, settings: Settings, *, namespace: Any = _namespace.DEFAULT
    ) -> Client:
        """A client whose log is JetStream and whose reads go to the query service, on ``nc``."""
        return cls(
            JetStreamEventLog(nc, settings),
            NatsQueries(nc, Subjects(settings.prefix)),
            nc=nc,
            namespace=namespace,
        )

    async def aclose(self) -> None:
        """Close a client ``open_client()`` opened, from any task of its event loop.

        Idempotent. A client of ``async with connect()`` closes at the end of
        its block: for it this does nothing.
        """
        closer, self._closer = self._closer, None
        if closer is not None:
            await closer()

    # -- namespace -------------------------------------------------------------

    @property
    def namespace(self) -> str | None:
        """This client's namespace: its own if set, else the process-wide one."""
        if self._namespace is _namespace.DEFAULT:
            return _namespace.get_namespace()
        result: str | None = self._namespace
        return result

    @property
    def last_write(self) -> int:
        """The events stream's sequence of this client's latest write (its or its copies',
        through any of its handles): a read's ``after=`` that sees all of them."""
        return self.writer.last_sequence

    @last_write.setter
    def last_write(self, sequence: int) -> None:
        self.writer.last_sequence = sequence

    def with_namespace(self, ns: str | None) -> Client:
        """A client sharing this connection that reads in namespace ``ns``."""
        other = Client.__new__(Client)
        other.__dict__.update(self.__dict__)
        other._namespace = ns
        return other

    # -- requests ----------------------------------------------------------------

    def query(self, model: type[_Q], **fields: Any) -> _Q:
        """A request of the query protocol, checked before it is sent.

        Fields left None are left out; a request with ``after`` also carries
        ``wait`` (``read_wait``): how long the replica may wait to apply it
        before ``Timeout``. Raises ``BadFilter`` for a field the protocol refuses.
        """
        given = {name: value for name, value in fields.items() if value is not None}
        if "after" in given or "after_points" in given:
            given.setdefault("wait", self.read_wait)
        try:
            return model(**given)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "request"
            raise BadFilter(f"bad {_ENDPOINT_OF[model]} request: {where}: {first['msg']}") from None

    async def request(
        self,
        query: BaseModel,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a bound on one NATS request
    ) -> Any:
        """Send a query (see ``query``); return its result or raise its typed error."""
        return orjson.loads(await self._request(query, timeout))["result"]

    async def _request_page(self, query: BaseModel, reply: type[_PageReply[_V]]) -> ViewPage[_V]:
        """A list endpoint's page of views."""
        return reply.model_validate_json(await self._request(query, None)).result

    async def _request(
        self,
        query: BaseModel,
        timeout: float | None,  # noqa: ASYNC109 - a bound on one NATS request
    ) -> bytes:
        """The reply's bytes, ``{"result": ...}``; an error reply raises its typed error."""
        waits = getattr(query, "after", None) or getattr(query, "after_points", None)
        wait = float(getattr(query, "wait", 0.0)) if waits else 0.0
        return await self.queries.request(
            _ENDPOINT_OF[type(query)],
            query.model_dump_json(exclude_defaults=True).encode(),
            timeout or (wait + self.settings.request_timeout),
        )

    # -- snapshot reads -----------------------------------------------------------

    async def get(
        self, pathspec: str, *, attempt: int | None = None, after: After = None
    ) -> Flow | Run | Step | Task | DataArtifact:
        """The object at ``pathspec`` (flow, run, step, task or artifact).

        Raises ``InvalidName`` (malformed pathspec, nothing sent), ``NotFound``,
        ``NotInNamespace``, ``Timeout`` (``after`` not applied in ``read_wait``)
        or ``Unavailable`` (no query service answering).
        """

        parse_pathspec(pathspec)
        query = self.query(
            GetRequest,
            pathspec=pathspec,
            attempt=attempt,
            namespace=self.namespace,
            after=_after(after),
        )
        return object_from_reply(self, await self.request(query), attempt)

    async def flow(self, name: str, *, after: After = None) -> Flow:

        obj = await self.get(name, after=after)
        assert isinstance(obj, Flow)
        return obj

    async def run(self, pathspec: str, *, after: After = None, as_of: AsOf | None = None) -> Run:
        """The run at ``pathspec``; with ``as_of``, as it was then.

        ``as_of`` is a sequence of the events stream (the views after every
        commit up to it: a receipt's ``sequence``, an ``after=`` value) or an
        aware datetime (the views from the commits the log had stored by
        then, by the server's clock). The run is folded from its own events
        with the projector's reducers; objects reached from it (``steps()``,
        ``run[step]``, ``tasks()``, parents) are of the same moment. Raises
        ``NotFound`` if the run did not exist yet then, and ``BadFilter`` for
        a naive datetime, anything else that is not a sequence, or ``after``
        given too.
        """
        if as_of is not None:
            return await run_at(self, pathspec, check_as_of(as_of, after))
        parse_pathspec(pathspec, min_depth=2, max_depth=2)
        obj = await self.get(pathspec, after=after)
        assert isinstance(obj, Run)
        return obj

    async def step(self, pathspec: str, *, after: After = None, as_of: AsOf | None = None) -> Step:
        """The step at ``pathspec``; with ``as_of``, as it was then (see ``run``)."""
        if as_of is not None:
            return await step_at(self, pathspec, check_as_of(as_of, after))
        parse_pathspec(pathspec, min_depth=3, max_depth=3)
        obj = await self.get(pathspec, after=after)
        assert isinstance(obj, Step)
        return obj

    async def task(
        self,
        pathspec: str,
        *,
        attempt: int | None = None,
        after: After = None,
        as_of: AsOf | None = None,
    ) -> Task:
        """The task at ``pathspec`` (its latest attempt, or ``attempt``); with ``as_of``, as it
        was then (see ``run``)."""
        if as_of is not None:
            return await task_at(self, pathspec, attempt, check_as_of(as_of, after))
        parse_pathspec(pathspec, min_depth=4, max_depth=4)
        obj = await self.get(pathspec, attempt=attempt, after=after)
        assert isinstance(obj, Task)
        return obj

    async def artifact(
        self, pathspec: str, *, attempt: int | None = None, after: After = None
    ) -> DataArtifact:

        parse_pathspec(pathspec, min_depth=5, max_depth=5)
        obj = await self.get(pathspec, attempt=attempt, after=after)
        assert isinstance(obj, DataArtifact)
        return obj

    async def flows(self, *, after: After = None) -> list[Flow]:
        """Every flow with a run in the current namespace."""

        result = await self.request(
            self.query(FlowsRequest, namespace=self.namespace, after=_after(after))
        )
        return [Flow(self, FlowInfo.model_validate(item)) for item in result]

    async def latest_run(
        self, flow: str, *, successful: bool = False, after: After = None
    ) -> Run | None:
        """The newest run of ``flow`` (the newest completed one with ``successful=True``)."""

        try:
            result = await self.request(
                self.query(
                    LatestRequest,
                    flow=flow,
                    successful=successful,
                    namespace=self.namespace,
                    after=_after(after),
                )
            )
        except NotFound:
            return None
        return Run(self, RunView.model_validate(result))

    async def runs(
        self,
        flow: str | None = None,
        *,
        tags: Iterable[str] = (),
        any_tags: Iterable[str] = (),
        state: RunState | str | Iterable[RunState | str] | None = None,
        user: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        parameters: Mapping[str, Any] | None = None,
        where: Iterable[Where] = (),
        sort: str = "-created_at",
        page_size: int = 50,
        cursor: str | None = None,
        after: ListAfter = None,
    ) -> Page[Run]:
        """One page of runs matching the filters, sorted (``"-created_at"``: newest first).

        ``where``: conditions on summary and config values, all of which must
        hold (``"summary.acc > 0.9"``, ``("config.lr", "<=", 0.01)``; operators
        ``= != < <= > >=``, values JSON literals). ``sort`` also takes
        ``summary.<key>`` and ``config.<key>`` (runs without a value last).
        ``after``: an events receipt, or a flush's points receipt, whose
        points the summaries then include.

        ``page.next_cursor`` fetches the next page; ``async for run in page.all()``
        walks every page, with the same filters and namespace as this one.
        Raises ``BadFilter`` for an unknown sort key, state or condition, a bad
        ``page_size`` or a cursor from another query.
        """
        states = [state] if isinstance(state, str | RunState) else list(state or [])
        query = self.query(
            RunsRequest,
            flow=flow,
            tags_all=list(tags),
            tags_any=list(any_tags),
            state=[str(s) for s in states],
            user=user,
            created_after=created_after,
            created_before=created_before,
            finished_after=finished_after,
            finished_before=finished_before,
            parameters=dict(parameters or {}),
            where=[parse_condition(condition) for condition in where],
            namespace=self.namespace,
            sort=sort,
            limit=page_size,
            cursor=cursor,
            **_list_after(after),
        )
        return await self._runs_page(query)

    async def _runs_page(self, query: RunsRequest) -> Page[Run]:
        """A page of runs; the next pages ask ``query`` again from their cursor, in its
        namespace, with no ``after`` (the first page waited for it)."""
        result = await self._request_page(query, _RUNS_REPLY)
        items = [Run(self, view) for view in result.items]

        async def fetch_next(next_cursor: str) -> Page[Run]:
            again = query.model_copy(
                update={"cursor": next_cursor, "after": None, "after_points": None}
            )
            return await self.with_namespace(query.namespace)._runs_page(again)

        return Page(items, result.next_cursor, fetch_next)

    async def runs_frame(
        self,
        flow: str | None = None,
        *,
        tags: Iterable[str] = (),
        any_tags: Iterable[str] = (),
        state: RunState | str | Iterable[RunState | str] | None = None,
        user: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        parameters: Mapping[str, Any] | None = None,
        where: Iterable[Where] = (),
        sort: str = "-created_at",
        after: ListAfter = None,
    ) -> Any:
        """Every run ``runs`` would list with these filters, as one pandas DataFrame.

        Columns: pathspec, flow, run_id, display_name, state, user, tags (the
        user tags), created_at, finished_at (UTC times), duration (seconds),
        then ``config.<key>`` and ``summary.<key>`` for every key any of the
        runs has (None where a run has none). The runs come in large pages of
        columns, not one object each. Raises ``ConfigurationError`` naming
        the ``pandas`` extra when pandas is missing, ``BadFilter`` as ``runs``.
        """
        states = [state] if isinstance(state, str | RunState) else list(state or [])
        query = self.query(
            RunsFrameRequest,
            flow=flow,
            tags_all=list(tags),
            tags_any=list(any_tags),
            state=[str(s) for s in states],
            user=user,
            created_after=created_after,
            created_before=created_before,
            finished_after=finished_after,
            finished_before=finished_before,
            parameters=dict(parameters or {}),
            where=[parse_condition(condition) for condition in where],
            namespace=self.namespace,
            sort=sort,
            **_list_after(after),
        )
        return await runs_frame(self, query)

    async def tasks(
        self,
        run: str,
        step: str,
        *,
        state: TaskState | str | Iterable[TaskState | str] | None = None,
        page_size: int = 100,
        cursor: str | None = None,
        after: After = None,
    ) -> Page[Task]:
        """One page of the tasks of ``step`` in ``run`` (optionally of some states)."""

        states = [state] if isinstance(state, str | TaskState) else list(state or [])
        namespace = self.namespace
        query = self.query(
            TasksRequest,
            run=run,
            step=step,
            state=[str(s) for s in states],
            limit=page_size,
            cursor=cursor,
            namespace=namespace,
            after=_after(after),
        )
        result = await self._request_page(query, _TASKS_REPLY)
        items = [Task(self, view) for view in result.items]

        async def fetch_next(next_cursor: str) -> Page[Task]:
            return await self.with_namespace(namespace).tasks(
                run, step, state=states, page_size=page_size, cursor=next_cursor
            )

        return Page(items, result.next_cursor, fetch_next)

    async def history(
        self, pathspec: str, *, start: int = 1, limit: int = 100
    ) -> tuple[list[EventRecord], int | None]:
        """One page of an object's event history from the stream, and the next start."""

        result = await self.request(
            self.query(HistoryRequest, pathspec=pathspec, start=start, limit=limit)
        )
        return [EventRecord.from_wire(item) for item in result["items"]], result["next_start"]

    async def status(self) -> dict[str, Any]:
        """The answering replica's progress: ``applied`` sequence, events applied, dead letters."""
        result: dict[str, Any] = await self.request(StatusRequest())
        return result

    # -- live ---------------------------------------------------------------------

    def watch(self, pathspec: str) -> Subscription[Change]:
        """Iterate over the live state of a flow, run, step or task.

        The first item is the current snapshot; each following item is one
        applied event with the views it changed. No event is missed or
        repeated, across reconnects too. Use it as ``async with
        client.watch(p) as changes:``; leaving the block stops the consumer.
        A flow watch follows the flow's 200 newest runs of the namespace and
        every run of the namespace created while it watches.
        """

        return watch(self, pathspec)

    def events(
        self, pathspec: str, *, since: int = 1, follow: bool = True
    ) -> Subscription[EventRecord]:
        """The raw events of an object from sequence ``since``, then live ones (``follow``)."""

        return events(self, pathspec, since=since, follow=follow)

    # -- writes -------------------------------------------------------------------

    async def create_run(self, flow: str, **kwargs: Any) -> RunHandle:
        """Create a run (see ``Writer.create_run``); its handle drives it through its states."""
        return await self.writer.create_run(flow, **kwargs)

    async def run_handle(self, pathspec: str) -> RunHandle:
        """The writer's handle of an existing run (for orchestrators: cancel, resume, tags)."""
        return await self.writer.run(pathspec)

    async def update_run(
        self,
        pathspec: str,
        *,
        name: Any = UNCHANGED,
        notes: Any = UNCHANGED,
        config: Mapping[str, Any] | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> Receipt:
        """Edit a run, in any state, in one event: its display ``name`` and ``notes`` (None
        clears them; left unchanged unless given), ``config`` and ``summary`` values.

        See ``RunHandle.update``. Raises ``NotFound`` for no such run and
        ``InvalidEvent`` for a value that is not JSON. Pass the receipt as a
        read's ``after=`` to see the edit.
        """
        run_update(name=name, notes=notes, config=config, summary=summary)  # checked first
        handle = await self.writer.run(pathspec)
        return await handle.update(name=name, notes=notes, config=config, summary=summary)


@asynccontextmanager
async def connect(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    data_dir: Path | str | None = None,
    credentials: Path | str | None = None,
    tls_ca: Path | str | None = None,
    tls_cert: Path | str | None = None,
    tls_key: Path | str | None = None,
    prefix: str | None = None,
    namespace: Any = _namespace.DEFAULT,
    projector: bool | None = None,
    trust_pickles: bool | None = None,
    restart_local: bool = False,
) -> AsyncIterator[Client]:
    """Connect to runstate and yield a ``Client``.

    With a URL (or ``RUNSTATE_NATS_URL``) it connects to that NATS. With
    neither it joins the local runstate of ``data_dir``: a server in the
    background (nats-server, a projector replica, the HTTP gateway) that
    the first client starts when none runs, and that no client stops (it
    stops after ``Settings.local_idle_timeout`` seconds with no client
    connected, or on ``runstate server stop``), so a script or notebook
    works with no set-up. ``LocalServerOutdated``: it runs an older
    runstate; ``restart_local=True`` stops it and starts this one instead.

    ``projector=True`` also runs a projector replica in this process (a
    ``runstate.projections.Replica`` named ``client``, its read store under
    ``data_dir``, holding its lock: ``StoreInUse`` when another replica
    holds it); by default none runs here.

    ``trust_pickles``: load pickled artifacts. By default they are loaded from
    the embedded server of your own data directory only; from a server at a
    URL a pickle raises ``UnsafeArtifact`` unless this (or ``Settings``, or
    ``RUNSTATE_TRUST_PICKLES=1``) says to trust it, since unpickling runs code
    chosen by whoever wrote the artifact.
    """
    require_asyncio("runstate's async client")
    base = settings or Settings.from_env(
        nats_url=url,
        data_dir=data_dir,
        credentials=credentials,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        prefix=prefix,
    )
    if url is not None:
        base = base.replace(nats_url=url)
    if trust_pickles is not None:
        base = base.replace(trust_pickles=trust_pickles)
    async with _open(base, projector, restart_local) as client:
        # the user the server authenticated, with credentials (see Replica)
        _namespace.set_default_user(client.settings.user)
        if namespace is not _namespace.DEFAULT:
            client._namespace = namespace
        yield client


@asynccontextmanager
async def _open(
    settings: Settings, projector: bool | None, restart_local: bool = False
) -> AsyncIterator[Client]:
    local = settings.nats_url is None
    async with (
        local_replica(settings, projector=projector, restart=restart_local)
        if local
        else Replica(settings, projector=projector, name="client")
    ) as replica:
        client = Client.over_nats(replica.nc, replica.settings)
        # Let the first reads of this process see what earlier ones wrote.
        if replica.projector is not None:
            caught_up = await client.log.stream_last_sequence()
            with anyio.move_on_after(max(replica.settings.request_timeout, 30.0)):
                await replica.projector.wait_for(caught_up, timeout=math.inf)
        elif local:
            await _local_caught_up(client)
        yield client


async def _local_caught_up(client: Client) -> None:
    """Wait (a few seconds at most) until the local runstate has applied the log's end."""
    caught_up = await client.log.stream_last_sequence()
    with anyio.move_on_after(client.settings.request_timeout):
        while caught_up and (await client.status())["applied"] < caught_up:  # noqa: ASYNC110 - another process's progress
            await anyio.sleep(0.01)


_V = TypeVar("_V", RunView, TaskView)
_Q = TypeVar("_Q", bound=BaseModel)

#: request model -> endpoint name
_ENDPOINT_OF: dict[type[BaseModel], str] = {model: name for name, model in ENDPOINTS.items()}


class _PageReply(BaseModel, Generic[_V]):
    """A list endpoint's reply, validated from its bytes in one pass."""

    result: ViewPage[_V]


_RUNS_REPLY = _PageReply[RunView]
_TASKS_REPLY = _PageReply[TaskView]
