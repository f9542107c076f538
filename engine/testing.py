"""Test helpers for code built on runstate's engine: an event factory and the event log
contract suite.

``EventFactory`` builds valid events without a worker. ``EventLogContract``
is the one suite every ``EventLog`` implementation passes: subclass it in a
test module and give it a ``log`` fixture (see tests/test_log_contract.py).
Importing this module needs pytest.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest

from runstate.engine._commits import ATOMIC_BATCH_LIMIT, Commit, Delivery
from runstate.engine._event_factory import EventFactory
from runstate.engine._events import (
    MetadataRecorded,
)
from runstate.engine._lines import decode_lines, encode_lines, lines_subject
from runstate.engine._names import parse_pathspec
from runstate.engine._points import decode_points, encode_points, points_subject
from runstate.engine._typing import BatchLog, EventLog
from runstate.engine.errors import (
    BadFilter,
    ConflictError,
    InvalidEvent,
    InvalidName,
    NotFound,
    PayloadTooLarge,
)

__all__ = ["EventFactory", "EventLogContract"]


_factory = EventFactory()


class EventLogContract:
    """What every ``EventLog`` promises. Subclass it with a ``log`` fixture.

    The tests use flow ``Contract`` and assume an empty log.
    """

    run = "Contract/1"
    task = "Contract/1/train/1"
    other_run = "Contract/2"

    def subject(self, log: EventLog, pathspec: str) -> str:
        """The subject of a run's or a task's commits."""
        path = parse_pathspec(pathspec, min_depth=2, max_depth=4)
        assert path.run is not None
        if path.task is None:
            return log.subjects.run(path.flow, path.run)
        assert path.step is not None
        return log.subjects.task(path.flow, path.run, path.step, path.task)

    async def test_appends_return_increasing_sequences_and_read_gives_the_events_back(
        self, log: EventLog
    ) -> None:
        """Receipts carry the stream sequence; reading gives every event back, in order."""
        first = await log.append(_factory.note(self.run, "a"))
        second = await log.append([_factory.note(self.task, "b"), _factory.note(self.task, "c")])
        assert second.sequence == first.sequence + 1 and second.events == 2
        commits = [commit async for commit in log.read()]
        assert [c.sequence for c in commits] == [first.sequence, second.sequence]
        values = [
            e.payload.entries[0].value
            for c in commits
            for e in c.events
            if isinstance(e, MetadataRecorded)
        ]
        assert values == ["a", "b", "c"]
        assert commits[1].commit_id == second.commit_id
        assert await log.stream_last_sequence() == second.sequence

    async def test_an_expected_version_that_is_not_the_entitys_raises_conflict_with_the_current(
        self, log: EventLog
    ) -> None:
        """An append expecting another version stores nothing and says the current version."""
        first = await log.append(_factory.note(self.task), expected_version=0)
        with pytest.raises(ConflictError) as info:
            await log.append(_factory.note(self.task), expected_version=0)
        assert info.value.current_version == first.sequence
        second = await log.append(_factory.note(self.task), expected_version=first.sequence)
        assert await log.last_sequence(self.subject(log, self.task)) == second.sequence
        assert await log.stream_last_sequence() == 2

    async def test_an_across_run_version_covers_every_subject_of_the_run(
        self, log: EventLog
    ) -> None:
        """Expecting version 0 across the run fails once any subject of the run has a commit."""
        await log.append(_factory.note(self.task))
        with pytest.raises(ConflictError):
            await log.append(_factory.note(self.run), expected_version=0, across_run=True)
        await log.append(_factory.note(self.other_run), expected_version=0, across_run=True)

    async def test_a_commit_id_is_stored_once(self, log: EventLog) -> None:
        """Appending a commit id again returns the first receipt, marked duplicate."""
        first = await log.append(_factory.note(self.run), commit_id="the-one")
        again = await log.append(_factory.note(self.run), commit_id="the-one")
        assert again.sequence == first.sequence and again.duplicate and not first.duplicate
        assert await log.stream_last_sequence() == 1

    async def test_a_retried_commit_with_an_expected_version_returns_its_receipt(
        self, log: EventLog
    ) -> None:
        """A retry of a stored commit that expected a version is its own receipt, no conflict."""
        first = await log.append(_factory.note(self.task), expected_version=0, commit_id="retry-me")
        again = await log.append(_factory.note(self.task), expected_version=0, commit_id="retry-me")
        assert again.sequence == first.sequence and again.duplicate

    async def test_bad_commits_are_refused_before_anything_is_stored(self, log: EventLog) -> None:
        """Mixed entities, a step's events and an oversized commit raise typed errors."""
        with pytest.raises(InvalidEvent):
            await log.append([_factory.note(self.run), _factory.note(self.task)])
        with pytest.raises(InvalidEvent):
            await log.append([])
        with pytest.raises(InvalidName):
            await log.append(_factory.note("Contract/1/train"))
        with pytest.raises(PayloadTooLarge):
            await log.append(_factory.note(self.run, "x" * (log.max_payload + 1)))
        assert await log.stream_last_sequence() == 0

    async def test_a_pipeline_confirms_its_appends_in_order(self, log: EventLog) -> None:
        """A pipeline's receipts come in append order with contiguous sequences."""
        async with log.pipeline() as pipe:
            for n in range(300):
                await pipe.append(_factory.note(f"Contract/1/train/{n % 7}", str(n)))
            receipts = await pipe.flush()
        sequences = [r.sequence for r in receipts]
        assert sequences == list(range(sequences[0], sequences[0] + 300))

    async def test_a_pipeline_raises_the_first_conflict_and_keeps_every_outcome(
        self, log: EventLog
    ) -> None:
        """flush raises the conflict; the other commits are stored and in ``results``."""
        await log.append(_factory.note(self.task), expected_version=0)
        with pytest.raises(ConflictError):
            async with log.pipeline() as pipe:
                await pipe.append(_factory.note(self.run))
                await pipe.append(_factory.note(self.task), expected_version=0)
                await pipe.append(_factory.note(self.other_run))
        outcomes = pipe.results
        assert isinstance(outcomes[1], ConflictError)
        assert outcomes[0] is not None and outcomes[2] is not None
        assert await log.stream_last_sequence() == 3

    async def test_an_atomic_batch_is_stored_whole_in_consecutive_sequences(
        self, log: EventLog
    ) -> None:
        """All commits of a batch get consecutive sequences."""
        commits = [Commit([_factory.note(f"Contract/1/train/{n}")], 0) for n in range(5)]
        receipts = await log.append_atomic(commits)
        assert [r.sequence for r in receipts] == [1, 2, 3, 4, 5]
        assert await log.append_atomic([]) == []

    async def test_an_atomic_batch_with_one_wrong_version_stores_nothing(
        self, log: EventLog
    ) -> None:
        """One failed version check in a batch stores none of its commits."""
        await log.append(_factory.note(self.task), expected_version=0)
        commits = [
            Commit([_factory.note("Contract/1/train/2")], 0),
            Commit([_factory.note(self.task)], 0),
        ]
        with pytest.raises(ConflictError):
            await log.append_atomic(commits)
        assert await log.stream_last_sequence() == 1
        with pytest.raises(PayloadTooLarge):
            await log.append_atomic([Commit([_factory.note(self.run)])] * (ATOMIC_BATCH_LIMIT + 1))

    async def test_read_filters_by_subject_and_starts_and_stops_where_asked(
        self, log: EventLog
    ) -> None:
        """A subject filter, a start and a limit select the commits read."""
        for n in range(6):
            await log.append(_factory.note(self.task if n % 2 else self.run, str(n)))
        task_subject = self.subject(log, self.task)
        assert [c.sequence for c in await log.read_entity(task_subject)] == [2, 4, 6]
        assert [c.sequence async for c in log.read(start=3, limit=2)] == [3, 4]
        everything_of_run = log.subjects.run_all("Contract", "1")
        assert len([c async for c in log.read(everything_of_run)]) == 6
        assert await log.read_entity(self.subject(log, "Contract/9/x/1")) == []

    async def test_follow_delivers_history_then_live_commits_each_once_in_order(
        self, log: EventLog
    ) -> None:
        """A follow from a sequence gives what is stored from there, then what comes."""
        for n in range(3):
            await log.append(_factory.note(self.run, str(n)))
        seen: list[int] = []
        with anyio.fail_after(10):
            async with log.follow(start=2) as batches:
                await log.append(_factory.note(self.task))
                async for batch in batches:
                    seen.extend(delivery[0] for delivery in batch)
                    if seen[-1] >= 5:
                        break
                    await log.append(_factory.note(self.task))
        assert seen == [2, 3, 4, 5]

    async def test_follow_with_a_filter_and_a_listener_pushes_only_matching_commits(
        self, log: EventLog
    ) -> None:
        """A follow with ``on_delivery`` hands each matching delivery to it, once."""
        pushed: list[tuple[int, str]] = []
        arrived = anyio.Event()

        def listen(delivery: Delivery) -> None:
            pushed.append((delivery[0], delivery[1]))
            if len(pushed) == 2:
                arrived.set()

        task_subject = self.subject(log, self.task)
        with anyio.fail_after(10):
            async with log.follow(task_subject, start=1, on_delivery=listen) as follow:
                await log.append(_factory.note(self.run))
                await log.append(_factory.note(self.task))
                await log.append(_factory.note(self.other_run))
                await log.append(_factory.note(self.task))
                await arrived.wait()
                assert follow.delivered == 4
        assert pushed == [(2, task_subject), (4, task_subject)]

    async def test_drain_hands_on_each_delivery_until_told_to_stop(self, log: EventLog) -> None:
        """``drain`` delivers in order from ``start`` until ``deliver`` returns True."""
        for n in range(10):
            await log.append(_factory.note(self.run, str(n)))
        seen: list[int] = []

        def deliver(sequence: int, subject: str, data: bytes) -> bool:
            seen.append(sequence)
            return sequence == 8

        with anyio.fail_after(10):
            await log.drain(deliver, start=3)
        assert seen == [3, 4, 5, 6, 7, 8]

    async def test_last_sequence_of_a_subject_filter_is_its_last_commit(
        self, log: EventLog
    ) -> None:
        """``last_sequence`` of a whole run's filter is the run's last commit, 0 for none."""
        await log.append(_factory.note(self.run))
        await log.append(_factory.note(self.task))
        await log.append(_factory.note(self.other_run))
        assert await log.last_sequence(log.subjects.run_all("Contract", "1")) == 2
        assert await log.last_sequence(log.subjects.run_all("Contract", "9")) == 0

    async def test_sequence_at_a_time_is_the_last_commit_stored_by_then(
        self, log: EventLog
    ) -> None:
        """``sequence_at`` gives the last sequence stored at a time; a naive time is refused."""
        before = datetime.now(UTC) - timedelta(seconds=5)
        await log.append(_factory.note(self.run, "0"))
        await anyio.sleep(0.05)
        middle = datetime.now(UTC)
        await anyio.sleep(0.05)
        await log.append(_factory.note(self.run, "1"))
        await log.append(_factory.note(self.task))
        assert await log.sequence_at(before) == 0
        assert await log.sequence_at(middle) == 1
        assert await log.sequence_at(middle.astimezone(timezone(timedelta(hours=-5)))) == 1
        assert await log.sequence_at(datetime.now(UTC) + timedelta(hours=1)) == 3
        with pytest.raises(BadFilter):
            await log.sequence_at(datetime(2026, 1, 1))

    async def test_counters_count_atomically(self, log: EventLog) -> None:
        """Concurrent increments each get their own value; the last is the sum."""
        subject = log.subjects.run_counter("Contract")
        values: list[int] = []

        async def bump() -> None:
            values.append(await log.increment(subject))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(bump)
        assert sorted(values) == list(range(1, 21))
        assert await log.increment(subject, by=5) == 25

    async def test_a_key_is_claimed_once(self, log: EventLog) -> None:
        """The first claim of a key wins; later claims get the first value back."""
        assert await log.read_key("Contract\0key") is None
        assert await log.claim_key("Contract\0key", b"first") == b"first"
        assert await log.claim_key("Contract\0key", b"second") == b"first"
        assert await log.read_key("Contract\0key") == b"first"

    async def test_blobs_are_stored_by_name_and_missing_ones_are_not_found(
        self, log: EventLog
    ) -> None:
        """A blob reads back as stored; an absent one raises ``NotFound``."""
        data = b"\x00weights" * 1000
        name = hashlib.sha256(data).hexdigest()
        await log.blobs.put(name, data)
        await log.blobs.put(name, data)  # equal content: stored once, no error
        assert await log.blobs.get(name) == data
        with pytest.raises(NotFound):
            await log.blobs.get("0" * 64)

    async def test_the_identity_of_a_log_stays_while_it_lives(self, log: EventLog) -> None:
        """``stream_identity`` is the same before and after appends."""
        before = await log.stream_identity()
        await log.append(_factory.note(self.run))
        assert await log.stream_identity() == before

    async def test_a_heartbeat_and_a_dead_letter_are_accepted(self, log: EventLog) -> None:
        """Heartbeats and dead letters are fire-and-forget: they never raise or touch the log."""
        await log.beat(log.subjects.heartbeat(parse_pathspec(self.task)), b"{}")
        await log.publish_deadletter(1, "rs.ev.x", "not runstate's", b"junk")
        assert await log.stream_last_sequence() == 0

    # -- the side streams: metric points and log lines (runstate.engine._batches) ------

    @pytest.fixture(params=["points", "lines"])
    def side(self, request: pytest.FixtureRequest) -> str:
        """Which side stream a test runs on: ``log.points`` or ``log.lines``."""
        return str(request.param)

    def _batch(
        self, log: EventLog, side: str, n: int, attempt: int | None = 0
    ) -> tuple[str, bytes]:
        """A message of side stream ``side`` carrying ``n``: on the task, or on the run
        (points) or the task's next attempt (lines) when ``attempt`` is None."""
        if side == "lines":
            path = parse_pathspec(self.task)
            number = 1 if attempt is None else attempt
            lines = [(1.0, 1, f"{float(n)}\n")]
            return lines_subject(log.settings.prefix, path), encode_lines(str(path), number, lines)
        path = parse_pathspec(self.task if attempt is not None else self.run)
        rows = [{"_step": n, "_timestamp": 1.0, "loss": float(n)}]
        subject = points_subject(log.settings.prefix, path)
        return subject, encode_points(str(path), attempt, "default", rows)

    @staticmethod
    def _value(side: str, data: bytes) -> float:
        if side == "lines":
            return float(decode_lines(data).lines()[0][2])
        return float(decode_points(data).rows[0]["loss"])

    async def test_side_appends_return_increasing_sequences_and_read_gives_them_back(
        self, log: EventLog, side: str
    ) -> None:
        """Batches get increasing sequences in their own stream, read back as sent."""
        stream: BatchLog = getattr(log, side)
        sent = [self._batch(log, side, n) for n in range(3)] + [self._batch(log, side, 9, None)]
        receipts = [await stream.append(s, d, f"b-{i}") for i, (s, d) in enumerate(sent)]
        assert [r.sequence for r in receipts] == [1, 2, 3, 4]
        assert await log.stream_last_sequence() == 0  # the events stream is untouched
        assert await stream.last_sequence() == 4
        read = [delivery async for delivery in stream.read(start=2)]
        assert [(seq, subject, data) for seq, subject, data in read] == [
            (n + 2, s, d) for n, (s, d) in enumerate(sent[1:])
        ]
        assert self._value(side, read[0][2]) == 1.0
        if side == "points":
            only_run = [d async for d in stream.read(sent[3][0])]
            assert [d[0] for d in only_run] == [4]
        else:
            only_task = [d async for d in stream.read(sent[0][0])]
            assert [d[0] for d in only_task] == [1, 2, 3, 4]

    async def test_side_streams_are_apart(self, log: EventLog) -> None:
        """Points and lines are streams of their own: neither reads the other's batches."""
        await log.points.append(*self._batch(log, "points", 0), "apart-p")
        await log.lines.append(*self._batch(log, "lines", 1), "apart-l")
        assert [d[0] async for d in log.lines.read()] == [1]
        assert [self._value("points", d[2]) async for d in log.points.read()] == [0.0]
        assert await log.lines.last_sequence() == await log.points.last_sequence() == 1

    async def test_a_side_batch_sent_again_with_its_commit_id_is_stored_once(
        self, log: EventLog, side: str
    ) -> None:
        """The duplicate window drops a batch sent again with its commit id."""
        stream: BatchLog = getattr(log, side)
        subject, data = self._batch(log, side, 0)
        first = await stream.append(subject, data, "b-once")
        again = await stream.append(subject, data, "b-once")
        assert (again.sequence, again.duplicate, first.duplicate) == (first.sequence, True, False)
        assert await stream.last_sequence() == 1

    async def test_side_follow_delivers_history_then_live_batches_each_once(
        self, log: EventLog, side: str
    ) -> None:
        """A follow gives what is stored from its start, then what comes, in order."""
        stream: BatchLog = getattr(log, side)
        for n in range(3):
            await stream.append(*self._batch(log, side, n), f"f-{n}")
        seen: list[int] = []
        with anyio.fail_after(10):
            async with stream.follow(start=2) as batches:
                await stream.append(*self._batch(log, side, 3), "f-3")
                async for batch in batches:
                    seen.extend(delivery[0] for delivery in batch)
                    if seen[-1] >= 5:
                        break
                    await stream.append(*self._batch(log, side, seen[-1] + 1), f"f-{seen[-1]}x")
        # each batch appended once a batch arrives: the last delivery may hold more than 5
        assert seen == list(range(2, seen[-1] + 1)) and seen[-1] >= 5
