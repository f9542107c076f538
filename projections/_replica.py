"""``Replica``: the one lifecycle of a projector replica, from the NATS server to a clean stop.

Every entry point runs a replica through it: ``connect()``, ``runstate
server``, ``runstate projector``, the demo, the benchmarks and ``python -m
runstate.projections``. In order, entering a ``Replica``:

1. starts (or attaches to) the embedded nats-server of ``settings.data_dir``
   when ``settings.nats_url`` is None;
2. connects and provisions the streams: on the embedded server, or when
   asked (``provision=True``: ``runstate server``, ``runstate provision``);
   on a server at a URL otherwise it only checks that they exist
   (``StreamsMissing``), since provisioning is an admin action (issue 17).
   With a credentials file, the user the server authenticated becomes the
   writer's ``user`` (the ``actor`` of its events);
3. when it runs a projector: names its read store (``store_path``, below),
   takes the store's lock, and starts the projector (with its feeder
   command when dedicated), the query service and the heartbeat reaper.
   With the projector's second user (``settings.query_credentials``, or
   ``projector-queries.nk`` beside ``projector.nk``), the query service also
   answers on a connection of its own in the clients' account of the roles'
   authorization, so a reader's query crosses no import (docs/roles.md).

Leaving it undoes each step in reverse; a server it started is stopped.

The read store, unless given: ``<data-dir>/views.sqlite3`` for the replica
that owns the embedded server of its data directory, else
``<data-dir>/replicas/<name>-<prefix>-<digest>.sqlite3``, where the digest
identifies the events stream (its prefix and creation time). So a store
never resumes from a checkpoint taken on another server or on a stream
since deleted and made again, and replicas of different names beside one
another get files of their own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.abc
import nats.errors
from nats.aio.client import Client as NATS

from runstate.engine._connection import (
    authenticated_user,
    check_provisioned,
    open_nats,
    provision,
)
from runstate.engine._credentials import queries_beside
from runstate.engine._embedded import (
    EmbeddedHandle,
    _read_server_json,
    ensure_embedded,
    read_token,
)
from runstate.engine._names import Subjects
from runstate.engine._private import private_dir
from runstate.engine._refusals import refusable
from runstate.engine._settings import Settings
from runstate.engine.errors import ConfigurationError, ServerAlreadyRunning
from runstate.projections._lock import store_lock
from runstate.projections._metrics_projector import MetricsProjector
from runstate.projections._projector import Projector
from runstate.projections._reaper import Reaper
from runstate.projections._runner import ReplicaParts, serve_replica
from runstate.projections._service import QueryService
from runstate.projections._typing import ReadStore

__all__ = ["Replica", "default_store_path"]

#: the store of the replica that owns the embedded server of its data directory
OWNER_STORE = "views.sqlite3"


class Replica:
    """A NATS connection (embedded server or URL) and, usually, a projector replica on it.

    Use as ``async with Replica(settings) as replica:``; inside, ``nc``,
    ``settings`` (with the URL it connected to), ``url``, ``embedded`` and,
    when a projector runs, ``store_path``, ``store``, ``projector``,
    ``service`` and ``reaper`` are set.

    ``projector``: True runs one; False never (a connection only, as
    ``runstate server --no-projector``); None runs one only when this
    replica started the embedded server (``connect()``'s default).
    ``start_projector()`` starts one later, inside the block.
    ``store``: the SQLite read store (default: see the module). ``name``:
    the replica's name in logs, ``status`` and its default store file.
    ``rebuild``: fold again from sequence 1. ``reaper``: run the heartbeat
    reaper. ``dedicated``: this process exists for the replica (it may tune
    the garbage collector and start a feeder process). ``port``: the
    embedded server's port. ``own_server``: refuse to attach to an embedded
    server another process started (``ServerAlreadyRunning``). ``provision``:
    create or update the streams on a server at a URL (admin credentials);
    the embedded server's are always provisioned.

    Raises ``StoreInUse`` when another replica holds the store, plus what
    starting the server (``Unavailable``, ``ConfigurationError``) and
    connecting (``Unavailable``, ``ServerTooOld``, ``JetStreamDisabled``,
    ``PermissionDenied``, ``StreamsMissing``) raise.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        projector: bool | None = True,
        store: Path | str | None = None,
        name: str = "projector",
        rebuild: bool = False,
        reaper: bool = True,
        dedicated: bool = False,
        feed_from: int | None = None,
        port: int | None = None,
        own_server: bool = False,
        connection_name: str = "runstate",
        provision: bool = False,
    ) -> None:
        if port is not None and settings.nats_url is not None:
            raise ConfigurationError(
                "port is the embedded server's port; it does not apply with a NATS URL"
            )
        self.settings = settings
        self.name = name
        self.embedded: EmbeddedHandle | None = None
        self.store_path: Path | None = Path(store) if store is not None else None
        self.store: ReadStore | None = None
        self.projector: Projector | None = None
        self.service: QueryService | None = None
        self.reaper: Reaper | None = None
        #: the metrics projector beside the projector (its store: ``<store>.metrics.sqlite3``)
        self.metrics: MetricsProjector | None = None
        self._want_projector = projector
        self._rebuild = rebuild
        self._run_reaper = reaper
        self._dedicated = dedicated
        self._feed_from = feed_from
        self._port = port
        self._own_server = own_server
        self._connection_name = connection_name
        self._provision = provision
        self._nc: NATS | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._tasks: anyio.abc.TaskGroup | None = None

    @property
    def nc(self) -> NATS:
        """The NATS connection (inside the ``async with`` block)."""
        if self._nc is None:
            raise RuntimeError("the replica is not running: use it as `async with Replica(...)`")
        return self._nc

    @property
    def url(self) -> str:
        """The NATS URL this replica connected to (the embedded server's, without one given)."""
        if self.settings.nats_url is None:
            raise RuntimeError("the replica is not running: use it as `async with Replica(...)`")
        return self.settings.nats_url

    @property
    def owns_server(self) -> bool:
        """Whether this replica started the embedded server (and stops it on exit)."""
        return self.embedded is not None and self.embedded.owned

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("a Replica runs once")
        self._stack = stack = contextlib.AsyncExitStack()
        try:
            await stack.__aenter__()
            await self._start(stack)
        except BaseException:
            await self._close(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
            # the caller's own error: stop everything, then let it through as it is (a
            # task group handed it would wrap it in an ExceptionGroup)
            exc_type = exc = tb = None
        await self._close(exc_type, exc, tb)

    async def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()
        assert self._stack is not None
        try:
            await self._stack.__aexit__(exc_type, exc, tb)
        finally:
            self._nc = None
            self._tasks = None

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        settings = self.settings
        if settings.nats_url is None:
            private_dir(settings.data_dir)  # 0700, and tightened if it was wider
            with anyio.CancelScope(shield=True):  # a server started must be known, to stop it
                handle = await anyio.to_thread.run_sync(
                    functools.partial(ensure_embedded, settings.data_dir, port=self._port)
                )
            stack.push_async_callback(_stop_server, handle)
            if self._own_server and not handle.owned:
                raise ServerAlreadyRunning(
                    f"a runstate server already runs on {settings.data_dir} at {handle.url} "
                    f"(pid {handle.pid}); use it, or stop it first "
                    f"(runstate server stop --data-dir {settings.data_dir})",
                    url=handle.url,
                    pid=handle.pid,
                )
            self.embedded = handle
            # the owner's own server: its pickles are trusted unless the settings say not
            settings = settings.replace(nats_url=handle.url, token=handle.token)
            settings = settings.trusting_pickles_if(True)
        else:
            settings = _with_embedded_token(settings).trusting_pickles_if(False)
        self.settings = settings
        nc = await open_nats(settings, name=self._connection_name)
        stack.push_async_callback(_close_connection, nc)
        self._nc = nc
        if self.embedded is not None or self._provision:
            await provision(nc, settings)
        else:
            await check_provisioned(nc, settings)
        if settings.credentials is not None:
            # the actor of this client's events: who the server says it is, not a claim
            user = await authenticated_user(nc)
            if user is not None and user != settings.user:
                self.settings = settings = settings.replace(user=user)
        want = self._want_projector
        if want or (want is None and self.owns_server):
            await self.start_projector()

    async def start_projector(self) -> None:
        """Start the projector, query service and reaper now (inside the block), once.

        Names the store and takes its lock first; raises ``StoreInUse`` when
        another replica holds it.
        """
        if self._stack is None or self._nc is None:
            raise RuntimeError("the replica is not running: use it as `async with Replica(...)`")
        if self.projector is not None:
            return
        if self.store_path is None:
            self.store_path = await default_store_path(
                self.nc, self.settings, self.name, owner=self.owns_server
            )
        self._stack.enter_context(store_lock(self.store_path))
        clients_nc = await self._clients_connection()
        # inside the connections and the lock: the replica stops before any goes
        self._tasks = await self._stack.enter_async_context(anyio.create_task_group())
        # a role that may not answer queries (not the projector's) is refused the service's
        # subscriptions: say so now, rather than serve nothing (the flush brings the refusal)
        subjects = Subjects(self.settings.prefix)
        serving = (f"{subjects.query_prefix}.>", "$SRV.>")
        with (
            refusable(self.nc, "serve queries (the projector role's)", *serving),
            contextlib.ExitStack() as refusals,
        ):
            if clients_nc is not None:
                refusals.enter_context(
                    refusable(
                        clients_nc, "serve the clients' queries (projector-queries)", *serving
                    )
                )
            parts: ReplicaParts = await self._tasks.start(
                functools.partial(
                    serve_replica,
                    self.nc,
                    self.settings,
                    self.store_path,
                    name=self.name,
                    rebuild=self._rebuild,
                    reaper=self._run_reaper,
                    dedicated=self._dedicated,
                    feed_from=self._feed_from,
                    query_connections=() if clients_nc is None else (clients_nc,),
                )
            )
            await self.nc.flush()
            if clients_nc is not None:
                await clients_nc.flush()
        self.projector, self.service = parts.projector, parts.service
        self.reaper, self.store = parts.reaper, parts.store
        self.metrics = parts.metrics

    async def _clients_connection(self) -> NATS | None:
        """The query service's connection as the projector's user in the clients' account,
        when there are its credentials; closed with the replica."""
        settings = self.settings
        credentials = settings.query_credentials or queries_beside(settings.credentials)
        if credentials is None or self._stack is None:
            return None
        nc = await open_nats(
            settings.replace(credentials=credentials),
            name=f"{self._connection_name}-queries",
            jetstream=False,
        )
        self._stack.push_async_callback(_close_connection, nc)
        return nc


def _with_embedded_token(settings: Settings) -> Settings:
    """With a URL that is the embedded server of ``settings.data_dir``: its token too.

    So ``--nats URL`` of the owner's own ``runstate server`` works as without
    the URL (that server asks for no other token); any other server's
    settings are kept as they are.
    """
    if settings.credentials is not None:
        return settings
    recorded = _read_server_json(settings.data_dir)
    if recorded is None or recorded.get("url") != settings.nats_url:
        return settings
    token = read_token(settings.data_dir)
    return settings if token is None else settings.replace(token=token)


async def default_store_path(nc: NATS, settings: Settings, name: str, *, owner: bool) -> Path:
    """The read store of a replica that was given none (the rule is in the module's docstring).

    ``owner``: the replica owns the embedded server of ``settings.data_dir``.
    """
    if owner:
        return settings.data_dir / OWNER_STORE
    info = await nc.jetstream().stream_info(Subjects(settings.prefix).events_stream)
    created = info.created.isoformat() if info.created is not None else settings.nats_url
    digest = hashlib.sha256(f"{settings.prefix}|{created}".encode()).hexdigest()[:16]
    return settings.data_dir / "replicas" / f"{name}-{settings.prefix}-{digest}.sqlite3"


async def _close_connection(nc: NATS) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await nc.close()
        except (OSError, nats.errors.Error):
            pass  # the server went away (an outage): there is nothing left to flush to it


async def _stop_server(handle: EmbeddedHandle) -> None:
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(handle.stop)
