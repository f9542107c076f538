"""Metaflow's client API, blocking, over runstate: only the import line changes.

::

    from runstate.client.compat import Flow, Metaflow, Run, Step, Task, DataArtifact, namespace

    run = Flow("Train").latest_successful_run
    print(run["end"].task.data.accuracy)
    for task in run["train"]:
        print(task.index, task.data.accuracy)

The first use connects (``RUNSTATE_NATS_URL``, else the embedded server)
and keeps one async client running on a background event loop (an anyio
blocking portal); every attribute that needs I/O calls into it. Metaflow's
metadata-provider functions choose which runstate the facade reads:
``metadata("nats://host:4222")``, ``metadata("local")``, ``get_metadata()``,
``default_metadata()`` (``compat.connect(url, **options)`` does too, with
``connect()``'s options). ``compat.close()`` stops early (it is also done
at exit). A child forked from a process that used the facade (a
multiprocessing pool with the fork start method) connects anew on its first
call. The facade works from any thread, under any event loop or none.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import inspect
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from runstate.client import _data
from runstate.client import _objects as aio
from runstate.client._client import Client
from runstate.client._client import connect as _connect
from runstate.client._namespace import default_namespace, get_namespace, namespace
from runstate.engine._events import ExceptionInfo
from runstate.engine._settings import Settings
from runstate.engine.errors import ConfigurationError
from runstate.projections._views import MetadataView

__all__ = [
    "Artifacts",
    "DataArtifact",
    "Flow",
    "Metaflow",
    "Run",
    "Step",
    "Task",
    "close",
    "connect",
    "default_metadata",
    "default_namespace",
    "get_metadata",
    "get_namespace",
    "metadata",
    "namespace",
]

T = TypeVar("T")

try:  # anyio's way to tell which async library runs (absent: asyncio's loop is looked for)
    from sniffio import current_async_library_cvar as _library
except ImportError:  # pragma: no cover
    _library = None  # type: ignore[assignment]


@contextmanager
def _background_portal() -> Iterator[BlockingPortal]:
    """An event loop in a daemon thread of its own, reached through a blocking portal.

    As anyio's ``start_blocking_portal``, but its thread is a daemon on every
    anyio version: anyio before 4.5 ran it in a thread pool, which the
    interpreter joins at exit *before* the ``atexit`` hook that stops the
    loop, so a script that used the facade never exited.
    """

    async def serve() -> None:
        async with BlockingPortal() as portal:
            started.set_result(portal)
            await portal.sleep_until_stopped()

    def run() -> None:
        try:
            anyio.run(serve)
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)

    started: Future[BlockingPortal] = Future()
    thread = threading.Thread(target=run, name="runstate-facade", daemon=True)
    thread.start()
    try:
        portal = started.result()
        cancel_remaining = False
        try:
            yield portal
        except BaseException:
            cancel_remaining = True
            raise
        finally:
            try:
                portal.call(portal.stop, cancel_remaining)
            except RuntimeError:
                pass  # the loop has stopped already
    finally:
        thread.join()


class _Session:
    """One background event loop and one async client, shared by the whole process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stack: ExitStack | None = None
        self.portal: BlockingPortal | None = None
        self.client: Client | None = None
        #: the background loop and its thread (``call``)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def open(self) -> Client:
        """The client, connected on first use to the runstate ``metadata()`` chose."""
        with self._lock:
            if self.client is not None:
                return self.client
            url, options = _provider if _provider is not None else (None, {})
            stack = ExitStack()
            try:
                portal = stack.enter_context(_background_portal())
                client = stack.enter_context(
                    portal.wrap_async_context_manager(_connect(url, **options))
                )
            except BaseException:
                stack.close()
                raise
            self._loop = portal.call(asyncio.get_running_loop)
            self._thread = portal.call(threading.get_ident)
            self._stack, self.portal, self.client = stack, portal, client
            return client

    def forget_in_child(self) -> None:
        """In a child forked from this process: start afresh, leaving the parent's alone.

        The parent's background loop ran in a thread the child does not have,
        and its connection's socket is the parent's: a call through them would
        wait for ever. So the child drops them (held, never closed: closing
        would act on the parent's connection and server) and its next call
        connects anew to what ``metadata()`` chose.
        """
        _inherited.append((self._stack, self.portal, self.client))
        self._lock = threading.Lock()  # another thread of the parent may have held it
        self._stack, self.portal, self.client, self._loop = None, None, None, None

    def close(self) -> None:
        with self._lock:
            stack, self._stack, self.portal, self.client = self._stack, None, None, None
            self._loop = None
        if stack is not None:
            stack.close()

    def call(self, function: Any, *args: Any) -> Any:
        """``function(*args)`` on the background loop, waited for.

        A coroutine function goes to the loop as a plain task
        (``run_coroutine_threadsafe``): half the cost of the portal's call,
        which also opens a cancel scope in its task group, and most of what
        the facade adds to a read. It runs in a copy of the caller's context,
        as the portal's calls do, with sniffio's current library cleared (a
        caller under trio would otherwise make anyio take the loop for
        trio's). The rest, and a call from the loop's own thread (which the
        portal refuses), go through the portal.
        """
        self.open()
        loop, portal = self._loop, self.portal
        assert portal is not None
        if (
            loop is not None
            and inspect.iscoroutinefunction(function)
            and threading.get_ident() != self._thread
        ):
            context = contextvars.copy_context()  # the caller's, as the portal passes it
            if _library is not None:  # ... but the loop is asyncio's, whoever calls
                context.run(_library.set, None)
            coroutine = function(*args)
            return context.run(asyncio.run_coroutine_threadsafe, coroutine, loop).result()
        return portal.call(function, *args)

    @property
    def async_client(self) -> Client:
        return self.open()


