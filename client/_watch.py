"""Live subscriptions: a snapshot, then every change, none missed or repeated.

The snapshot is read from the query service *after* a sequence ``as_of``
(so whichever replica answers has applied at least that much); an ordered
consumer then delivers the object's events from ``as_of + 1`` and they are
folded with the projector's own reducers. A view already holding an event
ignores it (folding is idempotent by position), so the hand-over neither
misses nor repeats an event. On a NATS reconnect the ordered consumer
resumes after the last sequence it delivered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runstate.client._objects import Run, Task
from runstate.client._subscription import Subscription
from runstate.engine._commits import Delivery
from runstate.engine._events import Event, RunCreated, TaskCreated, decode_event
from runstate.engine._names import Pathspec, parse_pathspec
from runstate.engine._typing import Follow
from runstate.engine.errors import InvalidEvent, InvalidName, NotFound, RunstateError
from runstate.projections._folding import CommitDecoder
from runstate.projections._reducers import fold_view, touched
from runstate.projections._views import Position, RunView, TaskView

if TYPE_CHECKING:
    from runstate.client._client import Client

__all__ = ["Change", "EventRecord", "Subscription", "events", "watch"]

ViewKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event as stored: its stream sequence, index in its commit, and subject."""

    sequence: int
    index: int
    subject: str
    event: Event

    @classmethod
    def from_wire(cls, item: Mapping[str, Any]) -> EventRecord:
        return cls(item["sequence"], item["index"], item["subject"], decode_event(item["event"]))


@dataclass(frozen=True, slots=True)
class Change:
    """One step of a watch: the event applied (None for the snapshot) and the views after it."""

    event: Event | None
    position: Position
    views: Mapping[ViewKey, RunView | TaskView]
    changed: tuple[ViewKey, ...] = field(default=())

    @property
    def sequence(self) -> int:
        return self.position[0]

    @property
    def runs(self) -> list[RunView]:
        return [v for k, v in self.views.items() if k[0] == "run"]  # type: ignore[misc]

    @property
    def tasks(self) -> list[TaskView]:
        return [v for k, v in self.views.items() if k[0] == "task"]  # type: ignore[misc]

    @property
    def run(self) -> RunView | None:
        """The run this change concerns (the first run changed, else the only run)."""
        for kind, key in self.changed:
            if kind == "run":
                return self.views[(kind, key)]  # type: ignore[return-value]
        runs = self.runs
        if self.event is not None:
            wanted = "/".join(self.event.pathspec.split("/")[:2])
            view = self.views.get(("run", wanted))
            if view is not None:
                return view  # type: ignore[return-value]
        return runs[0] if len(runs) == 1 else None

    @property
    def task(self) -> TaskView | None:
        """The task this event changed, if it changed one this watch knows."""
        if self.event is not None and ("task", self.event.pathspec) in self.views:
            return self.views[("task", self.event.pathspec)]  # type: ignore[return-value]
        return None


async def _snapshot(
    client: Client, path: Pathspec, as_of: int
) -> dict[ViewKey, RunView | TaskView]:
    views: dict[ViewKey, RunView | TaskView] = {}
    if path.run is None:
        runs = await client.runs(path.flow, page_size=200, after=as_of)
        for listed in runs.items:
            views[("run", listed.pathspec)] = listed.view
        return views
    try:
        run = await client.get(path.run_pathspec, after=as_of)
    except NotFound:
        return views  # the run may be created while we watch
    assert isinstance(run, Run)
    views[("run", run.pathspec)] = run.view
    if path.step is not None and path.task is None:
        tasks = await client.tasks(path.run_pathspec, path.step, page_size=1000, after=as_of)
        async for listed_task in tasks.all():
            views[("task", listed_task.pathspec)] = listed_task.view
    elif path.task is not None:
        try:
            task = await client.get(path.task_pathspec, after=as_of)
        except NotFound:
            return views
        assert isinstance(task, Task)
        views[("task", task.pathspec)] = task.view
    return views


def _in_scope(path: Pathspec, key: ViewKey) -> bool:
    kind, pathspec = key
    if kind == "run":
        if path.run is None:
            return pathspec.startswith(path.flow + "/")
        return pathspec == path.run_pathspec
    if path.task is not None:
        return pathspec == path.task_pathspec
    if path.step is not None:
        return pathspec.startswith(f"{path.run_pathspec}/{path.step}/")
    return False  # flow and run watches follow runs; their step summaries carry task states


