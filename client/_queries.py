"""How a client's reads reach a query service: over NATS, or in this process."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Protocol

import anyio
import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from runstate.engine._connection import on_disconnect
from runstate.engine._logging import get_logger
from runstate.engine._names import Subjects
from runstate.engine._retry import retry
from runstate.engine.errors import Timeout, Unavailable, error_from_wire

if TYPE_CHECKING:
    from runstate.projections._service import QueryService

__all__ = ["LocalQueries", "NatsQueries", "Queries"]

log = get_logger("runstate.client")

#: seconds a query asks again while NATS says no service is there to answer it
_NO_RESPONDERS_PATIENCE = 1.0


class Queries(Protocol):
    """Sends one query and returns its reply's bytes, ``{"result": ...}``."""

    async def request(self, endpoint: str, payload: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
        """The reply to ``payload`` at ``endpoint``; its typed error if it is one,
        ``Timeout`` after ``timeout`` seconds, ``Unavailable`` when nobody answers."""


class NatsQueries:
    """Queries to the replicas' query service, a NATS micro service in a queue group."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self._nc = nc
        self._prefix = subjects.query_prefix

    async def request(self, endpoint: str, payload: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
        subject = f"{self._prefix}.{endpoint}"
        deadline = anyio.current_time() + timeout
        lost = 0  # times the connection lost its server while this read waited
        while True:
            # A read in flight when its node dies has no answer coming (the reply went to
            # the lost connection): ask again as soon as it is lost, which nats-py sends
            # once it has reconnected, within what is left of the read's time.
            with anyio.CancelScope() as scope:
                stop_listening = on_disconnect(self._nc, scope.cancel)
                try:
                    msg = await self._ask(
                        subject, payload, max(0.0, deadline - anyio.current_time()), lost
                    )
                finally:
                    stop_listening()
            if not scope.cancelled_caught:
                break
            lost += 1
            log.info("query.resent_after_disconnect", endpoint=endpoint, times=lost)
            if anyio.current_time() >= deadline:
                raise _lost_connection(endpoint)
        if msg.headers and "Nats-Service-Error-Code" in msg.headers:
            try:
                wire = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                wire = {"message": msg.headers.get("Nats-Service-Error", "error")}
            raise error_from_wire(wire)
        data: bytes = msg.data
        return data

    async def _ask(self, subject: str, payload: bytes, timeout: float, lost: int) -> Msg:  # noqa: ASYNC109
        """One request, asked again while NATS says no service is there to answer it."""

        def give_up(exc: BaseException) -> Unavailable:
            return Unavailable(
                "no query service is answering; start one with `runstate server` or "
                "`runstate projector`, or connect with projector=True"
            )

        endpoint = subject.removeprefix(self._prefix + ".")
        try:
            # "No responders" can pass: a replica's interest reaches the other nodes of a
            # cluster a moment after it subscribes, and a restarted replica comes back.
            msg: Msg = await retry(
                partial(self._nc.request, subject, payload, timeout=timeout),
                budget=_NO_RESPONDERS_PATIENCE,
                give_up=give_up,
                transient=(nats.errors.NoRespondersError,),
                first_delay=0.02,
                max_delay=0.25,
                what="query",
            )
        except nats.errors.TimeoutError:
            if lost:  # no answer since the connection came back, or it has not come back
                raise _lost_connection(endpoint) from None
            raise Timeout(f"the query service did not answer {endpoint} in time") from None
        except nats.errors.ConnectionClosedError:
            raise Unavailable("the NATS connection is closed") from None
        return msg


def _lost_connection(endpoint: str) -> Unavailable:
    return Unavailable(
        f"the connection to NATS lost its server while {endpoint} was being read, and no "
        "answer came after the reconnect in the read's time; is the NATS cluster up?"
    )


class LocalQueries:
    """Queries answered by a query service in this process (no NATS in between)."""

    def __init__(self, service: QueryService) -> None:
        self._service = service

    async def request(self, endpoint: str, payload: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
        with anyio.move_on_after(timeout):
            return await self._service.answer(endpoint, payload)
        raise Timeout(f"the query service did not answer {endpoint} in time")