#: what a forked child inherited of its parent's session, kept from the garbage collector
_inherited: list[tuple[Any, ...]] = []

_session = _Session()
atexit.register(_session.close)
os.register_at_fork(after_in_child=_session.forget_in_child)

#: what ``metadata()`` or ``connect()`` chose: ``runstate.client.connect``'s URL and
#: options; None: the default (``RUNSTATE_NATS_URL``, else the embedded server)
_provider: tuple[str | None, dict[str, Any]] | None = None

_NATS_SCHEMES = ("nats://", "tls://", "ws://", "wss://")


def connect(url: str | None = None, **options: Any) -> None:
    """Choose the server and connect now (else ``RUNSTATE_NATS_URL`` or the embedded one).

    ``options`` are ``runstate.client.connect``'s (``data_dir``, ``credentials``, ...).
    """
    global _provider
    _session.close()
    _provider = (url, dict(options))
    _session.open()


def metadata(ms: str) -> str:
    """Choose the runstate the facade reads (Metaflow's ``metadata()``); return ``get_metadata()``.

    ``ms`` is ``local`` (the embedded server on the default data directory),
    a directory path (the embedded server on that data directory), a NATS URL
    (``nats://host:4222``; also ``tls://``, ``ws://``, ``wss://``), or
    explicitly ``local@<directory>`` or ``service@<NATS URL>``. The facade's
    current client is closed; the next read connects to the new choice.
    Raises ``ConfigurationError`` for an HTTP URL (the facade reads over
    NATS, not through the HTTP gateway) or an unknown ``<type>@``.
    """
    global _provider
    if not isinstance(ms, str) or not ms:
        raise ConfigurationError(
            "metadata() takes 'local', a directory, a NATS URL, 'local@<dir>' or 'service@<url>'"
        )
    kind, _, info = ms.partition("@") if ms.startswith(("local@", "service@")) else ("", "", ms)
    if not kind:
        if ms.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"metadata({ms!r}): the facade reads runstate over NATS, not HTTP; "
                "give its NATS URL, e.g. metadata('nats://host:4222')"
            )
        kind = "service" if ms.startswith(_NATS_SCHEMES) else "local"
        info = "" if ms == "local" else ms
    if kind == "service":
        if not info.startswith(_NATS_SCHEMES):
            raise ConfigurationError(
                f"metadata({ms!r}): a service is a NATS URL such as service@nats://host:4222"
            )
        chosen: tuple[str | None, dict[str, Any]] = (info, {})
    else:
        settings = Settings.from_env().replace(nats_url=None)
        if info:
            settings = settings.replace(data_dir=Path(info).expanduser().absolute())
        chosen = (None, {"settings": settings})
    _session.close()
    _provider = chosen
    return get_metadata()


