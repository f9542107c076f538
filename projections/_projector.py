"""The projector: fold the events stream into the read store, each event exactly once.

It consumes the events stream with an ordered consumer from its checkpoint
+ 1, folds each batch with the pure reducers over a cache of views, and
commits the changed views together with the new checkpoint in one SQLite
transaction. Crash anywhere and the next start resumes from the last
committed checkpoint: no acks are involved in being correct.

The events stream has no gaps (nothing is ever deleted from it), so a
delivery whose sequence is not ``applied + 1`` means the consumer skipped;
the projector then re-subscribes from ``applied + 1``.

Commits it cannot decode, and messages on events subjects that no runstate
writer would produce, are dead-lettered (kept in the store and published on
``<prefix>.dlq.<sequence>`` with the reason) and never stop the projector.
"""

from __future__ import annotations

import gc
import subprocess
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from runstate.engine._commits import Delivery
from runstate.engine._events import Event
from runstate.engine._logging import get_logger
from runstate.engine._typing import EventLog
from runstate.engine.errors import InvalidEvent, InvalidName, Timeout, Unavailable
from runstate.projections._feeder import (
    FeederError,
    FeedRequest,
    FrameReader,
    Mark,
    encode_acknowledgement,
    encode_request,
)
from runstate.projections._folding import CommitDecoder, FoldPlan, ViewCache
from runstate.projections._reducers import FoldBatch
from runstate.projections._typing import ReadStore
from runstate.projections._views import RunView, TaskView

__all__ = ["Projector"]

log = get_logger("runstate.projector")

#: events folded between two chances for the query service to answer
_YIELD_EVERY = 256

#: deliveries held, not yet applied, at which the log's source is stopped (see
#: ``Follow``): also the feeder's frames held at most
_BUFFER_LIMIT = 50_000

#: events behind the stream's end from which a catch-up goes through a feeder process
_FEED_FROM = 50_000

#: the share of runs a feeder folds itself, on the other core (see ``_feeder``): the
#: stored 1,000,000-event log caught up at 30,700 events/s with 0.4, 33,300 with 0.45,
#: 35,700 with 0.5 and 35,100-35,600 with 0.55-0.6 (17,000-19,000 without)
_FEED_SHARE = 0.5

#: while a feeder feeds, the youngest generation is collected every this many allocations
#: (5,000 otherwise in a replica's process): a catch-up of the stored 1,000,000-event log
#: ran at 18,800-19,800 events/s so, against 16,400-17,700. A projector is given a feeder
#: only in a process of its own (see ``serve_replica``), which owns the collector's policy.
_FEED_YOUNG_COLLECTIONS = 50_000

#: batches of at most this many commits read and write the store on the event loop
#: thread, longer ones in a worker thread so that queries are answered meanwhile. A
#: worker thread waits for the GIL after each SQLite call while the event loop parses
#: deliveries, up to the switch interval (5 ms) each time: under steady load, batches
#: of 100-200 commits took 10-26 ms that way, against 1-3 ms inline.
_INLINE_COMMITS = 1000
#: the same while a feeder process feeds a catch-up: then the event loop only splits
#: frames, and a worker thread's SQLite calls overlap it (with 1,000 a catch-up was 5%
#: slower)
_FEED_INLINE_COMMITS = 64


