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
from runstate.engine._refusals import denied, refusals_of

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
        #: token -> (subject, operation) of each request waiting, for the server's refusals
        self._sent: dict[str, tuple[str, str | None]] = {}
        self._lock = anyio.Lock()

    async def _start(self) -> None:
        async with self._lock:
            if self._sub is None:
                self._prefix = self._nc.new_inbox()
                self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_reply)
                refusals_of(self._nc).listen(self._on_refused)

    def _on_refused(self, kind: str, subject: str) -> None:
        """The server refused a publish: fail the requests sent there now, not at timeout."""
        for token, (sent_to, operation) in list(self._sent.items()):
            future = self._waiting.get(token)
            if future is not None and not future.done() and sent_to.lower() == subject:
                future.set_exception(denied(operation or f"publish to {sent_to}", kind, subject))

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
        operation: str | None = None,
    ) -> Msg:
        """Send and wait for the reply; nats-py's errors for no responders and timeouts.

        ``PermissionDenied`` (naming ``operation``) as soon as the server refuses
        this user permission to publish on ``subject``.
        """
        if self._sub is None:
            await self._start()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        self._sent[token] = (subject, operation)
        # A timer that fails the future: an anyio cancel scope per request cost
        # a tenth of a writer's CPU. Cancelling the caller still cancels the wait.
        timer = loop.call_later(timeout, _expire, future)
        try:
            await self._nc.publish(subject, data, reply=f"{self._prefix}.{token}", headers=headers)
            msg = await future
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
            self._sent.pop(token, None)
        if not msg.data and header(msg, "Status") == "503":
            raise nats.errors.NoRespondersError
        return msg


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())
