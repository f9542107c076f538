"""The event log in this process's memory: the same contract as JetStream's, no server.

For unit tests of everything above the seam (worker handles, the projector,
watches) and for trying runstate in a notebook without a server. Versions
are per subject and per run, commit ids are stored once, atomic batches are
all or none, and follows deliver every commit once, in order. Nothing
outlives the object.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import anyio.lowlevel

from runstate.engine._commits import (
    Commit,
    CommitEncoder,
    Delivery,
    EncodedCommit,
    Receipt,
    StoredCommit,
    check_atomic_size,
    check_read_time,
)
from runstate.engine._events import Event, decode_commit
from runstate.engine._foreign import Found, is_commit_of, past_foreign
from runstate.engine._lines import lines_side
from runstate.engine._memory_batches import MemoryBatchLog
from runstate.engine._names import Subjects, subject_matches
from runstate.engine._points import points_side
from runstate.engine._settings import Settings
from runstate.engine.errors import (
    ConflictError,
    InvalidEvent,
    InvalidName,
    NotFound,
    RunstateError,
)

__all__ = ["MemoryBlobStore", "MemoryEventLog"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: nats-server's default largest message, less room for headers
_MAX_PAYLOAD = 1024 * 1024 - 512


@dataclass(frozen=True, slots=True)
class _Stored:
    sequence: int
    subject: str
    data: bytes
    commit_id: str
    #: when it was stored, in ns since the epoch (never before the commit stored before it)
    stored_at: int


class MemoryBlobStore:
    """Blobs in a dict."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    async def put(self, name: str, data: bytes) -> None:
        self._blobs.setdefault(name, bytes(data))

    async def get(self, name: str) -> bytes:
        try:
            return self._blobs[name]
        except KeyError:
            raise NotFound(f"blob {name} is missing from the in-memory blob store") from None


class _MemoryFollow:
    """A follow of a ``MemoryEventLog``: deliveries pushed in as they are stored."""

    def __init__(
        self,
        log: MemoryEventLog,
        pattern: str,
        start: int,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self._log = log
        self._listener = on_delivery
        self._pattern = pattern
        self._start = start
        self._pending: deque[Delivery] = deque()
        self._arrived = anyio.Event()
        #: the last sequence handed on
        self.delivered = start - 1

    async def __aenter__(self) -> _MemoryFollow:
        for stored in self._log._messages[max(0, self._start - 1) :]:
            self.offer(stored)
        self._log._follows.add(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._log._follows.discard(self)

    def offer(self, stored: _Stored) -> None:
        if stored.sequence >= self._start and subject_matches(self._pattern, stored.subject):
            delivery = (stored.sequence, stored.subject, stored.data)
            if self._listener is not None:
                self.delivered = stored.sequence
                self._listener(delivery)
                return
            self._pending.append(delivery)
            self._arrived.set()

    def __aiter__(self) -> AsyncIterator[list[Delivery]]:
        if self._listener is not None:
            raise RuntimeError("this follow hands its deliveries to on_delivery")
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[Delivery]]:
        while True:
            if not self._pending:
                self._arrived = anyio.Event()
                await self._arrived.wait()
                continue
            batch = list(self._pending)
            self._pending.clear()
            self.delivered = batch[-1][0]
            yield batch


class _MemoryPipeline:
    """Appends stored at once; their outcomes reported by ``flush``, as JetStream's pipeline."""

    def __init__(self, log: MemoryEventLog) -> None:
        self._log = log
        self._outcomes: list[Receipt | RunstateError] = []
        self._flushed: list[Receipt | RunstateError] = []
        self._open = False

    async def __aenter__(self) -> _MemoryPipeline:
        self._open = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                await self.flush()
        finally:
            self._open = False

    async def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
        across_run: bool = False,
        commit_id: str | None = None,
    ) -> None:
        await self.append_commit(Commit.of(events, expected_version, across_run, commit_id))

    async def append_commit(self, commit: Commit) -> None:
        if not self._open:
            raise RuntimeError("use the pipeline as 'async with log.pipeline() as p:'")
        encoded = self._log.encode(commit)  # bad input raises here, as JetStream's does
        try:
            self._outcomes.append(await self._log._store_past_foreign(encoded))
        except ConflictError as exc:
            self._outcomes.append(exc)

    @property
    def results(self) -> list[Receipt | RunstateError | None]:
        return [*self._flushed, *self._outcomes]

    async def flush(self) -> list[Receipt]:
        outcomes, self._outcomes = self._outcomes, []
        self._flushed = outcomes
        for outcome in outcomes:
            if isinstance(outcome, RunstateError):
                raise outcome
        return [outcome for outcome in outcomes if isinstance(outcome, Receipt)]


