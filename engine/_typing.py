"""The event log seam: the protocols every part above it is written against.

Two implementations pass one contract suite (``runstate.engine.testing``):
``JetStreamEventLog`` on NATS JetStream, and ``MemoryEventLog`` in this
process, for unit tests and for trying runstate without a server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Protocol, runtime_checkable

from runstate.engine._batches import BatchReceipt
from runstate.engine._commits import Commit, Delivery, Receipt, StoredCommit
from runstate.engine._events import Event
from runstate.engine._names import Subjects
from runstate.engine._settings import Settings
from runstate.engine.errors import RunstateError

__all__ = ["BatchLog", "BlobStore", "EventLog", "Follow", "Pipeline"]


class Pipeline(Protocol):
    """Many appends in flight at once, confirmed together by ``flush``.

    ``append`` returns as soon as the commit is sent; ``flush`` waits for
    every outcome, returns the receipts in append order and raises the first
    error met (every outcome stays in ``results``). Leaving the ``async
    with`` block without an exception flushes.
    """

    async def __aenter__(self) -> Pipeline: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
        across_run: bool = False,
        commit_id: str | None = None,
    ) -> None: ...

    async def append_commit(self, commit: Commit) -> None: ...

    async def flush(self) -> list[Receipt]: ...

    @property
    def results(self) -> list[Receipt | RunstateError | None]: ...


class Follow(Protocol):
    """A live, ordered read of the log: batches of deliveries, each sequence once.

    ``delivered`` is the last sequence handed on.

    Use as ``async with log.follow(start=s) as batches: async for batch in
    batches:``. It goes on for ever (leave the block to stop), riding out
    reconnects: after one it resumes right after the last sequence delivered.
    """

    delivered: int

    async def __aenter__(self) -> Follow: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[list[Delivery]]: ...


class BlobStore(Protocol):
    """Content-addressed bytes (artifact values too large to travel in an event)."""

    async def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` unless something is stored there already."""

    async def get(self, name: str) -> bytes:
        """The bytes stored under ``name``; ``NotFound`` if none."""


class BatchLog(Protocol):
    """A side stream of batches with a commit id (``runstate.engine._batches``): the metric
    points (``EventLog.points``, ``runstate.engine._points``) or the task log lines
    (``EventLog.lines``, ``runstate.engine._lines``).

    A batch appended again with its commit id (within the duplicate window)
    is stored once and its first receipt returned, marked ``duplicate``.
    Faults outside the caller's control raise ``Unavailable`` after
    ``settings.retry_budget`` seconds.
    """

    async def append(self, subject: str, data: bytes, commit_id: str) -> BatchReceipt:
        """Store one encoded batch on ``subject``."""

    async def last_sequence(self) -> int:
        """The last sequence of the stream (0 when empty)."""

    def read(self, subject_filter: str | None = None, *, start: int = 1) -> AsyncIterator[Delivery]:
        """Batches matching ``subject_filter`` from ``start`` to the end when reading began."""

    def follow(self, subject_filter: str | None = None, *, start: int = 1) -> Follow:
        """A live read of batches from ``start`` on (see ``Follow``)."""


@runtime_checkable
class EventLog(Protocol):
    """The append-only log of commits, with what writers keep beside it.

    Appends check the entity's expected version (``ConflictError`` carries
    the current one) and store a commit id once (a retry returns the first
    receipt, marked ``duplicate``). Reads and follows deliver commits in
    stream order. Faults outside the caller's control raise ``Unavailable``
    after ``settings.retry_budget`` seconds, never a transport's own error.
    """

    settings: Settings
    subjects: Subjects

    @property
    def blobs(self) -> BlobStore: ...

    @property
    def points(self) -> BatchLog:
        """The metric points stream beside the commits."""

    @property
    def lines(self) -> BatchLog:
        """The task log lines stream beside the commits."""

    @property
    def max_payload(self) -> int:
        """The largest encoded commit the log accepts, in bytes."""

    async def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
        across_run: bool = False,
        commit_id: str | None = None,
    ) -> Receipt:
        """Append one commit; ``ConflictError``, ``PayloadTooLarge``, ``InvalidEvent``,
        ``Unavailable``.

        A conflict with nothing after the expected version but messages that are no
        commit of the entity (someone else's junk, which the projector dead-letters)
        is not one: the commit is appended after them (``runstate.engine._foreign``).
        """

    async def append_commit(self, commit: Commit) -> Receipt:
        """Append a prepared ``Commit``; see ``append``."""

    async def append_atomic(self, commits: Sequence[Commit]) -> list[Receipt]:
        """Append commits of several entities, all or none (at most 1,000)."""

    def pipeline(self, max_in_flight: int = 2048) -> Pipeline:
        """Many appends in flight, confirmed together."""

    async def last_sequence(self, subject: str) -> int:
        """The sequence of the last commit on ``subject`` (a literal subject, or a filter
        such as a whole run's ``rs.ev.<flow>.<run>.>``), 0 if none."""

    async def sequence_at(self, when: datetime) -> int:
        """The last sequence the log had stored at ``when`` (an aware time), 0 if none.

        Stored times are the log's own clock (the server's, on JetStream), not
        the writers'. A time not yet past gives the log's last sequence now.
        """

    async def stream_last_sequence(self) -> int:
        """The last sequence of the log (0 when empty)."""

    async def stream_identity(self) -> int:
        """A number that changes when the log is deleted and made again."""

    def read(
        self, subject_filter: str | None = None, *, start: int = 1, limit: int | None = None
    ) -> AsyncIterator[StoredCommit]:
        """Commits matching ``subject_filter`` from ``start``, up to the log's end when
        reading began; ``InvalidEvent`` names a commit that does not decode."""

    async def read_entity(self, subject: str) -> list[StoredCommit]:
        """Every commit of one entity subject, oldest first (junk on it left out)."""

    def follow(
        self,
        subject_filter: str | None = None,
        *,
        start: int = 1,
        buffer_limit: int | None = None,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> Follow:
        """A live read from ``start`` on: see ``Follow``.

        With ``buffer_limit``, a source that pushes stops while that many
        deliveries wait to be taken. With ``on_delivery``, each delivery is
        handed to it on the event loop as it arrives (it must not block)
        instead of being iterated: for fanning one follow out to many readers.
        """

    async def drain(
        self,
        deliver: Callable[[int, str, bytes], bool],
        *,
        start: int,
        subject_filter: str | None = None,
    ) -> None:
        """Hand each delivery from ``start`` on to ``deliver`` until it returns True.

        For bulk reads: ``deliver`` may be called from a worker thread, and
        what it raises ends the drain.
        """

    async def increment(self, subject: str, by: int = 1) -> int:
        """Add ``by`` to a counter atomically and return its new value."""

    async def read_key(
        self, key: str, *, valid: Callable[[bytes], bool] | None = None
    ) -> bytes | None:
        """The value a create-once key holds, or None (also when it is not ``valid``)."""

    async def claim_key(
        self, key: str, value: bytes, *, valid: Callable[[bytes], bool] | None = None
    ) -> bytes:
        """Store ``value`` under ``key`` unless it holds one; return what it holds.

        A value held that is not ``valid`` (someone else's junk) is replaced by
        ``value``, with a compare-and-set on its revision.
        """

    async def beat(self, subject: str, data: bytes) -> None:
        """Publish a heartbeat (only the latest per subject is kept); never waits for it."""

    async def publish_deadletter(
        self, sequence: int, subject: str, reason: str, data: bytes
    ) -> None:
        """Tell whoever listens that the commit at ``sequence`` was set aside, and why."""
