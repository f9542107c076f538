"""The event log contract, run against both implementations: in memory and on JetStream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runstate.engine import JetStreamEventLog, MemoryEventLog, Settings, open_nats, provision
from runstate.engine._commits import Commit
from runstate.engine._events import encode_commit
from runstate.engine._foreign import FOREIGN_LOOKAHEAD
from runstate.engine.errors import ConflictError
from runstate.engine.testing import EventFactory, EventLogContract

pytestmark = pytest.mark.anyio


class TestMemoryEventLog(EventLogContract):
    """The in-memory log keeps the contract."""

    @pytest.fixture
    def log(self) -> MemoryEventLog:
        """An empty in-memory log."""
        return MemoryEventLog(Settings(prefix="rs"))


@asynccontextmanager
async def _jetstream_log(nats_url: str) -> AsyncIterator[JetStreamEventLog]:
    """A JetStream log on a fresh server with runstate's streams."""
    settings = Settings(nats_url=nats_url, retry_budget=5.0)
    nc = await open_nats(settings)
    try:
        await provision(nc, settings)
        yield JetStreamEventLog(nc, settings)
    finally:
        await nc.close()


class TestJetStreamEventLog(EventLogContract):
    """The JetStream log keeps the contract, against a real nats-server."""

    @pytest.fixture
    async def log(self, nats_url: str) -> AsyncIterator[JetStreamEventLog]:
        """A JetStream log on a fresh server with runstate's streams."""
        async with _jetstream_log(nats_url) as log:
            yield log


_factory = EventFactory()

#: what JetStream answers to a stream info request: the junk a reply into the log stores
_JUNK = b'{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{"name":"RS_EVENTS"}}'


class ForeignMessagesContract:
    """Junk on an entity's subject or under a key (what the projector dead-letters) breaks
    nothing: appends step over it on their conflict path, keys holding it count as absent.
    Subclasses put the junk as someone else would."""

    run = "Foreign/1"
    task = "Foreign/1/train/1"

    async def put_foreign(self, log: Any, subject: str, data: bytes) -> None:
        raise NotImplementedError

    async def put_foreign_key(self, log: Any, key: str, data: bytes) -> None:
        raise NotImplementedError

    async def test_an_append_steps_over_junk_after_the_version_it_expects(self, log: Any) -> None:
        first = await log.append(_factory.run_created("Foreign/1"), expected_version=0)
        subject = log.subjects.run("Foreign", "1")
        await self.put_foreign(log, subject, _JUNK)
        await self.put_foreign(log, subject, b"not even json")
        junk_last = await log.last_sequence(subject)
        assert junk_last == first.sequence + 2
        second = await log.append(_factory.note(self.run), expected_version=first.sequence)
        assert second.sequence == junk_last + 1
        assert [c.sequence for c in await log.read_entity(subject)] == [
            first.sequence,
            second.sequence,
        ]
        # a real commit in between is still a conflict, junk or not around it
        await self.put_foreign(log, subject, _JUNK)
        await log.append(_factory.note(self.run), expected_version=second.sequence + 1)
        with pytest.raises(ConflictError):
            await log.append(_factory.note(self.run), expected_version=second.sequence)

    async def test_a_commit_of_another_entity_on_the_subject_is_junk_too(self, log: Any) -> None:
        """The projector dead-letters a commit on a subject not its entity's: so is it here."""
        first = await log.append(_factory.note(self.task), expected_version=0)
        subject = log.subjects.task("Foreign", "1", "train", "1")
        misplaced = log.encode(Commit.of(_factory.note("Foreign/1/train/2"))).data
        await self.put_foreign(log, subject, misplaced)
        second = await log.append(_factory.note(self.task), expected_version=first.sequence)
        assert second.sequence == first.sequence + 2

    async def test_an_across_run_check_steps_over_junk_on_any_subject_of_the_run(
        self, log: Any
    ) -> None:
        await self.put_foreign(log, log.subjects.task("Foreign", "1", "train", "1"), _JUNK)
        created = await log.append(
            _factory.run_created("Foreign/1"), expected_version=0, across_run=True
        )
        assert created.sequence == 2

    async def test_a_pipelined_append_steps_over_junk(self, log: Any) -> None:
        first = await log.append(_factory.note(self.task), expected_version=0)
        await self.put_foreign(log, log.subjects.task("Foreign", "1", "train", "1"), _JUNK)
        async with log.pipeline() as pipeline:
            await pipeline.append(_factory.note(self.task), expected_version=first.sequence)
            receipts = await pipeline.flush()
        assert [r.sequence for r in receipts] == [first.sequence + 2]

    async def test_a_key_holding_junk_is_absent_and_replaced_by_a_claim(self, log: Any) -> None:
        """A value its claimer does not call valid is as if absent, and a claim replaces it."""
        await self.put_foreign_key(log, "k", _JUNK)
        assert await log.read_key("k") == _JUNK  # without a check, any bytes are a value
        assert await log.read_key("k", valid=is_record) is None
        value = encode_commit([_factory.run_created("Foreign/1")])
        assert await log.claim_key("k", value, valid=is_record) == value
        assert await log.read_key("k", valid=is_record) == value
        other = encode_commit([_factory.run_created("Foreign/2")])
        assert await log.claim_key("k", other, valid=is_record) == value  # a real claim stays


def is_record(data: bytes) -> bool:
    return data.startswith(b"[")


class TestMemoryForeignMessages(ForeignMessagesContract):
    @pytest.fixture
    def log(self) -> MemoryEventLog:
        return MemoryEventLog(Settings(prefix="rs"))

    async def put_foreign(self, log: Any, subject: str, data: bytes) -> None:
        log.put_raw(subject, data)

    async def put_foreign_key(self, log: Any, key: str, data: bytes) -> None:
        log.put_raw_key(key, data)


class TestJetStreamForeignMessages(ForeignMessagesContract):
    @pytest.fixture
    async def log(self, nats_url: str) -> AsyncIterator[JetStreamEventLog]:
        async with _jetstream_log(nats_url) as log:
            yield log

    async def put_foreign(self, log: Any, subject: str, data: bytes) -> None:
        await log.nc.jetstream().publish(subject, data)  # no headers: as JetStream's answer

    async def put_foreign_key(self, log: Any, key: str, data: bytes) -> None:
        kv = await log.nc.jetstream().key_value(log.subjects.idempotency_bucket)
        await kv.put(JetStreamEventLog._key(key), data)


@given(st.lists(st.booleans(), max_size=FOREIGN_LOOKAHEAD + 4))
def test_an_append_conflicts_exactly_when_a_commit_came_after_its_version(
    after: list[bool],
) -> None:
    """Whatever came after the version an append expects (True: another writer's commit,
    False: junk), it is stored unless a commit is among them or the junk is too long."""

    async def check() -> None:
        log = MemoryEventLog(Settings(prefix="rs"))
        task = "Foreign/1/train/1"
        subject = log.subjects.task("Foreign", "1", "train", "1")
        first = await log.append(_factory.note(task), expected_version=0)
        for commit in after:
            if commit:
                await log.append(_factory.note(task))
            else:
                log.put_raw(subject, _JUNK)
        stored = not any(after) and len(after) <= FOREIGN_LOOKAHEAD
        try:
            receipt = await log.append(_factory.note(task), expected_version=first.sequence)
        except ConflictError:
            assert not stored
        else:
            assert stored and receipt.sequence == first.sequence + len(after) + 1

    anyio.run(check)
