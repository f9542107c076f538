"""Foreign commits with naive times, NaN or loose types are dead-lettered, not applied."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from runstate.client import connect
from runstate.client.testing import in_memory
from runstate.engine import Settings, open_nats
from runstate.engine._names import Subjects
from runstate.engine.errors import InvalidEvent
from runstate.projections._projector import CommitDecoder

pytestmark = pytest.mark.anyio


def _run_created(flow: str, run: str, **changes: object) -> dict[str, object]:
    event: dict[str, object] = {
        "id": f"e-{run}",
        "type": "run.created",
        "schema_version": 1,
        "occurred_at": "2025-03-01T12:30:00Z",
        "pathspec": f"{flow}/{run}",
        "payload": {"flow": flow, "run_id": run, "state": "running"},
    }
    event.update(changes)
    return event


def _state(flow: str, run: str, state: str, at: str) -> dict[str, object]:
    return {
        "id": f"s-{run}-{state}",
        "type": "run.state_changed",
        "schema_version": 1,
        "occurred_at": at,
        "pathspec": f"{flow}/{run}",
        "payload": {"state": state},
    }


BAD = {
    "naive occurred_at": _state("Train", "1", "completed", "2025-03-01T12:31:00"),
    "schema_version string": _state("Train", "1", "completed", "2025-03-01T12:31:00Z")
    | {"schema_version": "1"},
}


def test_the_projector_decoder_refuses_what_writers_refuse() -> None:
    """CommitDecoder (projector and feeder) raises InvalidEvent, which both dead-letter."""
    decoder = CommitDecoder(Subjects("rs"))
    for event in BAD.values():
        with pytest.raises(InvalidEvent):
            decoder.decode("rs.ev.Train.1.r", orjson.dumps([event]))
    nan = orjson.dumps([_run_created("Train", "2")]).replace(
        b'"state":"running"', b'"state":"running","parameters":{"x":NaN}'
    )
    with pytest.raises(InvalidEvent, match="not JSON"):
        decoder.decode("rs.ev.Train.2.r", nan)


async def test_a_naive_time_from_a_foreign_writer_is_set_aside_and_reads_still_work(
    nats_url: str, tmp_path: Path
) -> None:
    """A run whose end was written with a naive time stays running; duration never raises."""
    settings = Settings(nats_url=nats_url)
    async with connect(nats_url, projector=True, namespace=None, data_dir=tmp_path) as client:
        nc = await open_nats(settings)
        try:
            js = nc.jetstream()
            await js.publish("rs.ev.Train.1.r", orjson.dumps([_run_created("Train", "1")]))
            naive = await js.publish("rs.ev.Train.1.r", orjson.dumps([BAD["naive occurred_at"]]))
            text = await js.publish("rs.ev.Train.1.r", orjson.dumps([BAD["schema_version string"]]))
            good = await js.publish(
                "rs.ev.Train.1.r",
                orjson.dumps([_state("Train", "1", "completed", "2025-03-01T12:32:00+00:00")]),
            )
            run = await client.run("Train/1", after=good.seq)
            assert run.state == "completed" and run.duration == 120.0
            for seq in (naive.seq, text.seq):
                letter = await js.get_last_msg("RS_DEADLETTER", f"rs.dlq.{seq}")
                assert letter.headers is not None
        finally:
            await nc.close()


async def test_the_worker_api_raises_invalid_event_for_bad_values() -> None:
    """create_run with NaN or a set, save(lambda) or a 10,000-deep list: InvalidEvent, no crash."""
    deep: list[object] = []
    for _ in range(10_000):
        deep = [deep]
    async with in_memory() as client:
        for parameters in ({"x": float("nan")}, {"x": [1.0, float("-inf")]}, {"x": {1, 2}}):
            with pytest.raises(InvalidEvent, match=r"parameters\.x"):
                await client.create_run("Bad", parameters=parameters)
        with pytest.raises(InvalidEvent, match=r"parameters\.x\[0\]"):
            await client.create_run("Bad", parameters={"x": deep})
        run = await client.create_run("Bad")
        task = await run.create_task("start", start=True)
        with pytest.raises(InvalidEvent, match="artifact fn is neither"):
            await task.save(fn=lambda: 1)
        with pytest.raises(InvalidEvent, match="artifact deep is neither"):
            await task.save(deep=deep)
        await task.save(loss=float("inf"), curve=[1.0, float("nan")])
        await task.complete()
        view = await client.task(task.pathspec, after=task.receipt)
        assert {a.id: a.codec for a in view.artifacts} == {"loss": "pickle", "curve": "pickle"}