#: messages a watch may fall behind its feed before it is stopped with an error
_WATCH_BUFFER = 100_000


class _Feed:
    """One consumer of a subject filter, shared by every watch of it in one client.

    A hundred watches of one run cost one consumer and one delivery per
    commit, not a hundred. ``delivered`` is the last stream sequence handed
    to the watches: a watch that joins takes it as its cut, reads its
    snapshot ``after`` it, and gets every later commit from the feed.
    """

    def __init__(self, client: Client, subject: str) -> None:
        self.client = client
        self.subject = subject
        self.delivered = 0
        self.watches: set[MemoryObjectSendStream[Delivery]] = set()
        self.overflowed: set[MemoryObjectSendStream[Delivery]] = set()
        self._follow: Follow | None = None

    async def open(self, start: int) -> None:
        self.delivered = start - 1
        follow = self.client.log.follow(self.subject, start=start, on_delivery=self._dispatch)
        await follow.__aenter__()
        self._follow = follow

    async def close(self) -> None:
        if self._follow is not None:
            await self._follow.__aexit__(None, None, None)

    def _dispatch(self, delivery: Delivery) -> None:
        self.delivered = delivery[0]
        for send in list(self.watches):
            try:
                send.send_nowait(delivery)
            except anyio.WouldBlock:
                # Never drop silently: this watch ends with an error instead.
                self.overflowed.add(send)
                self.watches.discard(send)
                send.close()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.watches.discard(send)


async def _join(
    client: Client, subject: str
) -> tuple[_Feed, MemoryObjectSendStream[Delivery], MemoryObjectReceiveStream[Delivery]]:
    """Register a new watch on the client's feed of ``subject``, opening the feed if needed."""
    feeds: dict[str, _Feed] = client.__dict__.setdefault("_feeds", {})
    lock: anyio.Lock = client.__dict__.setdefault("_feeds_lock", anyio.Lock())
    async with lock:
        feed = feeds.get(subject)
        if feed is None:
            feed = _Feed(client, subject)
            # Start where the query service is: the first snapshot is taken after it.
            await feed.open(int((await client.status())["applied"]) + 1)
            feeds[subject] = feed
        send, receive = anyio.create_memory_object_stream[Delivery](max_buffer_size=_WATCH_BUFFER)
        feed.watches.add(send)
        return feed, send, receive


async def _leave(client: Client, feed: _Feed, send: MemoryObjectSendStream[Delivery]) -> None:
    """Unregister a watch; the last one to leave stops the feed's consumer."""
    with anyio.CancelScope(shield=True):
        lock: anyio.Lock = client.__dict__["_feeds_lock"]
        async with lock:
            feed.watches.discard(send)
            feed.overflowed.discard(send)
            send.close()
            if not feed.watches and client.__dict__["_feeds"].get(feed.subject) is feed:
                del client.__dict__["_feeds"][feed.subject]
                await feed.close()


_DECODED_CACHE = 4096


def _decode(client: Client, sequence: int, subject: str, data: bytes) -> list[Event]:
    """Decode a commit once per client, however many of its watches receive it.

    Events are immutable, so watches may share them; the cache keeps the most
    recent commits by stream sequence. Decoded and checked against its subject
    as the projector does (``CommitDecoder``): raises ``InvalidEvent`` or
    ``InvalidName`` for a commit the projector dead-letters.
    """
    cache: OrderedDict[int, list[Event]] | None = client.__dict__.get("_decoded")
    if cache is None:
        cache = client.__dict__["_decoded"] = OrderedDict()
    events = cache.get(sequence)
    if events is None:
        decoder: CommitDecoder = client.__dict__.setdefault(
            "_commit_decoder", CommitDecoder(client.subjects)
        )
        events = decoder.decode(subject, data)
        cache[sequence] = events
        if len(cache) > _DECODED_CACHE:
            cache.popitem(last=False)
    return events