def get_metadata() -> str:
    """Which runstate the facade reads: ``service@<NATS URL>`` or ``local@<data directory>``."""
    url, options = _provider if _provider is not None else (None, {})
    settings = options.get("settings")
    if url is None and settings is None:
        url = os.environ.get("RUNSTATE_NATS_URL") or None
    if url is not None:
        return f"service@{url}"
    if settings is None:
        settings = Settings.from_env(data_dir=options.get("data_dir"))
    return f"local@{settings.data_dir}"


def default_metadata() -> str:
    """Go back to the default runstate (``RUNSTATE_NATS_URL``, else the embedded server).

    As Metaflow's: the choice before any ``metadata()`` call; returns ``get_metadata()``.
    """
    global _provider
    _session.close()
    _provider = None
    return get_metadata()


def close() -> None:
    """Stop the background client (it is restarted on next use)."""
    _session.close()


def _call(function: Any, *args: Any) -> Any:
    return _session.call(function, *args)


class _Wrapper:
    _obj: Any

    def __getattr__(self, name: str) -> Any:
        # The snapshot's plain attributes (state, created_at, finished, tags, ...)
        # need no I/O: read them from the async object.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._obj, name)

    @property
    def id(self) -> str:
        return str(self._obj.id)

    @property
    def pathspec(self) -> str:
        return str(self._obj.pathspec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.pathspec}')"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.pathspec == self.pathspec

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.pathspec))


class Metaflow:
    """Every flow in the current namespace."""

    @property
    def flows(self) -> list[Flow]:
        return [Flow._wrap(f) for f in _call(_session.async_client.flows)]

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flows)

    def __getitem__(self, name: str) -> Flow:
        return Flow(name)


class Flow(_Wrapper):
    """All runs of a flow: ``Flow('Train').latest_successful_run``."""

    def __init__(self, name: str, _obj: aio.Flow | None = None) -> None:
        self._obj = _obj if _obj is not None else _call(_session.async_client.flow, name)

    @classmethod
    def _wrap(cls, obj: aio.Flow) -> Flow:
        return cls(obj.id, obj)

    @property
    def latest_run(self) -> Run | None:
        run = _call(self._obj.latest_run)
        return Run._wrap(run) if run is not None else None

    @property
    def latest_successful_run(self) -> Run | None:
        run = _call(self._obj.latest_successful_run)
        return Run._wrap(run) if run is not None else None

    def runs(self, *tags: str) -> Iterator[Run]:
        """Runs carrying every tag in ``tags``, newest first, fetched a page at a time."""
        client = _session.async_client
        page = _call(lambda: client.runs(self.id, tags=tags))
        while page is not None:
            for run in page.items:
                yield Run._wrap(run)
            page = _call(page.next_page)

    def __iter__(self) -> Iterator[Run]:
        return self.runs()

    def __getitem__(self, run_id: str | int) -> Run:
        return Run(f"{self.id}/{run_id}")


