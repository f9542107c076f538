"""The query service answers only to inboxes: a request cannot make it write elsewhere."""

from __future__ import annotations

from pathlib import Path

import anyio
import nats
import pytest

from runstate.client import Client
from runstate.engine import Settings
from runstate.projections import Replica

pytestmark = pytest.mark.anyio


async def test_a_query_whose_reply_is_not_an_inbox_is_not_answered(
    nats_url: str, tmp_path: Path
) -> None:
    """A request with its reply on an events subject or a key bucket gets no answer there:
    nothing lands in the log, the writer's next transition works, and inbox requests work."""
    settings = Settings(nats_url=nats_url, data_dir=tmp_path, retry_budget=5.0)
    async with Replica(settings, projector=True, name="replies") as replica:
        client = Client.over_nats(replica.nc, replica.settings)
        run = await client.create_run("Target")
        before = await client.log.stream_last_sequence()
        raw = await nats.connect(nats_url)
        try:
            for reply in (
                f"rs.ev.Target.{run.id}.r",
                "$KV.rs_idempotency.0123456789abcdef",
                "rs.hb.Target.1.r",
            ):
                await raw.publish("rs.q.status", b"{}", reply=reply)
            await raw.flush()
            await anyio.sleep(0.3)  # time for a wrongly sent answer to land
        finally:
            await raw.close()
        assert await client.log.stream_last_sequence() == before
        await run.start()  # no planted reply conflicts with the writer
        status = await client.status()
        assert status["applied"] >= before