class Projector:
    """Consumes the events stream into a ``ReadStore``.

    ``applied`` is the last stream sequence whose effects are committed;
    ``wait_for(seq)`` blocks until it reaches ``seq`` (for ``after=`` reads).
    """

    def __init__(
        self,
        log: EventLog,
        store: ReadStore,
        *,
        batch_size: int = 5000,
        cache_size: int = 20_000,
        buffer_limit: int = _BUFFER_LIMIT,
        feeder: Sequence[str] | None = None,
        feed_from: int = _FEED_FROM,
        feed_share: float = _FEED_SHARE,
        name: str = "projector",
    ) -> None:
        self._log = log
        self._settings = log.settings
        self._store = store
        self._subjects = log.subjects
        self._batch_size = batch_size
        self._cache = ViewCache(cache_size)
        self.name = name
        self.applied = store.checkpoint()
        self._advanced = anyio.Event()
        self._buffer_limit = buffer_limit
        # set when a feeder's reader has handed on a batch
        self._arrived = anyio.Event()
        # the follow being consumed, and the pauses of those before it
        self._follow: Any = None
        self._earlier_pauses = 0
        # the command of a feeder process for long backlogs (see ``_feeder``), or None
        self._feeder = list(feeder) if feeder is not None else None
        self._feed_from = feed_from
        if not 0 <= feed_share < 1:
            raise ValueError(
                f"feed_share is a fraction of the runs, from 0 to below 1, not {feed_share}"
            )
        self._feed_share = feed_share
        #: sequences received through a feeder process (as deliveries, or folded by it)
        self.fed = 0
        #: of those, the sequences the feeder folded itself
        self.folded_by_feeder = 0
        self._started = anyio.Event()
        self.deadlettered = 0
        self.events_applied = 0
        self._decode = CommitDecoder(self._subjects).decode

    @property
    def store(self) -> ReadStore:
        return self._store

    async def wait_for(self, sequence: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - the bound is the API
        """Return once ``sequence`` is applied; ``Timeout`` after ``timeout`` seconds."""
        if self.applied >= sequence:
            return
        with anyio.move_on_after(timeout):
            while self.applied < sequence:
                await self._advanced.wait()
            return
        raise Timeout(
            f"this replica has applied up to sequence {self.applied}, not {sequence}, after "
            f"waiting {timeout:g}s; the write may not exist yet, or the projector is behind"
        )

    async def wait_started(self) -> None:
        await self._started.wait()

    @property
    def pauses(self) -> int:
        """Times the log's source was stopped because ``buffer_limit`` deliveries were held."""
        current = getattr(self._follow, "pauses", 0) if self._follow is not None else 0
        return self._earlier_pauses + current

    async def run(self) -> None:
        """Consume and apply forever (until cancelled). Follows again after gaps or errors."""
        await self._check_stream()
        while True:
            if self._feeder is not None:
                await self._catch_up_through_feeder()
            try:
                async with self._log.follow(
                    start=self.applied + 1, buffer_limit=self._buffer_limit
                ) as batches:
                    self._follow = batches
                    self._started.set()
                    await self._consume(batches)
            except _Resubscribe as exc:
                log.info("projector.resubscribe", reason=str(exc), applied=self.applied)
            except Unavailable as exc:
                log.warning("projector.follow_failed", error=exc.message, applied=self.applied)
                await anyio.sleep(1.0)
            finally:
                self._earlier_pauses = self.pauses
                self._follow = None

    async def _catch_up_through_feeder(self) -> None:
        """Apply a backlog of ``feed_from`` or more events through a feeder process.

        Whatever goes wrong with the feeder only ends this early: the
        projector's own consumer goes on from what was applied.
        """
        try:
            last = await self._log.stream_last_sequence()
        except Unavailable:
            return
        if last - self.applied < self._feed_from:
            return
        self._started.set()
        log.info("projector.feeding", start=self.applied + 1, stop=last)
        try:
            await self._feed(self.applied + 1, last)
        except (FeederError, OSError) as exc:
            log.warning("projector.feeder_failed", error=str(exc), applied=self.applied)

    async def _feed(self, start: int, stop: int) -> None:
        feed = _Feed()
        try:
            with _young_collections_every(_FEED_YOUNG_COLLECTIONS):
                await self._feed_from_process(feed, start, stop)
        finally:
            if self._feed_share > 0:
                # the views of the feeder's runs cached here are older than the store's
                self._cache.clear()
        if feed.error is not None:
            raise feed.error
        if self.applied < stop:
            raise FeederError(f"the feeder stopped after sequence {self.applied} of {stop}")

    async def _feed_from_process(self, feed: _Feed, start: int, stop: int) -> None:
        assert self._feeder is not None
        share = self._feed_share if self._store.path != ":memory:" else 0.0
        request = FeedRequest(
            self._settings,
            start,
            stop,
            share=share,
            store_path=self._store.path if share > 0 else None,
            mark_every=self._batch_size,
            cache_size=self._cache.capacity,
        )
        process = await anyio.open_process(
            self._feeder, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        try:
            assert process.stdin is not None and process.stdout is not None
            await process.stdin.send(encode_request(request))
            acknowledge = process.stdin if share > 0 else None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_feeder, process.stdout, feed)
                await self._consume_fed(feed, acknowledge)
                tg.cancel_scope.cancel()
        finally:
            # all it wrote is applied (or it failed): nothing more is wanted from it
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.aclose()

    async def _read_feeder(self, stdout: anyio.abc.ByteReceiveStream, feed: _Feed) -> None:
        reader = FrameReader()
        deliveries: list[Delivery] = []
        try:
            while True:
                while feed.held >= self._buffer_limit:
                    feed.room = anyio.Event()
                    await feed.room.wait()
                try:
                    chunk = await stdout.receive(1 << 20)
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    if reader.partial or deliveries:
                        raise FeederError("the feeder's output ends between two marks") from None
                    return
                for item in reader.feed(chunk):
                    if isinstance(item, Mark):
                        feed.batches.append((deliveries, item))
                        feed.held += len(deliveries) + len(item.folded)
                        self.fed += len(deliveries) + len(item.folded)
                        self.folded_by_feeder += len(item.folded)
                        deliveries = []
                        self._arrived.set()
                    else:
                        deliveries.append(item)
        except FeederError as exc:
            feed.error = exc
        finally:
            feed.over = True
            self._arrived.set()

    async def _consume_fed(self, feed: _Feed, acknowledge: anyio.abc.ByteSendStream | None) -> None:
        """Apply what a feeder writes, mark by mark, until it is over."""
        while True:
            if not feed.batches:
                if feed.over:
                    return
                self._arrived = anyio.Event()
                if not feed.batches and not feed.over:
                    await self._arrived.wait()
                continue
            deliveries, mark = feed.batches.popleft()
            feed.held -= len(deliveries) + len(mark.folded)
            feed.room.set()
            try:
                await self._apply_fed(deliveries, mark)
            except FeederError as exc:
                feed.error = exc
                return
            if acknowledge is not None:
                try:
                    await acknowledge.send(encode_acknowledgement(mark.sequence))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass  # it is done: it has nothing more to fold
            # Let the reads waiting for what was just applied (``after=``) answer
            # before the next batch, which may already be waiting, is folded.
            await anyio.lowlevel.checkpoint()

    async def _apply_fed(self, deliveries: list[Delivery], mark: Mark) -> None:
        """Fold the deliveries up to a mark and commit them with the feeder's rows."""
        start = self.applied
        folded = mark.folded
        # the deliveries and the sequences the feeder folded are start+1..mark, each once
        if len(deliveries) + len(folded) != mark.sequence - start or (
            folded and (min(folded) <= start or max(folded) > mark.sequence)
        ):
            raise FeederError(
                f"a mark at sequence {mark.sequence} does not cover sequences {start + 1} "
                f"to {mark.sequence} ({len(deliveries)} fed, {len(folded)} folded by the feeder)"
            )
        theirs = set(folded)
        previous = start
        commits: list[tuple[int, list[Event]]] = []
        deadletters: list[tuple[int, str, str, bytes]] = []
        for seq, subject, data in deliveries:
            if seq <= previous or seq > mark.sequence or seq in theirs:
                raise FeederError(f"sequence {seq} is out of order before the mark {mark.sequence}")
            previous = seq
            try:
                commits.append((seq, self._decode(subject, data)))
            except (InvalidEvent, InvalidName) as exc:
                deadletters.append((seq, subject, exc.message, bytes(data)))
        if len(theirs) != len(folded):
            raise FeederError(f"the feeder folded a sequence twice before the mark {mark.sequence}")
        inline = len(commits) + len(deadletters) <= _FEED_INLINE_COMMITS
        runs, tasks = await self._fold(commits, inline)
        also = [mark.prepared] if mark.prepared is not None else []
        store = self._store

        def write() -> None:
            store.write(store.prepare(runs, tasks, mark.sequence, deadletters), also)

        await _in_store(inline, write)
        for part in also:
            deadletters += part.deadletters
        events = sum(len(events) for _, events in commits) + mark.events
        await self._advance(mark.sequence, deadletters, events)

    async def _check_stream(self) -> None:
        """Rebuild when the store was folded from another events stream (deleted and made again,
        or another server's): its checkpoint would mean nothing here."""
        identity = await self._log.stream_identity()
        last = await self._log.stream_last_sequence()
        known = await anyio.to_thread.run_sync(self._store.stream_identity)
        if (known is not None and known != identity) or self.applied > last:
            log.warning(
                "projector.store_from_another_stream",
                checkpoint=self.applied,
                stream_last_sequence=last,
                action="rebuilding from sequence 1",
            )
            await self.rebuild()
        if known != identity:
            await anyio.to_thread.run_sync(self._store.set_stream_identity, identity)

    async def _consume(self, batches: AsyncIterable[list[Delivery]]) -> None:
        """Apply deliveries as they arrive, for ever."""
        async for deliveries in batches:
            for start in range(0, len(deliveries), self._batch_size):
                await self.apply_batch(deliveries[start : start + self._batch_size])
                # Let the reads waiting for what was just applied (``after=``) answer
                # before the next batch, which may already be waiting, is folded.
                await anyio.lowlevel.checkpoint()

    # -- applying ----------------------------------------------------------------

    async def apply_batch(
        self, deliveries: list[Delivery], *, inline_commits: int = _INLINE_COMMITS
    ) -> None:
        """Fold a batch of delivered messages and commit it with the checkpoint.

        A batch of at most ``inline_commits`` commits reads and writes the
        store on the event loop, a longer one in a worker thread.
        """
        commits: list[tuple[int, list[Event]]] = []
        deadletters: list[tuple[int, str, str, bytes]] = []
        last = self.applied
        for seq, subject, data in deliveries:
            if seq <= last:
                continue  # delivered again after a consumer reset
            if seq != last + 1:
                if commits or deadletters:
                    break  # apply what we have, then re-subscribe from there
                raise _Resubscribe(f"expected sequence {last + 1}, got {seq}")
            last = seq
            try:
                events = self._decode(subject, data)
            except (InvalidEvent, InvalidName) as exc:
                deadletters.append((seq, subject, exc.message, bytes(data)))
                continue
            commits.append((seq, events))
        if last == self.applied:
            return
        inline = len(commits) + len(deadletters) <= inline_commits
        runs, tasks = await self._fold(commits, inline)
        await _in_store(inline, self._store.commit, runs, tasks, last, deadletters)
        await self._advance(last, deadletters, sum(len(events) for _, events in commits))

    async def _advance(
        self, last: int, deadletters: list[tuple[int, str, str, bytes]], events: int
    ) -> None:
        """Everything up to ``last`` is committed: publish its dead letters, move ``applied`` on."""
        for seq, subject, reason, data in deadletters:
            await self._publish_deadletter(seq, subject, reason, data)
        self.deadlettered += len(deadletters)
        self.events_applied += events
        self.applied = last
        self._advanced.set()
        self._advanced = anyio.Event()

    async def _fold(
        self, commits: list[tuple[int, list[Event]]], inline: bool = False
    ) -> tuple[list[RunView], list[TaskView]]:
        # Every view this batch touches, held here for the whole batch: the LRU
        # cache only saves store reads between batches and may evict at any time.
        plan = FoldPlan.of(commits, self._cache.lookup)
        if plan.missing_runs or plan.missing_tasks:
            plan.loaded(*await _in_store(inline, self._load, plan.missing_runs, plan.missing_tasks))
        batch = FoldBatch(plan.views)
        for number, (event, position, keys) in enumerate(plan.items, start=1):
            if number % _YIELD_EVERY == 0:
                # The query service shares this event loop: let it answer meanwhile.
                await anyio.lowlevel.checkpoint()
            batch.add(event, position, keys)
        changed = batch.changed()
        views = plan.views
        views.update(changed)
        self._cache.put(views)
        runs = [view for key, view in changed.items() if key[0] == "run"]
        tasks = [view for key, view in changed.items() if key[0] == "task"]
        return runs, tasks  # type: ignore[return-value]

    def _load(
        self, runs: Iterable[str], tasks: Iterable[str]
    ) -> tuple[dict[str, RunView], dict[str, TaskView]]:
        return self._store.load_runs(list(runs)), self._store.load_tasks(list(tasks))

    async def _publish_deadletter(self, seq: int, subject: str, reason: str, data: bytes) -> None:
        log.warning("projector.deadletter", sequence=seq, subject=subject, reason=reason)
        await self._log.publish_deadletter(seq, subject, reason, data)

    async def rebuild(self) -> None:
        """Forget every view and the checkpoint; the next ``run`` folds from sequence 1."""
        await anyio.to_thread.run_sync(self._store.reset)
        self._cache.clear()
        self.applied = 0


class _Resubscribe(Exception):
    pass


@dataclass(slots=True)
class _Feed:
    """A feeder's progress, between the task reading its frames and the one applying them."""

    #: the deliveries up to each mark read, and the mark
    batches: deque[tuple[list[Delivery], Mark]] = field(default_factory=deque)
    #: sequences in ``batches``
    held: int = 0
    over: bool = False
    error: FeederError | None = None
    #: set when the projector has applied a batch (the reader waits for it when full)
    room: anyio.Event = field(default_factory=anyio.Event)


@contextmanager
def _young_collections_every(allocations: int) -> Iterator[None]:
    """Collect the youngest generation every ``allocations`` allocations meanwhile."""
    before = gc.get_threshold()
    gc.set_threshold(allocations, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


_T = TypeVar("_T")


async def _in_store(inline: bool, work: Callable[..., _T], *args: Any) -> _T:
    """Run store ``work`` here (``inline``, see ``_INLINE_COMMITS``) or in a worker thread."""
    return work(*args) if inline else await anyio.to_thread.run_sync(work, *args)
