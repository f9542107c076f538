"""The event log: append commits to JetStream with optimistic concurrency and idempotency.

A commit is one message holding one or more events of one entity (a run's
``.r`` subject or one task's subject). Every append may name the version it
expects, the stream sequence of the entity's last commit (0 for "no commit
yet"); a mismatch is a ``ConflictError`` carrying the current version. The
commit's id is its ``Nats-Msg-Id`` so a retried append is stored once.

nats-server checks the expected sequence *before* de-duplication, so a retry
whose first try was stored (but whose ack was lost) comes back as a conflict
at a sequence that holds our own commit; ``_send`` recognises that case and
returns the original receipt instead of a conflict.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RawStreamMsg
from nats.nuid import NUID

from runstate.engine._connection import transient_api_error
from runstate.engine._events import Event, decode_commit, encode_commit
from runstate.engine._logging import get_logger
from runstate.engine._names import Pathspec, Subjects, parse_pathspec
from runstate.engine._settings import Settings
from runstate.engine.errors import (
    ConflictError,
    InvalidEvent,
    InvalidName,
    PayloadTooLarge,
    RunstateError,
    Unavailable,
)

__all__ = ["Commit", "EventLog", "Receipt", "StoredCommit"]

log = get_logger("runstate.log")


def header(msg: Msg | RawStreamMsg, name: str) -> str | None:
    """A message header's value; nats-py gives lists instead of strings when the
    optional ``fast_mail_parser`` is installed, so take the first."""
    if not msg.headers:
        return None
    value: Any = msg.headers.get(name)
    if isinstance(value, list):
        return str(value[0]) if value else None
    return value if value is None else str(value)


class _CommitIds:
    """Unique commit ids: a random per-process prefix and a counter (renewed after fork)."""

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._prefix = NUID().next().decode("ascii")[:16]
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


_commit_ids = _CommitIds()


def new_commit_id() -> str:
    """A commit id unique across processes (16 random characters and a counter)."""
    return _commit_ids.next()


class _Replies:
    """Request/reply over one wildcard reply subscription, for the write path.

    nats-py's ``request`` makes a NUID token, reads ``os.urandom`` and wraps
    the wait in ``asyncio.wait_for`` for every call: a quarter of a writer's
    CPU per transition. Here a token is a counter and a reply resolves a future.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Any = None
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._lock = anyio.Lock()

    async def _start(self) -> None:
        async with self._lock:
            if self._sub is None:
                self._prefix = self._nc.new_inbox()
                self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) + 1 :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        timeout: float,  # noqa: ASYNC109
    ) -> Msg:
        """Send and wait for the reply; nats-py's errors for no responders and timeouts."""
        if self._sub is None:
            await self._start()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        # A timer that fails the future: an anyio cancel scope per request cost
        # a tenth of a writer's CPU. Cancelling the caller still cancels the wait.
        timer = loop.call_later(timeout, _expire, future)
        try:
            await self._nc.publish(subject, data, reply=f"{self._prefix}.{token}", headers=headers)
            msg = await future
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
        if not msg.data and header(msg, "Status") == "503":
            raise nats.errors.NoRespondersError
        return msg


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


_TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    TimeoutError,
)
_NOT_FOUND_OR_TRANSIENT: tuple[type[BaseException], ...] = (
    nats.js.errors.NotFoundError,
    *_TRANSIENT,
)
_READ_TRANSIENT: tuple[type[BaseException], ...] = (
    *_TRANSIENT,
    nats.js.errors.ServiceUnavailableError,
)
# "wrong last sequence: <seq>", and the same without the sequence
_CONFLICT_CODES = frozenset({10071, 10164})
# "atomic publish batch contains duplicate message id"
_BATCH_DUPLICATE_CODE = 10201
_HEADER_OVERHEAD = 512
ATOMIC_BATCH_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that a commit is in the log: its stream sequence and commit id.

    ``sequence`` is the entity's new version and the ``after=`` value that
    makes a later read see this write.
    """

    sequence: int
    subject: str
    commit_id: str
    events: int = 1
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Commit:
    """Events of one entity to append together, with the version they expect."""

    events: Sequence[Event]
    expected_version: int | None = None
    #: check the version over all subjects of the run (``<flow>.<run>.>``)
    across_run: bool = False
    commit_id: str = field(default_factory=new_commit_id)


@dataclass(frozen=True, slots=True)
class StoredCommit:
    """A commit read back from the log."""

    sequence: int
    subject: str
    events: list[Event]
    commit_id: str | None = None


def _conflict_sequence(description: str) -> int:
    # "wrong last sequence: 42"
    tail = description.rsplit(":", 1)[-1].strip()
    return int(tail) if tail.isdigit() else -1


class EventLog:
    """Appends commits to the events stream and reads them back.

    One ``EventLog`` per NATS connection; it is safe to share between tasks.
    """

    def __init__(self, nc: NATS, settings: Settings) -> None:
        self._nc = nc
        self._settings = settings
        self.subjects = Subjects(settings.prefix)
        self._stream = self.subjects.events_stream
        self._js = nc.jetstream()
        self._subject_cache: dict[str, tuple[str, Pathspec]] = {}
        self._replies = _Replies(nc)

    @property
    def nc(self) -> NATS:
        return self._nc

    @property
    def settings(self) -> Settings:
        return self._settings

    # -- subjects ----------------------------------------------------------

    def subject_of(self, events: Sequence[Event]) -> tuple[str, Pathspec]:
        """Return the subject and entity of a commit; all events must share one entity."""
        if not events:
            raise InvalidEvent("a commit needs at least one event")
        pathspec = events[0].pathspec
        for event in events[1:]:
            if event.pathspec != pathspec:
                raise InvalidEvent(
                    f"a commit holds events of one entity: {pathspec} and {event.pathspec} differ"
                )
        cached = self._subject_cache.get(pathspec)
        if cached is not None:
            return cached
        result = self._entity_subject(pathspec)
        if len(self._subject_cache) > 100_000:
            self._subject_cache.clear()
        self._subject_cache[pathspec] = result
        return result

    def _entity_subject(self, pathspec: str) -> tuple[str, Pathspec]:
        path = parse_pathspec(pathspec, min_depth=2, max_depth=4)
        if path.depth == 3:
            raise InvalidName(f"events belong to a run or a task, not to the step {pathspec}")
        if path.task is not None:
            assert path.run is not None and path.step is not None
            return self.subjects.task(path.flow, path.run, path.step, path.task), path
        assert path.run is not None
        return self.subjects.run(path.flow, path.run), path

    def _headers(self, commit: Commit, path: Pathspec) -> dict[str, str]:
        headers = {"Nats-Msg-Id": commit.commit_id}
        if commit.expected_version is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(commit.expected_version)
            if commit.across_run:
                assert path.run is not None
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = self.subjects.run_all(
                    path.flow, path.run
                )
        return headers

    def _encode(self, commit: Commit) -> tuple[str, Pathspec, bytes, dict[str, str]]:
        subject, path = self.subject_of(commit.events)
        data = encode_commit(commit.events)
        limit = self._nc.max_payload - _HEADER_OVERHEAD
        if len(data) > limit:
            raise PayloadTooLarge(
                f"commit for {path} is {len(data)} bytes, over the server's limit of {limit}; "
                "store large values as artifacts (they go to the object store) or split the commit"
            )
        return subject, path, data, self._headers(commit, path)

    # -- append ------------------------------------------------------------

    async def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
        across_run: bool = False,
        commit_id: str | None = None,
    ) -> Receipt:
        """Append one commit and wait for JetStream to store it.

        ``expected_version`` is the entity's last sequence (0: no commit yet),
        or None for no check. Transient faults are retried with the same
        commit id for ``settings.retry_budget`` seconds. Raises
        ``ConflictError``, ``PayloadTooLarge``, ``InvalidEvent`` or ``Unavailable``.
        """
        batch = [events] if not isinstance(events, Sequence) else list(events)
        commit = Commit(batch, expected_version, across_run, commit_id or new_commit_id())
        subject, path, data, headers = self._encode(commit)
        return await self._send(subject, data, headers, commit, str(path))

    async def append_commit(self, commit: Commit) -> Receipt:
        """Append a prepared ``Commit``; see ``append``."""
        subject, path, data, headers = self._encode(commit)
        return await self._send(subject, data, headers, commit, str(path))

    async def _send(
        self, subject: str, data: bytes, headers: dict[str, str], commit: Commit, entity: str
    ) -> Receipt:
        deadline = time.monotonic() + self._settings.retry_budget
        delay = 0.05
        tries = 0
        while True:
            tries += 1
            remaining = deadline - time.monotonic()
            try:
                msg = await self._replies.request(
                    subject,
                    data,
                    headers,
                    timeout=max(0.05, min(self._settings.request_timeout, remaining)),
                )
            except _TRANSIENT as exc:
                if time.monotonic() + delay >= deadline:
                    raise Unavailable(
                        f"could not append to {entity} within {self._settings.retry_budget:.0f}s "
                        f"({type(exc).__name__}); nothing is lost: retry with commit id "
                        f"{commit.commit_id}",
                        commit_id=commit.commit_id,
                    ) from None
                log.debug("append.retry", entity=entity, error=type(exc).__name__, tries=tries)
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except nats.errors.ConnectionClosedError:
                # the request may have reached the server before the close
                raise Unavailable(
                    f"the NATS connection closed before {entity} was confirmed; nothing is "
                    f"lost: retry with commit id {commit.commit_id} on a new connection",
                    commit_id=commit.commit_id,
                ) from None
            reply = orjson.loads(msg.data)
            error = reply.get("error")
            if error is None:
                return Receipt(
                    reply["seq"],
                    subject,
                    commit.commit_id,
                    len(commit.events),
                    bool(reply.get("duplicate", False)),
                )
            code = error.get("err_code")
            if code in _CONFLICT_CODES:
                return await self._settle_conflict(subject, entity, commit, error)
            if transient_api_error(error):
                if time.monotonic() + delay >= deadline:
                    raise Unavailable(
                        f"JetStream kept refusing {entity}: {error.get('description')}; "
                        f"nothing is lost: retry with commit id {commit.commit_id}",
                        commit_id=commit.commit_id,
                    )
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            raise RunstateError(
                f"JetStream refused the append to {entity}: {error.get('description')} "
                f"(code {code})"
            )

    async def _last_commit(self, subject: str, commit_id: str) -> tuple[int, str | None]:
        """(sequence, commit id) of the last message on ``subject`` ((0, None): none).

        Asks the stream leader, as ``_holds_commit`` does, and raises
        ``Unavailable`` when it cannot tell.
        """
        try:
            msg = await self._js.get_last_msg(self._stream, subject)
        except nats.js.errors.NotFoundError:
            return 0, None
        except _TRANSIENT as exc:
            raise Unavailable(
                f"could not read the last commit on {subject} to check for commit {commit_id} "
                f"({type(exc).__name__}); nothing is lost: retry with commit id {commit_id}",
                commit_id=commit_id,
            ) from None
        return int(msg.seq or 0), header(msg, "Nats-Msg-Id")

    async def _settle_conflict(
        self, subject: str, entity: str, commit: Commit, error: dict[str, Any]
    ) -> Receipt:
        """The receipt of ``commit`` if the entity's last commit is this very commit,
        else ``ConflictError``.

        The server checks the expected version before de-duplication, so a retry
        (ours, or the caller's after ``Unavailable``) whose first try was stored
        meets a conflict with itself.
        """
        current = _conflict_sequence(str(error.get("description", "")))
        if current < 0:
            # the form without the sequence (a stream leader, on a cluster):
            # what matters is the entity's last commit, so read it
            current, last_id = await self._last_commit(subject, commit.commit_id)
            ours = last_id == commit.commit_id
        else:
            ours = await self._holds_commit(current, commit.commit_id)
        if ours:
            return Receipt(current, subject, commit.commit_id, len(commit.events), True)
        raise ConflictError(entity, commit.expected_version or 0, current)

    async def _holds_commit(self, sequence: int, commit_id: str) -> bool:
        """True if the message at ``sequence`` is the commit ``commit_id``.

        Asks the stream leader: a direct get may be answered by a replica that
        has not stored ``sequence`` yet, which would turn our own stored commit
        into a conflict. Raises ``Unavailable`` when it cannot tell.
        """
        if sequence <= 0:
            return False
        try:
            msg = await self._js.get_msg(self._stream, seq=sequence)
        except nats.js.errors.NotFoundError:
            return False
        except _TRANSIENT as exc:
            raise Unavailable(
                f"could not check whether commit {commit_id} is at sequence {sequence} "
                f"({type(exc).__name__}); nothing is lost: retry with commit id {commit_id}",
                commit_id=commit_id,
            ) from None
        return header(msg, "Nats-Msg-Id") == commit_id

    def pipeline(self, max_in_flight: int = 2048) -> Pipeline:
        """Return a ``Pipeline`` for many appends in flight, confirmed together."""
        return Pipeline(self, max_in_flight)

    async def append_atomic(self, commits: Sequence[Commit]) -> list[Receipt]:
        """Append commits of several entities as one JetStream atomic batch: all or none.

        Each commit keeps its own expected version; if any check fails nothing
        is stored and ``ConflictError`` is raised. At most 1000 commits.
        """
        if not commits:
            return []
        if len(commits) > ATOMIC_BATCH_LIMIT:
            raise PayloadTooLarge(
                f"an atomic batch holds at most {ATOMIC_BATCH_LIMIT} commits, not {len(commits)}"
            )
        encoded = [self._encode(commit) for commit in commits]
        deadline = time.monotonic() + self._settings.retry_budget
        delay = 0.05
        while True:
            batch_id = new_commit_id()
            try:
                reply = await self._publish_batch(batch_id, encoded)
            except _TRANSIENT as exc:
                if time.monotonic() + delay >= deadline:
                    raise Unavailable(
                        "could not append an atomic batch within the retry budget "
                        f"({type(exc).__name__}); retry with the same commits (commit ids)"
                    ) from None
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            error = reply.get("error")
            if error is None:
                last = int(reply["seq"])
                first = last - len(commits) + 1
                return [
                    Receipt(first + i, subject, commit.commit_id, len(commit.events))
                    for i, (commit, (subject, *_)) in enumerate(zip(commits, encoded, strict=True))
                ]
            code = error.get("err_code")
            if code in _CONFLICT_CODES or code == _BATCH_DUPLICATE_CODE:
                # A retry (ours, or the caller's after Unavailable) whose first try was
                # stored: within the duplicate window the server refuses the batch for its
                # commit ids (10201), after it for the expected versions (10071).
                stored = await self._find_stored_batch(commits, encoded)
                if stored is not None:
                    return stored
                if code == _BATCH_DUPLICATE_CODE:
                    raise RunstateError(
                        "JetStream refused the atomic batch: some of its commit ids are already "
                        "stored, but not as this batch; give new commits new ids"
                    )
                current = _conflict_sequence(str(error.get("description", "")))
                raise ConflictError("atomic batch", -1, current)
            if transient_api_error(error):
                if time.monotonic() + delay >= deadline:
                    raise Unavailable(
                        f"JetStream kept refusing the batch: {error.get('description')}"
                    )
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            raise RunstateError(
                f"JetStream refused the atomic batch: {error.get('description')} (code {code})"
            )

    async def _publish_batch(
        self, batch_id: str, encoded: list[tuple[str, Pathspec, bytes, dict[str, str]]]
    ) -> dict[str, Any]:
        last = len(encoded)
        for index, (subject, _, data, headers) in enumerate(encoded[:-1], start=1):
            await self._nc.publish(
                subject,
                data,
                headers={**headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(index)},
            )
        subject, _, data, headers = encoded[-1]
        msg = await self._nc.request(
            subject,
            data,
            timeout=self._settings.request_timeout,
            headers={
                **headers,
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(last),
                "Nats-Batch-Commit": "1",
            },
        )
        result: dict[str, Any] = orjson.loads(msg.data)
        return result

    async def _find_stored_batch(
        self, commits: Sequence[Commit], encoded: list[tuple[str, Pathspec, bytes, dict[str, str]]]
    ) -> list[Receipt] | None:
        subject = encoded[-1][0]
        try:
            msg = await self._js.get_last_msg(self._stream, subject)  # the leader's view
        except _NOT_FOUND_OR_TRANSIENT:
            return None
        if header(msg, "Nats-Msg-Id") != commits[-1].commit_id:
            return None
        last = int(msg.seq or 0)
        first = last - len(commits) + 1
        return [
            Receipt(first + i, enc[0], commit.commit_id, len(commit.events), True)
            for i, (commit, enc) in enumerate(zip(commits, encoded, strict=True))
        ]

    # -- counters ------------------------------------------------------------

    async def increment(self, subject: str, by: int = 1) -> int:
        """Atomically add ``by`` to a JetStream counter subject and return the new value."""
        msg_id = new_commit_id()
        deadline = time.monotonic() + self._settings.retry_budget
        delay = 0.05
        while True:
            try:
                msg = await self._nc.request(
                    subject,
                    b"",
                    timeout=self._settings.request_timeout,
                    headers={"Nats-Incr": f"+{by}", "Nats-Msg-Id": msg_id},
                )
            except _TRANSIENT:
                if time.monotonic() + delay >= deadline:
                    raise Unavailable(
                        f"could not increment {subject} within the retry budget"
                    ) from None
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            reply = orjson.loads(msg.data)
            error = reply.get("error")
            if error is not None:
                if transient_api_error(error):
                    if time.monotonic() + delay >= deadline:
                        raise Unavailable(
                            f"JetStream kept refusing to increment {subject}: "
                            f"{error.get('description')}"
                        )
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                raise RunstateError(f"counter {subject} refused: {error.get('description')}")
            if "val" not in reply:
                # a duplicate: the counter's value at that message, from the leader
                stored = await self._js.get_msg(
                    self.subjects.counters_stream, seq=int(reply["seq"])
                )
                return int(orjson.loads(stored.data or b"{}")["val"])
            return int(reply["val"])

    # -- reading -----------------------------------------------------------

    async def last_sequence(self, subject: str) -> int:
        """The sequence of the last commit on a (literal) subject, 0 if none."""
        try:
            msg = await self._js.get_last_msg(self._stream, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return 0
        return int(msg.seq or 0)

    async def stream_last_sequence(self) -> int:
        """The last sequence of the events stream (0 when empty)."""
        info = await self._js.stream_info(self._stream)
        return int(info.state.last_seq)

    async def read(
        self,
        subject_filter: str | None = None,
        *,
        start: int = 1,
        limit: int | None = None,
        batch: int = 512,
    ) -> AsyncIterator[StoredCommit]:
        """Yield stored commits matching ``subject_filter`` from sequence ``start``, oldest first.

        Stops at the end of the log as it was when reading began. Commits
        that cannot be decoded raise ``InvalidEvent`` naming their sequence.
        """
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start),
            filter_subject=subject_filter or self.subjects.all_events,
            mem_storage=True,
            inactive_threshold=10.0,
        )
        deadline = time.monotonic() + self._settings.retry_budget
        delay = 0.05
        while True:
            try:
                sub = await self._js.pull_subscribe(
                    subject_filter or self.subjects.all_events,
                    durable=None,
                    stream=self._stream,
                    config=config,
                )
                break
            except _READ_TRANSIENT:
                if time.monotonic() + delay >= deadline:
                    raise Unavailable(
                        f"could not start reading {subject_filter or 'the log'} within "
                        f"{self._settings.retry_budget:.0f}s; is the stream available?"
                    ) from None
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
        consumer_name: str | None = None
        try:
            info = await sub.consumer_info()
            consumer_name = info.name
            pending = int(info.num_pending or 0)
            count = 0
            wanted = pending if limit is None else min(pending, limit)
            while count < wanted:
                try:
                    msgs = await sub.fetch(
                        min(batch, wanted - count), timeout=self._settings.request_timeout
                    )
                except _TRANSIENT:
                    # The messages exist (num_pending said so): a cluster may be
                    # electing a leader. Ask again within the retry budget.
                    if time.monotonic() >= deadline:
                        raise Unavailable(
                            f"could not read {subject_filter or 'the log'} within "
                            f"{self._settings.retry_budget:.0f}s; is the stream available?"
                        ) from None
                    continue
                for msg in msgs:
                    yield self._stored(msg)
                    count += 1
                    if count >= wanted:
                        break
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                try:
                    await sub.unsubscribe()
                    if consumer_name is not None:
                        # An ephemeral consumer would otherwise linger until its inactivity timeout.
                        await self._js.delete_consumer(self._stream, consumer_name)
                except (nats.errors.Error, nats.js.errors.Error):
                    pass

    def _stored(self, msg: Msg) -> StoredCommit:
        seq = int(msg.metadata.sequence.stream)
        try:
            events = decode_commit(msg.data)
        except InvalidEvent as exc:
            raise InvalidEvent(
                f"commit at sequence {seq} on {msg.subject}: {exc.message}"
            ) from None
        commit_id = header(msg, "Nats-Msg-Id")
        return StoredCommit(seq, msg.subject, events, commit_id)

    async def read_entity(self, subject: str) -> list[StoredCommit]:
        """All commits of one entity subject (a run header or a task), oldest first."""
        if await self.last_sequence(subject) == 0:
            return []
        return [commit async for commit in self.read(subject)]


class Pipeline:
    """Many appends in flight at once, confirmed together by ``flush``.

    ``append`` returns as soon as the commit is sent (waiting only when
    ``max_in_flight`` commits await their acks); ``flush`` waits for every
    ack and returns the receipts in append order. A commit whose ack does not
    come is re-sent with its commit id through ``EventLog.append``'s retry.
    Errors (conflicts, refusals) are raised by ``flush`` as the first one met;
    every other commit's outcome is in ``results``.
    """

    def __init__(self, log: EventLog, max_in_flight: int) -> None:
        self._log = log
        self._nc = log.nc
        self._max_in_flight = max_in_flight
        self._room = anyio.Event()
        self._room.set()
        self._tokens = itertools.count()
        self._inbox = ""
        self._sub: Any = None
        self._entries: list[_PipelineEntry] = []
        # the entries of the last flush, so ``results`` still has them after it raised
        self._flushed: list[_PipelineEntry] = []
        self._waiting: dict[str, _PipelineEntry] = {}
        self._all_done = anyio.Event()
        self._all_done.set()

    async def __aenter__(self) -> Pipeline:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox + ".*", cb=self._on_reply)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                await self.flush()
        finally:
            if self._sub is not None:
                await self._sub.unsubscribe()
                self._sub = None

    async def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
        across_run: bool = False,
        commit_id: str | None = None,
    ) -> None:
        """Send one commit without waiting for its ack; see ``EventLog.append``."""
        batch = [events] if not isinstance(events, Sequence) else list(events)
        commit = Commit(batch, expected_version, across_run, commit_id or new_commit_id())
        await self.append_commit(commit)

    async def append_commit(self, commit: Commit) -> None:
        if self._sub is None:
            raise RuntimeError("use the pipeline as 'async with log.pipeline() as p:'")
        subject, path, data, headers = self._log._encode(commit)
        while len(self._waiting) >= self._max_in_flight:
            self._room = anyio.Event()
            with anyio.move_on_after(self._log.settings.request_timeout) as waited:
                await self._room.wait()
            if waited.cancelled_caught:
                # acks lost with a crashed server never come: re-send those commits
                await self._resend_unconfirmed()
        token = str(next(self._tokens))
        entry = _PipelineEntry(commit, subject, str(path), data, headers, time.monotonic())
        self._entries.append(entry)
        self._waiting[token] = entry
        if self._all_done.is_set():
            self._all_done = anyio.Event()
        try:
            await self._nc.publish(subject, data, reply=f"{self._inbox}.{token}", headers=headers)
        except _TRANSIENT:
            pass  # flush re-sends it

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        entry = self._waiting.pop(token, None)
        if entry is None:
            return
        if not self._room.is_set():
            self._room.set()
        if not msg.data:  # a status message (no responders): re-sent by flush
            entry.needs_resend = True
        else:
            reply = orjson.loads(msg.data)
            error = reply.get("error")
            if error is None:
                entry.receipt = Receipt(
                    reply["seq"],
                    entry.subject,
                    entry.commit.commit_id,
                    len(entry.commit.events),
                    bool(reply.get("duplicate", False)),
                )
            elif error.get("err_code") in _CONFLICT_CODES:
                entry.conflict = error  # settled by flush: it may be this commit's own retry
            else:
                entry.needs_resend = True
        if not self._waiting:
            self._all_done.set()

    @property
    def results(self) -> list[Receipt | RunstateError | None]:
        """The outcome of each commit of the last flush and of those sent since, in order."""
        return [entry.receipt or entry.error for entry in (*self._flushed, *self._entries)]

    async def flush(self) -> list[Receipt]:
        """Wait for every commit sent so far; return their receipts in order.

        Raises the first ``ConflictError`` met (every other outcome is in
        ``results``), or ``Unavailable`` when NATS stays out of reach for the
        retry budget: the unconfirmed commits are kept, and calling ``flush``
        again re-sends them with their commit ids.
        """
        with anyio.move_on_after(self._log.settings.request_timeout):
            await self._all_done.wait()
        await self._resend_unconfirmed()
        for entry in self._entries:
            if entry.conflict is not None:
                try:
                    entry.receipt = await self._log._settle_conflict(
                        entry.subject, entry.entity, entry.commit, entry.conflict
                    )
                except ConflictError as exc:
                    entry.error = exc
                entry.conflict = None
        entries, self._entries = self._entries, []
        self._flushed = entries
        for entry in entries:
            if entry.error is not None:
                raise entry.error
        return [entry.receipt for entry in entries if entry.receipt is not None]

    async def _resend_unconfirmed(self) -> None:
        """Re-send, one by one with their commit ids, the commits whose ack has not come.

        Raises ``Unavailable`` naming every unconfirmed commit when NATS stays
        out of reach for the retry budget.
        """
        for token, entry in list(self._waiting.items()):
            self._waiting.pop(token, None)
            entry.needs_resend = True
        self._all_done.set()
        self._room.set()
        for entry in self._entries:
            if entry.needs_resend and entry.receipt is None and entry.error is None:
                try:
                    entry.receipt = await self._log._send(
                        entry.subject, entry.data, entry.headers, entry.commit, entry.entity
                    )
                except ConflictError as exc:
                    entry.error = exc
                except Unavailable as exc:
                    unconfirmed = [
                        e.commit.commit_id
                        for e in self._entries
                        if e.receipt is None and e.error is None
                    ]
                    raise Unavailable(
                        f"{len(unconfirmed)} pipelined commits are unconfirmed ({exc.message}); "
                        "nothing is lost: call flush() again to re-send them with the same "
                        "commit ids",
                        commit_ids=unconfirmed,
                    ) from None


@dataclass(slots=True)
class _PipelineEntry:
    commit: Commit
    subject: str
    entity: str
    data: bytes
    headers: dict[str, str]
    sent_at: float
    receipt: Receipt | None = None
    error: RunstateError | None = None
    needs_resend: bool = False
    # the server's conflict error, until flush tells a real conflict from our own retry
    conflict: dict[str, Any] | None = None
