"""``open_client()``: a client opened in one task and closed in another (notebook cells).

``async with connect()`` enters anyio cancel scopes and task groups (the
embedded server's replica, for one) that must be left by the task that
entered them. In Jupyter each cell runs as a task of its own, so a client
opened in one cell and closed in a later one would leave them from the
wrong task. ``open_client`` keeps ``connect()``'s block open in a task of
its own instead, which ``Client.aclose`` asks to leave it and waits for.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, ParamSpec

from runstate.client._client import Client, connect
from runstate.engine._connection import require_asyncio

__all__ = ["open_client"]


_P = ParamSpec("_P")


def _options_of(
    opener: Callable[_P, AbstractAsyncContextManager[Client]],
) -> Callable[[Callable[..., Awaitable[Client]]], Callable[_P, Awaitable[Client]]]:
    """Give a coroutine function that forwards its arguments to ``opener`` the parameters
    of ``opener``: for type checkers (the ParamSpec) and for help() (``__signature__``), so
    they are written once, in ``opener``."""

    def take(function: Callable[..., Awaitable[Client]]) -> Callable[_P, Awaitable[Client]]:
        signature = inspect.signature(opener).replace(return_annotation="Client")
        function.__signature__ = signature  # type: ignore[attr-defined]
        return function

    return take


@_options_of(connect)
async def open_client(*args: Any, **kwargs: Any) -> Client:
    """Connect as ``connect()`` does (same options) and return the client, open until
    ``await client.aclose()``, which any task of this event loop may call.

    For notebooks (``client = await open_client()`` in one cell, ``await
    client.aclose()`` in a later one) and other code whose opening and closing
    are not one block. Raises what ``connect()`` raises; ``ConfigurationError``
    outside asyncio.
    """
    require_asyncio("runstate's async client")
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[Client] = loop.create_future()
    closing = asyncio.Event()

    async def hold() -> None:
        try:
            async with connect(*args, **kwargs) as client:
                if opened.cancelled():
                    return  # the caller gave up while it connected
                opened.set_result(client)
                await closing.wait()
        except BaseException as exc:
            if opened.done():
                raise  # an error while closing: aclose() raises it
            if isinstance(exc, asyncio.CancelledError):
                opened.cancel()
            else:
                opened.set_exception(exc)

    holder = loop.create_task(hold(), name="runstate client")
    try:
        client = await opened
    except BaseException:
        closing.set()
        if not holder.done():
            holder.cancel()
        await asyncio.wait([holder])
        raise

    async def close() -> None:
        closing.set()
        # the holder is a task of its own: cancelling aclose() does not stop it closing
        await asyncio.wait([holder])
        holder.result()  # the error leaving connect()'s block raised, if any

    client._closer = close
    return client