class MemoryEventLog:
    """An ``EventLog`` held in memory; safe to share between tasks of one event loop."""

    def __init__(
        self, settings: Settings | None = None, *, max_payload: int = _MAX_PAYLOAD
    ) -> None:
        self.settings = settings or Settings()
        self.subjects = Subjects(self.settings.prefix)
        self._encoder = CommitEncoder(self.subjects)
        self._max_payload = max_payload
        self._messages: list[_Stored] = []
        self._last_by_subject: dict[str, int] = {}
        self._last_by_run: dict[tuple[str, str], int] = {}
        self._receipts: dict[str, Receipt] = {}
        self._counters: dict[str, int] = {}
        self._counted: dict[str, int] = {}
        self._keys: dict[str, bytes] = {}
        self._follows: set[_MemoryFollow] = set()
        self._identity = random.getrandbits(52)
        self._blobs = MemoryBlobStore()
        #: the latest heartbeat on each subject
        self.heartbeats: dict[str, bytes] = {}
        #: (sequence, subject, reason, data) of every commit set aside
        self.deadletters: list[tuple[int, str, str, bytes]] = []
        self._ids = itertools.count(1)
        self._points = MemoryBatchLog(points_side(self.settings.prefix))
        self._lines = MemoryBatchLog(lines_side(self.settings.prefix))

    @property
    def points(self) -> MemoryBatchLog:
        """The metric points stream, beside the commits."""
        return self._points

    @property
    def lines(self) -> MemoryBatchLog:
        """The task log lines stream, beside the commits."""
        return self._lines

    @property
    def blobs(self) -> MemoryBlobStore:
        return self._blobs

    @property
    def max_payload(self) -> int:
        return self._max_payload

    def encode(self, commit: Commit) -> EncodedCommit:
        return self._encoder.encode(commit, self._max_payload)

    # -- append ------------------------------------------------------------

    def _check(self, encoded: EncodedCommit) -> None:
        commit = encoded.commit
        expected = commit.expected_version
        if expected is None:
            return
        if commit.across_run:
            path = encoded.path
            assert path.run is not None
            current = self._last_by_run.get((path.flow, path.run), 0)
        else:
            current = self._last_by_subject.get(encoded.subject, 0)
        if current != expected:
            raise ConflictError(encoded.entity, expected, current)

    def _store(self, encoded: EncodedCommit) -> Receipt:
        commit = encoded.commit
        earlier = self._receipts.get(commit.commit_id)
        if earlier is not None:
            return Receipt(
                earlier.sequence, earlier.subject, earlier.commit_id, earlier.events, True
            )
        self._check(encoded)
        sequence = len(self._messages) + 1
        stored = _Stored(
            sequence, encoded.subject, encoded.data, commit.commit_id, self._store_time()
        )
        self._messages.append(stored)
        self._last_by_subject[encoded.subject] = sequence
        path = encoded.path
        assert path.run is not None
        self._last_by_run[(path.flow, path.run)] = sequence
        receipt = Receipt(sequence, encoded.subject, commit.commit_id, len(commit.events))
        self._receipts[commit.commit_id] = receipt
        for follow in list(self._follows):
            follow.offer(stored)
        return receipt

    async def _store_past_foreign(self, encoded: EncodedCommit) -> Receipt:
        """``_store``; a conflict with nothing but junk after the expected version steps
        over it, as JetStream's log does (``runstate.engine._foreign``)."""
        try:
            return self._store(encoded)
        except ConflictError:
            moved = await past_foreign(self.subjects, encoded, self._next_after)
            if moved is None:
                raise
            return self._store(moved)

    async def _next_after(self, commit_id: str, where: str, sequence: int) -> Found:
        for stored in self._messages[max(0, sequence) :]:
            if subject_matches(where, stored.subject):
                return stored.sequence, stored.subject, stored.data
        return None

    def _store_time(self) -> int:
        """Now, in ns since the epoch, and never before the last commit's time."""
        now = time.time_ns()
        if self._messages:
            now = max(now, self._messages[-1].stored_at)
        return now

    async def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
        across_run: bool = False,
        commit_id: str | None = None,
    ) -> Receipt:
        return await self.append_commit(Commit.of(events, expected_version, across_run, commit_id))

    async def append_commit(self, commit: Commit) -> Receipt:
        encoded = self.encode(commit)
        await anyio.lowlevel.checkpoint()
        return await self._store_past_foreign(encoded)

    async def append_atomic(self, commits: Sequence[Commit]) -> list[Receipt]:
        if not commits:
            return []
        check_atomic_size(commits)
        encoded = [self.encode(commit) for commit in commits]
        await anyio.lowlevel.checkpoint()
        earlier = [self._receipts.get(enc.commit.commit_id) for enc in encoded]
        if all(receipt is not None for receipt in earlier):
            return [self._store(enc) for enc in encoded]  # a retry: the first receipts
        # every check against the versions as the batch goes: two commits of one
        # entity in a batch see each other, as in JetStream
        last_by_subject = dict(self._last_by_subject)
        last_by_run = dict(self._last_by_run)
        for enc in encoded:
            commit = enc.commit
            path = enc.path
            assert path.run is not None
            if commit.expected_version is not None:
                current = (
                    last_by_run.get((path.flow, path.run), 0)
                    if commit.across_run
                    else last_by_subject.get(enc.subject, 0)
                )
                if current != commit.expected_version:
                    raise ConflictError("atomic batch", -1, current)
            last_by_subject[enc.subject] = last_by_run[(path.flow, path.run)] = -1
        return [self._store(enc) for enc in encoded]

    def pipeline(self, max_in_flight: int = 2048) -> _MemoryPipeline:
        return _MemoryPipeline(self)

    # -- counters, keys, heartbeats, dead letters -----------------------------

    async def increment(self, subject: str, by: int = 1) -> int:
        await anyio.lowlevel.checkpoint()
        value = self._counters.get(subject, 0) + by
        self._counters[subject] = value
        return value

    async def read_key(
        self, key: str, *, valid: Callable[[bytes], bool] | None = None
    ) -> bytes | None:
        await anyio.lowlevel.checkpoint()
        held = self._keys.get(key)
        if not held or (valid is not None and not valid(held)):
            return None  # junk: as if absent
        return held

    async def claim_key(
        self, key: str, value: bytes, *, valid: Callable[[bytes], bool] | None = None
    ) -> bytes:
        await anyio.lowlevel.checkpoint()
        held = self._keys.get(key)
        if not held or (valid is not None and not valid(held)):  # junk: replaced
            self._keys[key] = held = bytes(value)
        return held

    async def beat(self, subject: str, data: bytes) -> None:
        self.heartbeats[subject] = bytes(data)

    async def publish_deadletter(
        self, sequence: int, subject: str, reason: str, data: bytes
    ) -> None:
        self.deadletters.append((sequence, subject, reason, bytes(data)))

    # -- reading -----------------------------------------------------------

    async def last_sequence(self, subject: str) -> int:
        if "*" not in subject and ">" not in subject:
            return self._last_by_subject.get(subject, 0)
        for stored in reversed(self._messages):
            if subject_matches(subject, stored.subject):
                return stored.sequence
        return 0

    async def sequence_at(self, when: datetime) -> int:
        delta = check_read_time(when) - _EPOCH
        seconds = delta.days * 86_400 + delta.seconds
        nanoseconds = seconds * 1_000_000_000 + delta.microseconds * 1000
        # the stored times never go back, so the commits stored by then are a prefix
        return bisect.bisect_right(self._messages, nanoseconds, key=lambda m: m.stored_at)

    async def stream_last_sequence(self) -> int:
        return len(self._messages)

    async def stream_identity(self) -> int:
        return self._identity

    async def read(
        self, subject_filter: str | None = None, *, start: int = 1, limit: int | None = None
    ) -> AsyncIterator[StoredCommit]:
        pattern = subject_filter or self.subjects.all_events
        end = len(self._messages)
        count = 0
        for stored in self._messages[max(0, start - 1) : end]:
            if limit is not None and count >= limit:
                return
            if not subject_matches(pattern, stored.subject):
                continue
            try:
                events = decode_commit(stored.data)
            except InvalidEvent as exc:
                raise InvalidEvent(
                    f"commit at sequence {stored.sequence} on {stored.subject}: {exc.message}"
                ) from None
            count += 1
            yield StoredCommit(stored.sequence, stored.subject, events, stored.commit_id)
            await anyio.lowlevel.checkpoint()

    async def read_entity(self, subject: str) -> list[StoredCommit]:
        await anyio.lowlevel.checkpoint()
        return [  # what is no commit of the entity is someone else's junk, not its history
            StoredCommit(m.sequence, m.subject, decode_commit(m.data), m.commit_id)
            for m in self._messages
            if m.subject == subject and is_commit_of(self.subjects, m.subject, m.data)
        ]

    def follow(
        self,
        subject_filter: str | None = None,
        *,
        start: int = 1,
        buffer_limit: int | None = None,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> _MemoryFollow:
        return _MemoryFollow(self, subject_filter or self.subjects.all_events, start, on_delivery)

    async def drain(
        self,
        deliver: Callable[[int, str, bytes], bool],
        *,
        start: int,
        subject_filter: str | None = None,
    ) -> None:
        async with self.follow(subject_filter, start=start) as batches:
            async for batch in batches:
                for sequence, subject, data in batch:
                    if deliver(sequence, subject, data):
                        return

    # -- for tests -----------------------------------------------------------

    def put_raw(self, subject: str, data: bytes) -> int:
        """Store bytes on a subject as a foreign writer might; returns the sequence."""
        stored = _Stored(
            len(self._messages) + 1,
            subject,
            bytes(data),
            f"raw-{next(self._ids)}",
            self._store_time(),
        )
        self._messages.append(stored)
        self._last_by_subject[subject] = stored.sequence
        try:  # on an entity's subject it moves the run's version too, as on JetStream
            path = self.subjects.pathspec_of(subject)
        except InvalidName:
            pass
        else:
            assert path.run is not None
            self._last_by_run[(path.flow, path.run)] = stored.sequence
        for follow in list(self._follows):
            follow.offer(stored)
        return stored.sequence

    def put_raw_key(self, key: str, data: bytes) -> None:
        """Put bytes under a key as a foreign writer might (no claim)."""
        self._keys[key] = bytes(data)
