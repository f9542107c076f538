"""The event log contract, run against both implementations: in memory and on JetStream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from runstate.engine import JetStreamEventLog, MemoryEventLog, Settings, open_nats, provision
from runstate.engine.testing import EventLogContract

pytestmark = pytest.mark.anyio


class TestMemoryEventLog(EventLogContract):
    """The in-memory log keeps the contract."""

    @pytest.fixture
    def log(self) -> MemoryEventLog:
        """An empty in-memory log."""
        return MemoryEventLog(Settings(prefix="rs"))


class TestJetStreamEventLog(EventLogContract):
    """The JetStream log keeps the contract, against a real nats-server."""

    @pytest.fixture
    async def log(self, nats_url: str) -> AsyncIterator[JetStreamEventLog]:
        """A JetStream log on a fresh server with runstate's streams."""
        settings = Settings(nats_url=nats_url, retry_budget=5.0)
        nc = await open_nats(settings)
        try:
            await provision(nc, settings)
            yield JetStreamEventLog(nc, settings)
        finally:
            await nc.close()
