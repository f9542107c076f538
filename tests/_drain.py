"""Draining a stream the way a replica's feeder does, off the wire only (no nats-py fallback)."""

from __future__ import annotations

import anyio
import pytest

from runstate.engine._connection import open_nats
from runstate.engine._jetstream_follow import drain
from runstate.engine._names import Subjects
from runstate.engine._settings import Settings


async def drained_off_the_wire(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sequences of every event stored, as ``settings`` read them off the feeder's own
    socket; fails if the drain would fall back to nats-py (the wire refused or failed)."""

    async def through_nats_py(*args: object) -> None:
        raise AssertionError("the drain fell back to nats-py: the wire could not sign in")

    monkeypatch.setattr("runstate.engine._jetstream_follow._drain_through_nats_py", through_nats_py)
    nc = await open_nats(settings)
    try:
        subjects = Subjects(settings.prefix)
        info = await nc.jetstream().stream_info(subjects.events_stream)
        last = int(info.state.last_seq)
        received: list[int] = []

        def deliver(sequence: int, subject: str, data: bytes) -> bool:
            received.append(sequence)
            return sequence >= last

        with anyio.fail_after(30):
            await drain(nc, settings, subjects.all_events, 1, deliver)
        return received
    finally:
        await nc.close()