async def _new_commits(
    client: Client, receive: AsyncIterable[Delivery], last: int
) -> AsyncGenerator[tuple[int, str, list[Event]], None]:
    """(sequence, subject, events) of each commit delivered after ``last``, once.

    Commits the projector dead-letters (undecodable, or not of their subject) are skipped.
    """
    async for seq, subject, data in receive:
        if seq <= last:
            continue
        last = seq
        try:
            commit = _decode(client, seq, subject, data)
        except (InvalidEvent, InvalidName):
            continue
        yield seq, subject, commit


def watch(client: Client, pathspec: str) -> Subscription[Change]:
    """See ``Client.watch``."""
    return Subscription(_watch(client, pathspec))


async def _watch(client: Client, pathspec: str) -> AsyncGenerator[Change, None]:
    path = parse_pathspec(pathspec, min_depth=1, max_depth=4)
    namespace = client.namespace
    subject = client.subjects.for_pathspec(path)
    if path.step is not None or path.task is not None:
        subject = client.subjects.run_all(path.flow, path.run or "")  # run header + the tasks
    # Join first, then cut: every commit after the cut reaches this watch, and
    # the snapshot, read after the cut, holds every commit up to it.
    feed, send, receive = await _join(client, subject)
    try:
        cut = feed.delivered
        views = await _snapshot(client, path, cut)
        # The replica may have applied more than the cut when it answered: the snapshot
        # is as of the latest position it holds, and the feed's commits up to it are in it.
        as_of = max([(cut, 0), *(view.position for view in views.values())])
        yield Change(None, as_of, dict(views))
        async with aclosing(_new_commits(client, receive, as_of[0])) as commits:
            async for seq, _, commit in commits:
                for index, event in enumerate(commit):
                    position = (seq, index)
                    changed = _fold_into(views, event, position, path, namespace)
                    if changed:
                        yield Change(event, position, dict(views), changed)
        if send in feed.overflowed:
            raise RunstateError(
                f"the watch of {pathspec} fell more than {_WATCH_BUFFER:,} commits behind and "
                "was stopped; read its changes faster, or watch again from a new snapshot"
            )
    finally:
        receive.close()
        await _leave(client, feed, send)


def _creates(event: Event, key: ViewKey, path: Pathspec, namespace: str | None) -> bool:
    """Whether ``event`` creates a view this watch should start following."""
    if key[0] == "run" and isinstance(event, RunCreated):
        payload = event.payload
        if namespace is not None and namespace not in (*payload.tags, *payload.system_tags):
            return False  # the snapshot would not have shown it either
        return _in_scope(path, key) or path.run is None
    if key[0] == "task" and isinstance(event, TaskCreated) and key[1] == event.pathspec:
        return _in_scope(path, key)
    return False


def _fold_into(
    views: dict[ViewKey, RunView | TaskView],
    event: Event,
    position: tuple[int, int],
    path: Pathspec,
    namespace: str | None,
) -> tuple[ViewKey, ...]:
    """Fold ``event`` into the views a watch of ``path`` holds or takes in; the keys it changed."""
    changed: list[ViewKey] = []
    for key in touched(event):
        if key not in views and not _creates(event, key, path, namespace):
            continue
        if not _in_scope(path, key) and key not in views:
            continue
        old = views.get(key)
        new = fold_view(key, old, event, position)
        if new is not None and new is not old:
            views[key] = new
            changed.append(key)
    return tuple(changed)


def events(
    client: Client, pathspec: str, *, since: int = 1, follow: bool = True
) -> Subscription[EventRecord]:
    """See ``Client.events``."""
    return Subscription(_events(client, pathspec, since, follow))


async def _events(
    client: Client, pathspec: str, since: int, follow: bool
) -> AsyncGenerator[EventRecord, None]:
    path = parse_pathspec(pathspec, min_depth=1, max_depth=4)
    subject = client.subjects.for_pathspec(path)
    if not follow:
        async for commit in client.log.read(subject, start=since):
            for index, event in enumerate(commit.events):
                yield EventRecord(commit.sequence, index, commit.subject, event)
        return
    async with client.log.follow(subject, start=since) as batches:
        async for batch in batches:
            for seq, delivered_on, data in batch:
                try:
                    decoded = _decode(client, seq, delivered_on, data)
                except (InvalidEvent, InvalidName):
                    continue  # set aside by the projector as a dead letter
                for index, event in enumerate(decoded):
                    yield EventRecord(seq, index, delivered_on, event)
