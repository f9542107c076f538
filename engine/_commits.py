"""Commits: what every event log appends and reads back, whatever stores it.

A commit is one or more events of one entity (a run's ``.r`` subject or one
task's subject), appended together with the version they expect and a
commit id that makes a retry harmless.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nats.nuid import NUID

from runstate.engine._events import Event, encode_commit
from runstate.engine._names import Pathspec, Subjects, parse_pathspec
from runstate.engine.errors import BadFilter, InvalidEvent, InvalidName, PayloadTooLarge

__all__ = [
    "ATOMIC_BATCH_LIMIT",
    "Commit",
    "CommitEncoder",
    "Delivery",
    "EncodedCommit",
    "Receipt",
    "StoredCommit",
    "check_read_time",
    "new_commit_id",
]

#: commits in one atomic batch at most (JetStream's limit)
ATOMIC_BATCH_LIMIT = 1000

#: a commit as delivered by a follow: (stream sequence, subject, encoded events)
Delivery = tuple[int, str, bytes]


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
    """Events of one entity to append together, with the version they expect.

    ``expected_version`` is the entity's last sequence (0: no commit yet), or
    None for no check; with ``across_run`` the check covers every subject of
    the run (``<flow>.<run>.>``), so that nothing of the run exists yet.
    """

    events: Sequence[Event]
    expected_version: int | None = None
    across_run: bool = False
    commit_id: str = field(default_factory=new_commit_id)

    @classmethod
    def of(
        cls,
        events: Event | Sequence[Event],
        expected_version: int | None = None,
        across_run: bool = False,
        commit_id: str | None = None,
    ) -> Commit:
        """A commit of one event or several, with a new commit id unless one is given."""
        batch = [events] if not isinstance(events, Sequence) else list(events)
        return cls(batch, expected_version, across_run, commit_id or new_commit_id())


@dataclass(frozen=True, slots=True)
class StoredCommit:
    """A commit read back from the log."""

    sequence: int
    subject: str
    events: list[Event]
    commit_id: str | None = None


@dataclass(frozen=True, slots=True)
class EncodedCommit:
    """A commit ready to store: its subject, entity, bytes and the run it belongs to."""

    commit: Commit
    subject: str
    path: Pathspec
    data: bytes

    @property
    def entity(self) -> str:
        return str(self.path)


class CommitEncoder:
    """Checks and encodes commits for one subject prefix, with a cache of entity subjects."""

    def __init__(self, subjects: Subjects) -> None:
        self.subjects = subjects
        self._subject_cache: dict[str, tuple[str, Pathspec]] = {}

    def subject_of(self, events: Sequence[Event]) -> tuple[str, Pathspec]:
        """The subject and entity of a commit; all events must share one entity."""
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

    def encode(self, commit: Commit, limit: int) -> EncodedCommit:
        """Check and encode ``commit``; ``PayloadTooLarge`` over ``limit`` bytes."""
        subject, path = self.subject_of(commit.events)
        data = encode_commit(commit.events)
        if len(data) > limit:
            raise PayloadTooLarge(
                f"commit for {path} is {len(data)} bytes, over the server's limit of {limit}; "
                "store large values as artifacts (they go to the object store) or split the commit"
            )
        return EncodedCommit(commit, subject, path, data)


def check_atomic_size(commits: Sequence[Commit]) -> None:
    """``PayloadTooLarge`` for an atomic batch over ``ATOMIC_BATCH_LIMIT`` commits."""
    if len(commits) > ATOMIC_BATCH_LIMIT:
        raise PayloadTooLarge(
            f"an atomic batch holds at most {ATOMIC_BATCH_LIMIT} commits, not {len(commits)}"
        )


def check_read_time(when: Any) -> datetime:
    """``when`` if it is an aware datetime; ``BadFilter`` if not (a naive one could be any time).

    For reads of the log as it was at a time (``EventLog.sequence_at``).
    """
    if not isinstance(when, datetime) or when.utcoffset() is None:
        raise BadFilter(
            f"a time to read the log at is an aware datetime, not {when!r}: give it a "
            "timezone, such as datetime(2026, 11, 22, 9, 30, tzinfo=UTC)"
        )
    return when
