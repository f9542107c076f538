"""A stream leader's "wrong last sequence" without a number (10164) decides nothing.

On a cluster, the leader refuses a conditional append without comparing
anything while another conditional write to the same subject is in flight,
and it clears that mark only after it has acknowledged the write. So a
writer that appends to an entity right after its previous append was
acknowledged can be told 10164 for a commit that would land. CI met it once
(``test_writes_survive_a_node_killed_under_load``: "expected version 3029
but it is at 3029"). A single server never answers 10164, so these tests
hand the log that answer for a commit and check what it makes of it against
what the real server holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from runstate.engine import Commit, JetStreamEventLog, Settings
from runstate.engine._acks import Ack
from runstate.engine._names import parse_pathspec
from runstate.engine._retry import TransientRefusal
from runstate.engine.errors import ConflictError
from runstate.engine.testing import EventFactory

pytestmark = pytest.mark.anyio

factory = EventFactory()


@pytest.fixture
def settings(nats_url: str, tmp_path: Path) -> Settings:
    return Settings(nats_url=nats_url, data_dir=tmp_path / "data", retry_budget=5.0)


IN_FLIGHT = Ack(0, False, {"code": 400, "err_code": 10164, "description": "wrong last sequence"})


def commit(text: str, expected: int, commit_id: str | None = None) -> Commit:
    return Commit.of(factory.note("F/1/s/1", text), expected, False, commit_id)


async def test_in_flight_at_the_expected_version_is_asked_again_not_a_conflict(
    log: JetStreamEventLog,
) -> None:
    first = await log.append(factory.note("F/1/s/1", "a"))

    with pytest.raises(TransientRefusal):
        await log.receipt(log.encode(commit("b", first.sequence)), IN_FLIGHT)


async def test_in_flight_before_the_expected_version_landed_is_asked_again(
    log: JetStreamEventLog,
) -> None:
    """The leader may not hold the version the writer was told of yet."""
    with pytest.raises(TransientRefusal):
        await log.receipt(log.encode(commit("b", 7)), IN_FLIGHT)


async def test_in_flight_whose_last_commit_is_this_one_is_its_receipt(
    log: JetStreamEventLog,
) -> None:
    before = await log.append(factory.note("F/1/s/1", "a"))
    stored = await log.append_commit(commit("b", before.sequence, "commit-b"))

    receipt = await log.receipt(log.encode(commit("b", before.sequence, "commit-b")), IN_FLIGHT)

    assert receipt.sequence == stored.sequence
    assert receipt.duplicate


async def test_in_flight_after_another_commit_landed_is_a_conflict(
    log: JetStreamEventLog,
) -> None:
    before = await log.append(factory.note("F/1/s/1", "a"))
    other = await log.append(factory.note("F/1/s/1", "other"), expected_version=before.sequence)

    with pytest.raises(ConflictError) as caught:
        await log.receipt(log.encode(commit("b", before.sequence)), IN_FLIGHT)
    assert caught.value.current_version == other.sequence


IN_FLIGHT_REPLY = orjson.dumps({"error": IN_FLIGHT.error})


def refused_in_flight_once(monkeypatch: pytest.MonkeyPatch, nc: NATS) -> list[str]:
    """Make the leader answer the first publish on an event subject with 10164 and store
    nothing, as it does while another write to that subject is in flight; the subjects
    it refused."""
    refused: list[str] = []
    publish = nc.publish

    async def leader(subject: str, payload: bytes = b"", reply: str = "", **kw: Any) -> None:
        if not refused and subject.startswith("rs.ev.") and reply:
            refused.append(subject)
            await publish(reply, IN_FLIGHT_REPLY)
            return
        await publish(subject, payload, reply=reply, **kw)

    monkeypatch.setattr(nc, "publish", leader)
    return refused


async def count(log: JetStreamEventLog) -> int:
    info: Any = await log.nc.jetstream().stream_info(log.subjects.events_stream)
    return int(info.state.messages)


async def test_an_append_told_in_flight_is_stored_once_and_acknowledged(
    log: JetStreamEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await log.append(factory.note("F/1/s/1", "a"))
    refused = refused_in_flight_once(monkeypatch, log.nc)

    receipt = await log.append(factory.note("F/1/s/1", "b"), expected_version=before.sequence)

    assert refused == [log.subjects.for_pathspec(parse_pathspec("F/1/s/1"))]
    assert receipt.sequence == before.sequence + 1
    assert await count(log) == 2


async def test_a_pipelined_append_told_in_flight_is_stored_once_and_acknowledged(
    log: JetStreamEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await log.append(factory.note("F/1/s/1", "a"))
    refused = refused_in_flight_once(monkeypatch, log.nc)

    async with log.pipeline() as pipe:
        await pipe.append(factory.note("F/1/s/1", "b"), expected_version=before.sequence)
        await pipe.append(factory.note("F/2/s/1", "c"))
        receipts = await pipe.flush()

    assert refused == [log.subjects.for_pathspec(parse_pathspec("F/1/s/1"))]
    # the refused commit is sent again after the other has landed
    assert [r.sequence for r in receipts] == [before.sequence + 2, before.sequence + 1]
    assert await count(log) == 3


async def test_in_flight_across_the_run_compares_the_runs_last_commit(
    log: JetStreamEventLog,
) -> None:
    """A commit checked against its whole run is settled by the run's last commit, not its own
    entity's."""
    mine = await log.append(factory.note("F/1/s/1", "a"))
    other = await log.append(factory.note("F/1/s/2", "b"))
    stale = Commit.of(factory.note("F/1/s/1", "c"), mine.sequence, True, None)
    current = Commit.of(factory.note("F/1/s/1", "c"), other.sequence, True, None)

    with pytest.raises(ConflictError) as caught:
        await log.receipt(log.encode(stale), IN_FLIGHT)
    assert caught.value.current_version == other.sequence
    with pytest.raises(TransientRefusal):
        await log.receipt(log.encode(current), IN_FLIGHT)


async def test_an_atomic_batch_told_in_flight_is_stored_once(
    log: JetStreamEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_batch = log._publish_batch
    refused: list[str] = []

    async def leader(batch_id: str, encoded: Any) -> bytes:
        if not refused:
            refused.append(batch_id)
            return IN_FLIGHT_REPLY
        return await publish_batch(batch_id, encoded)

    monkeypatch.setattr(log, "_publish_batch", leader)
    receipts = await log.append_atomic(
        [Commit.of(factory.note(f"F/1/s/{i}", "x"), 0, False, None) for i in (1, 2)]
    )

    assert len(refused) == 1
    assert [r.sequence for r in receipts] == [1, 2]
    assert await count(log) == 2
