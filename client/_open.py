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
from pathlib import Path
from typing import Any

from runstate.client import _namespace
from runstate.client._client import Client, connect
from runstate.engine._connection import require_asyncio
from runstate.engine._settings import Settings

__all__ = ["open_client"]


async def open_client(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    data_dir: Path | str | None = None,
    credentials: Path | str | None = None,
    tls_ca: Path | str | None = None,
    tls_cert: Path | str | None = None,
    tls_key: Path | str | None = None,
    prefix: str | None = None,
    namespace: Any = _namespace.DEFAULT,
    projector: bool | None = None,
    trust_pickles: bool | None = None,
    restart_local: bool = False,
) -> Client:
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
            async with connect(
                url,
                settings=settings,
                data_dir=data_dir,
                credentials=credentials,
                tls_ca=tls_ca,
                tls_cert=tls_cert,
                tls_key=tls_key,
                prefix=prefix,
                namespace=namespace,
                projector=projector,
                trust_pickles=trust_pickles,
                restart_local=restart_local,
            ) as client:
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
