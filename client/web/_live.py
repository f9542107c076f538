"""Live over HTTP: server-sent events of a watch (``/watch``) and of raw events (``/events``).

Each SSE message's ``id`` is a stream sequence, so a browser's automatic
reconnect (``Last-Event-ID``) resumes where it left off:

- ``/api/v1/watch/{pathspec}``: a ``snapshot`` (the views, ``id`` the
  sequence they are as of), then one ``change`` per commit that changed a
  view (its events, positions and the views after them). A resume sends only
  the commits after ``Last-Event-ID``; when the state has moved past it
  while the client was away, it sends one snapshot as of the newest
  sequence first (which holds every change missed). No change is lost and
  none is sent twice: ``client.watch``'s guarantee.
- ``/api/v1/events/{pathspec}``: one ``commit`` message per commit of the
  object (its sequence, subject and events), from ``since`` or after
  ``Last-Event-ID``, then live ones.

Fan-out: every watch stream of one pathspec shares one ``Channel``, which
folds each commit once and encodes its message once for all of them; the
channels and the event streams join the gateway client's feed of their
subject (one log follow per subject, ``runstate.client._watch``). So a
thousand browsers on one run cost one consumer and one fold per commit. The
channel hands each message's bytes straight to every stream's ``Outbox``,
and each connection's own task writes what its outbox holds (all of it in
one write when it has fallen behind): delivering a message costs a stream
one wake-up and one write, no queue between tasks. Idle streams get a
comment every ``keepalive`` seconds so proxies keep them open; a client
that goes leaves at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, Any

import anyio
import anyio.abc
import orjson
from anyio.streams.memory import MemoryObjectSendStream
from fastapi import APIRouter, Header, Query, Request
from prometheus_client import Gauge
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from runstate.client._client import Client
from runstate.client._watch import _fold_into, _join, _leave, _new_commits, _snapshot
from runstate.client.web._reads import reader
from runstate.engine._events import Event
from runstate.engine._names import Pathspec, parse_pathspec
from runstate.engine.errors import RunstateError
from runstate.projections._views import RunView, TaskView

__all__ = [
    "SERVER_SEND",
    "Channel",
    "EventStream",
    "Outbox",
    "WatchStream",
    "router",
    "sse_frame",
    "with_server_send",
]

router = APIRouter(prefix="/api/v1", tags=["live"])

Frames = MemoryObjectSendStream[bytes]

_KEEPALIVE = b": keep-alive\n\n"

#: the scope key under which ``serve`` leaves the server's own ``send`` (``with_server_send``)
SERVER_SEND = "runstate.server_send"


def with_server_send(app: ASGIApp) -> ASGIApp:
    """``app``, with each HTTP request's scope holding the server's ``send`` (SERVER_SEND).

    A watch stream writes its messages' bodies there, past the middleware
    between the server and the route (error handling, request metrics), none
    of which looks at a body once the response has started: a thousand
    streams of one run then cost the gateway a third less per message.
    """

    async def app_with_send(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SERVER_SEND] = send
        await app(scope, receive, send)

    return app_with_send


def sse_frame(event: str, data: bytes, id: int | str | None = None) -> bytes:
    """One SSE message (``data`` is one line of JSON; ``id`` a sequence, or a position's
    ``"sequence:index"``)."""
    head = b"" if id is None else b"id: %s\n" % str(id).encode()
    return head + b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class EventStream(Response):
    """A ``text/event-stream`` response fed by ``produce``, until it ends or the client goes.

    ``produce`` sends whole SSE messages to the stream it is given; while it
    sends nothing for ``keepalive`` seconds a comment goes out instead. When
    the client disconnects, ``produce`` is cancelled (its ``finally`` blocks
    run); a ``RunstateError`` it raises is sent as an ``error`` message.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        produce: Callable[[Frames], Awaitable[None]],
        keepalive: float,
        open_streams: Gauge | None = None,
    ) -> None:
        # As a StreamingResponse: no body, so no Content-Length.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._produce = produce
        self._keepalive = keepalive
        #: a gauge counting the open streams of this kind (``/metrics``), or None
        self._open_streams = open_streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._open_streams is not None:
            self._open_streams.inc()
        try:
            await self._stream(receive, send)
        finally:
            if self._open_streams is not None:
                self._open_streams.dec()

    async def _stream(self, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        frames_in, frames = anyio.create_memory_object_stream[bytes](64)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run, frames_in)
            tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
            await send(
                {"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True}
            )
            async with frames:
                while True:
                    frame: bytes | None = _KEEPALIVE
                    with anyio.move_on_after(self._keepalive):
                        try:
                            frame = await frames.receive()
                        except anyio.EndOfStream:
                            frame = None
                    if frame is None:
                        break
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
            tg.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _run(self, frames: Frames) -> None:
        async with frames:
            try:
                await self._produce(frames)
            except RunstateError as exc:
                error = {"code": exc.code, "detail": exc.message}
                await frames.send(sse_frame("error", orjson.dumps(error)))


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _last_event_id(header: str | None) -> int | None:
    if header is None or not header.strip().isdigit():
        return None  # a browser sends what we sent; anything else starts afresh
    return int(header.strip())


LastEventId = Annotated[
    str | None,
    Header(description="The id of the last message received: resume after it."),
]


def _stream(
    request: Request, kind: str, produce: Callable[[Frames], Awaitable[None]]
) -> EventStream:
    """An event stream of ``kind`` (watch, events), counted in ``/metrics`` while open."""
    streams = request.app.state.metrics.streams.labels(kind)
    return EventStream(produce, request.app.state.keepalive, streams)


def _dump(model: BaseModel) -> Any:
    return orjson.Fragment(model.model_dump_json())


def _views_json(views: list[RunView | TaskView]) -> dict[str, list[Any]]:
    return {
        "runs": [_dump(v) for v in views if isinstance(v, RunView)],
        "tasks": [_dump(v) for v in views if isinstance(v, TaskView)],
    }


class Outbox:
    """The messages waiting for one SSE connection, written by that connection's task.

    ``put`` (from the channel's task) appends and wakes the connection if it
    waits; ``wait`` returns once there is something to write or the outbox is
    closed. Plain asyncio, as the gateway's server runs on it: a message
    costs its connection one wake-up. ``sent`` says a frame was put since
    the channel's keep-alive last looked.
    """

    __slots__ = ("_limit", "_waiter", "closed", "frames", "sent")

    def __init__(self, limit: int) -> None:
        self.frames: deque[bytes] = deque()
        self.closed = False
        self.sent = False
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None

    def put(self, frame: bytes) -> bool:
        """Queue ``frame``; False (and nothing queued) when ``limit`` frames already wait."""
        if len(self.frames) >= self._limit:
            return False
        self.frames.append(frame)
        self.sent = True
        self._wake()
        return True

    def close(self) -> None:
        """No more frames: the connection writes what is queued, then ends."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        if self.frames or self.closed:
            return
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def take(self) -> bytes:
        """Every queued frame, as one body (one write for a connection that fell behind)."""
        body = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames.clear()
        return body


class WatchStream(EventStream):
    """A watch's ``text/event-stream``: its channel's messages, from an ``Outbox``.

    ``channel(tasks)`` gives the channel to subscribe to (``tasks``: this
    connection's task group, for a channel of its own). As ``EventStream``:
    keep-alive comments while idle (the channel's), an ``error`` message for
    a ``RunstateError``, and the end when the client goes.
    """

    def __init__(
        self,
        channel: Callable[[anyio.abc.TaskGroup], Channel],
        last: int | None,
        keepalive: float,
        open_streams: Gauge | None = None,
    ) -> None:
        super().__init__(_no_producer, keepalive, open_streams)
        self._channel = channel
        self._last = last
        self._send_body: Send | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The messages' bodies go to the server's own send when ``serve`` gave it
        # (SERVER_SEND): past the middleware, which only looks at a response's start.
        self._send_body = scope.get(SERVER_SEND, send)
        await super().__call__(scope, receive, send)

    async def _stream(self, receive: Receive, send: Send) -> None:
        send_body = self._send_body or send
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
        outbox = Outbox(_STREAM_BUFFER)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
            channel = self._channel(tg)
            try:
                await channel.subscribe(self._last, outbox)
                while True:
                    await outbox.wait()
                    if not outbox.frames:
                        break  # closed, and all written
                    body = outbox.take()
                    await send_body({"type": "http.response.body", "body": body, "more_body": True})
            finally:
                channel.unsubscribe(outbox)
            tg.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _no_producer(frames: Frames) -> None:
    raise AssertionError("a WatchStream is fed by its channel")


@router.get(
    "/watch/{pathspec:path}",
    summary="Server-sent events: the live state of a flow, run, step or task",
    response_class=WatchStream,
    status_code=200,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def watch(
    pathspec: str,
    request: Request,
    last_event_id: LastEventId = None,
    namespace: Annotated[str | None, Query()] = None,
) -> EventStream:
    path = parse_pathspec(pathspec, min_depth=1, max_depth=4)  # a bad one: 422 before streaming
    client = reader(request, namespace)
    last = _last_event_id(last_event_id)
    channels: dict[tuple[str, str | None], Channel] = request.app.state.channels
    tasks: anyio.abc.TaskGroup | None = getattr(request.app.state, "tasks", None)
    keepalive: float = request.app.state.keepalive

    def channel(own: anyio.abc.TaskGroup) -> Channel:
        if tasks is None:
            # No lifespan ran (an app driven without a server): a channel of its own.
            mine = Channel(client, path, {}, keepalive)
            own.start_soon(mine.run)
            return mine
        key = (str(path), client.namespace)
        shared = channels.get(key)
        if shared is None or shared.closed:
            shared = channels[key] = Channel(client, path, channels, keepalive)
            tasks.start_soon(shared.run)
        return shared

    streams = request.app.state.metrics.streams.labels("watch")
    return WatchStream(channel, last, keepalive, streams)


#: messages a stream may fall behind its channel before it is closed (it then resumes)
_STREAM_BUFFER = 1000


class Channel:
    """The live state of one pathspec, folded once and sent to every SSE client of it.

    ``run`` does what ``client.watch`` does (join the client's feed, cut,
    read the snapshot after the cut, fold each later commit) and turns each
    commit that changed a view into one ``change`` message, encoded once for
    all, put in every subscriber's ``Outbox``. A client joining takes the
    views as they are (a ``snapshot`` as of ``sequence``) unless its
    ``Last-Event-ID`` is at or past them, and every later message; none with
    an id it has. A client that falls ``_STREAM_BUFFER`` messages behind is
    disconnected, to resume with its ``Last-Event-ID``. The last client to
    leave stops the channel.
    """

    def __init__(
        self,
        client: Client,
        path: Pathspec,
        registry: dict[tuple[str, str | None], Channel],
        keepalive: float = 15.0,
    ) -> None:
        self.client = client
        self.path = path
        self.keepalive = keepalive
        self.views: dict[tuple[str, str], RunView | TaskView] = {}
        #: the sequence the views are as of
        self.sequence = -1
        self.closed = False
        self._registry = registry
        self._key = (str(path), client.namespace)
        self._started = anyio.Event()
        #: each client's outbox, and the last id it has
        self._subscribers: dict[Outbox, int] = {}
        self._error: bytes | None = None
        self._snapshot: tuple[int, bytes] | None = None
        self._scope = anyio.CancelScope()

    async def run(self) -> None:
        with self._scope:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep_alive)
                    try:
                        await self._fold()
                    except RunstateError as exc:  # caught here: not in a group
                        self._error = sse_frame(
                            "error", orjson.dumps({"code": exc.code, "detail": exc.message})
                        )
                    tg.cancel_scope.cancel()
            finally:
                self._close()

    async def _fold(self) -> None:
        client, path = self.client, self.path
        namespace = client.namespace
        subject = client.subjects.for_pathspec(path)
        if path.step is not None or path.task is not None:
            subject = client.subjects.run_all(path.flow, path.run or "")
        feed, send, receive = await _join(client, subject)
        try:
            cut = feed.delivered
            self.views = await _snapshot(client, path, cut)
            as_of = max([(cut, 0), *(view.position for view in self.views.values())])[0]
            self.sequence = as_of
            self._started.set()
            async with aclosing(_new_commits(client, receive, as_of)) as commits:
                async for seq, _, commit in commits:
                    changes = _fold_commit(self.views, commit, seq, path, namespace)
                    self.sequence = seq
                    if changes:
                        body = {"sequence": seq, "changes": changes}
                        self._broadcast(seq, sse_frame("change", orjson.dumps(body), seq))
            if send in feed.overflowed:
                raise RunstateError(
                    f"the watch of {path} fell too far behind and was stopped; reconnect"
                )
        finally:
            receive.close()
            await _leave(client, feed, send)

    async def _keep_alive(self) -> None:
        """Every half ``keepalive``, a comment to each client sent nothing since the last
        time: no stream stays silent longer than ``keepalive``, and no timer per stream."""
        while True:
            await anyio.sleep(self.keepalive / 2)
            for outbox in self._subscribers:
                if not outbox.sent:
                    outbox.put(_KEEPALIVE)
                outbox.sent = False

    def _broadcast(self, seq: int, frame: bytes) -> None:
        behind = []
        for outbox, seen in self._subscribers.items():
            if seq > seen and not outbox.put(frame):
                behind.append(outbox)
        for outbox in behind:
            del self._subscribers[outbox]
            outbox.close()  # its client reconnects and resumes after what it got

    def _snapshot_frame(self) -> bytes:
        if self._snapshot is None or self._snapshot[0] != self.sequence:
            body = {"sequence": self.sequence, **_views_json(list(self.views.values()))}
            self._snapshot = (
                self.sequence,
                sse_frame("snapshot", orjson.dumps(body), self.sequence),
            )
        return self._snapshot[1]

    async def subscribe(self, last: int | None, outbox: Outbox) -> None:
        """Send this channel's messages to ``outbox``, for a client that has everything up to
        ``last``, until ``unsubscribe``."""
        await self._started.wait()
        if self.closed:
            if self._error is not None:
                outbox.put(self._error)
            outbox.close()
            return
        # No await from here to the registration: no commit can come in between.
        if last is None or self.sequence > last:
            outbox.put(self._snapshot_frame())
            last = self.sequence
        self._subscribers[outbox] = last

    def unsubscribe(self, outbox: Outbox) -> None:
        """``outbox``'s client has gone; the last one to go stops the channel."""
        self._subscribers.pop(outbox, None)
        if not self._subscribers:
            # at once, so a client arriving now starts a new channel
            self._close()
            self._scope.cancel()

    def _close(self) -> None:
        self.closed = True
        self._started.set()
        if self._registry.get(self._key) is self:
            del self._registry[self._key]
        for outbox in self._subscribers:
            if self._error is not None:
                outbox.put(self._error)
            outbox.close()  # its client resumes with Last-Event-ID


def _fold_commit(
    views: dict[tuple[str, str], RunView | TaskView],
    commit: list[Event],
    seq: int,
    path: Pathspec,
    namespace: str | None,
) -> list[dict[str, Any]]:
    """Fold a commit's events into ``views``; each event that changed a view, as JSON."""
    changes = []
    for index, event in enumerate(commit):
        changed = _fold_into(views, event, (seq, index), path, namespace)
        if changed:
            changes.append(
                {
                    "position": [seq, index],
                    "event": _dump(event),
                    **_views_json([views[key] for key in changed]),
                }
            )
    return changes


@router.get(
    "/events/{pathspec:path}",
    summary="Server-sent events: an object's raw events, one message per commit, then live",
    response_class=EventStream,
    status_code=200,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    pathspec: str,
    request: Request,
    since: Annotated[int, Query(ge=1, description="The first sequence to send.")] = 1,
    last_event_id: LastEventId = None,
) -> EventStream:
    path = parse_pathspec(pathspec, min_depth=1, max_depth=4)
    client = reader(request, None)
    last = _last_event_id(last_event_id)
    start = last + 1 if last is not None else since

    async def produce(frames: Frames) -> None:
        await _events(client, path, start, frames)

    return _stream(request, "events", produce)


def _commit_frame(seq: int, subject: str, commit: list[Event]) -> bytes:
    body = {"sequence": seq, "subject": subject, "events": [_dump(e) for e in commit]}
    return sse_frame("commit", orjson.dumps(body), seq)


async def _events(client: Client, path: Pathspec, start: int, frames: Frames) -> None:
    subject = client.subjects.for_pathspec(path)
    feed, send, receive = await _join(client, subject)
    try:
        # What the feed delivered before this stream joined is read from the log;
        # every later commit comes from the feed, each exactly once.
        cut = feed.delivered
        last = start - 1
        if start <= cut:
            async for stored in client.log.read(subject, start=start):
                if stored.sequence > cut:
                    break
                await frames.send(_commit_frame(stored.sequence, stored.subject, stored.events))
                last = stored.sequence
        async with aclosing(_new_commits(client, receive, max(last, cut))) as commits:
            async for seq, delivered_on, commit in commits:
                await frames.send(_commit_frame(seq, delivered_on, commit))
        if send in feed.overflowed:
            raise RunstateError(f"the event stream of {path} fell too far behind; reconnect")
    finally:
        receive.close()
        await _leave(client, feed, send)
