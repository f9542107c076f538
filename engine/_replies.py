"""Request/reply for the write path, without nats-py's per-request costs."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import anyio
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from runstate.engine._acks import header

__all__ = ["Replies"]


class Replies:
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