class Run(_Wrapper):
    """One run: ``Run('Train/42')``; ``run['train']`` is a Step."""

    def __init__(self, pathspec: str, _obj: aio.Run | None = None) -> None:
        self._obj = _obj if _obj is not None else _call(_session.async_client.run, pathspec)

    @classmethod
    def _wrap(cls, obj: aio.Run) -> Run:
        return cls(obj.pathspec, obj)

    @property
    def data(self) -> _Data | None:
        task = self.end_task
        return task.data if task is not None else None

    @property
    def end_task(self) -> Task | None:
        task = _call(self._obj.end_task)
        return Task._wrap(task) if task is not None else None

    def steps(self, *tags: str) -> Iterator[Step]:
        """The run's steps in the order they began (Metaflow's ``run.steps(*tags)``).

        Steps carry their run's tags, so with ``tags`` the steps come only if
        the run has every one of them.
        """
        if not set(tags) <= self._obj.tags:
            return iter(())
        return iter([Step._wrap(s) for s in _call(self._obj.steps)])

    def __iter__(self) -> Iterator[Step]:
        return self.steps()

    def __getitem__(self, step: str) -> Step:
        return Step._wrap(_call(self._obj.step, step))

    def __contains__(self, step: object) -> bool:
        return step in self._obj

    def add_tag(self, tag: str) -> None:
        self._obj = _call(self._obj.add_tag, tag)

    def add_tags(self, tags: list[str]) -> None:
        self._obj = _call(self._obj.add_tags, *tags)

    def remove_tag(self, tag: str) -> None:
        self._obj = _call(self._obj.remove_tag, tag)

    def remove_tags(self, tags: list[str]) -> None:
        self._obj = _call(self._obj.remove_tags, *tags)

    def replace_tag(self, old: str, new: str) -> None:
        self._obj = _call(self._obj.replace_tag, old, new)

    def replace_tags(self, old: list[str], new: list[str]) -> None:
        self._obj = _call(self._obj.replace_tags, old, new)

    def wait(self, timeout: float | None = None) -> Run:
        return Run._wrap(_call(self._obj.wait, timeout))


class Step(_Wrapper):
    """A step: ``step.task`` (the first), iteration over all tasks."""

    def __init__(self, pathspec: str, _obj: aio.Step | None = None) -> None:
        self._obj = _obj if _obj is not None else _call(_session.async_client.step, pathspec)

    @classmethod
    def _wrap(cls, obj: aio.Step) -> Step:
        return cls(obj.pathspec, obj)

    @property
    def task(self) -> Task | None:
        task = _call(self._obj.task)
        return Task._wrap(task) if task is not None else None

    @property
    def environment_info(self) -> dict[str, Any]:
        """The execution environment of the step's (first) task, as in Metaflow."""
        task = self.task
        return task.environment_info if task is not None else {}

    def tasks(self, state: str | None = None) -> list[Task]:
        return [Task._wrap(t) for t in _call(self._obj.tasks, state)]

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks())

    def __getitem__(self, task_id: str | int) -> Task:
        return Task(f"{self.pathspec}/{task_id}")


class Task(_Wrapper):
    """A task: ``Task('Train/42/train/7', attempt=0)``; ``task.data.accuracy``."""

    def __init__(
        self, pathspec: str, attempt: int | None = None, _obj: aio.Task | None = None
    ) -> None:
        if _obj is None:
            _obj = _call(lambda: _session.async_client.task(pathspec, attempt=attempt))
        self._obj = _obj

    @classmethod
    def _wrap(cls, obj: aio.Task) -> Task:
        return cls(obj.pathspec, obj.attempt, obj)

    @property
    def data(self) -> _Data:
        return _Data(self._obj.data)

    @property
    def artifacts(self) -> Artifacts:
        """Metaflow's ``MetaflowArtifacts``: ``task.artifacts.model.data``, iteration, ``in``."""
        return Artifacts([DataArtifact._wrap(a) for a in self._obj.artifacts])

    def __getitem__(self, name: str) -> DataArtifact:
        return DataArtifact._wrap(self._obj[name])

    def __contains__(self, name: object) -> bool:
        return name in self._obj

    def __iter__(self) -> Iterator[DataArtifact]:
        return iter(self.artifacts)

    @property
    def metadata_dict(self) -> dict[str, str]:
        """This attempt's metadata by name: ``attempt`` and ``runtime`` always (Metaflow's).

        See ``runstate.client.Task.metadata_dict`` for the entries every task has.
        """
        return self._obj.metadata_dict  # type: ignore[no-any-return]

    @property
    def stdout(self) -> str:
        """Everything this attempt wrote to stdout (Metaflow's ``task.stdout``)."""
        return _call(self._obj.logs, "stdout")  # type: ignore[no-any-return]

    @property
    def stderr(self) -> str:
        """Everything this attempt wrote to stderr (Metaflow's ``task.stderr``)."""
        return _call(self._obj.logs, "stderr")  # type: ignore[no-any-return]

    def loglines(self, stream: str = "stdout") -> Iterator[tuple[datetime, str]]:
        """Metaflow's ``task.loglines(stream)``: (time, line) of each line, oldest first."""

        async def read() -> list[tuple[datetime, str]]:
            return [
                (line.at, line.text.removesuffix("\n"))
                async for line in self._obj.log_lines(stream)
            ]

        return iter(_call(read))

    @property
    def parent_tasks(self) -> list[Task]:
        return [Task._wrap(t) for t in _call(self._obj.parent_tasks)]

    @property
    def child_tasks(self) -> list[Task]:
        return [Task._wrap(t) for t in _call(self._obj.child_tasks)]

    @property
    def tags(self) -> frozenset[str]:
        """The tags of the task's run (in Metaflow a task carries its run's tags)."""
        run = _call(_session.async_client.run, self._obj.run_pathspec)
        return run.tags  # type: ignore[no-any-return]

    @property
    def metadata(self) -> list[MetadataView]:
        return self._obj.metadata  # type: ignore[no-any-return]

    @property
    def exception(self) -> ExceptionInfo | None:
        return self._obj.exception  # type: ignore[no-any-return]

    @property
    def finished_at(self) -> datetime | None:
        return self._obj.finished_at  # type: ignore[no-any-return]


class DataArtifact(_Wrapper):
    """One artifact: ``DataArtifact('Train/42/train/7/model').data``."""

    def __init__(self, pathspec: str, _obj: _data.DataArtifact | None = None) -> None:
        self._obj = _obj if _obj is not None else _call(_session.async_client.artifact, pathspec)

    @classmethod
    def _wrap(cls, obj: _data.DataArtifact) -> DataArtifact:
        return cls(obj.pathspec, obj)

    @property
    def data(self) -> Any:
        if self._obj.is_inline:
            return self._obj.data
        return _call(self._obj.load)


class Artifacts:
    """A task's artifacts as Metaflow's ``MetaflowArtifacts`` (a named tuple of them).

    ``artifacts.model`` is the DataArtifact named ``model`` (``.data`` its
    value); iteration and ``artifacts[0]`` give DataArtifacts in order;
    ``in`` takes a name or a DataArtifact; ``len`` counts them.
    """

    def __init__(self, artifacts: list[DataArtifact]) -> None:
        self._list = artifacts
        self._by_name = {artifact.id: artifact for artifact in artifacts}

    def __getattr__(self, name: str) -> DataArtifact:
        if name.startswith("_"):
            raise AttributeError(name)
        artifact = self._by_name.get(name)
        if artifact is None:
            raise AttributeError(
                f"no artifact {name!r}; this task has {sorted(self._by_name) or 'none'}"
            )
        return artifact

    def __getitem__(self, key: int | str) -> DataArtifact:
        return self._by_name[key] if isinstance(key, str) else self._list[key]

    def __iter__(self) -> Iterator[DataArtifact]:
        return iter(self._list)

    def __len__(self) -> int:
        return len(self._list)

    def __contains__(self, item: object) -> bool:
        return item in self._by_name if isinstance(item, str) else item in self._list

    def __dir__(self) -> list[str]:
        return sorted(self._by_name)

    def _asdict(self) -> dict[str, DataArtifact]:
        """By name, as a named tuple's ``_asdict()``."""
        return dict(self._by_name)

    def __repr__(self) -> str:
        names = ", ".join(f"{name}={artifact!r}" for name, artifact in self._by_name.items())
        return f"MetaflowArtifacts({names})"


class _Data:
    """A task's artifacts by attribute; values in the object store are fetched on first access."""

    def __init__(self, data: _data.Data) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._data:
            return getattr(self._data, name)  # raises the helpful AttributeError
        artifact = self._data.artifact(name)
        if artifact.is_inline:
            return artifact.data
        return _call(artifact.load)

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __dir__(self) -> list[str]:
        return dir(self._data)

    def __repr__(self) -> str:
        return repr(self._data)
