"""Reads answered with the query service's own bytes, not decoded and encoded again.

Where a REST body is exactly what the query service replied (a run's or a
task's stored view, a page of runs), the gateway cuts the reply's
``result`` out of its bytes instead of building pydantic models from it and
serialising them again: the replica stores each view as its model's JSON, so
the bytes are the same, and a read costs the gateway no model at all. The
routes still declare their models (``response_model``), so OpenAPI documents
the same shapes. A reply not in the service's usual framing is decoded and
re-encoded, never cut wrongly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import orjson

from runstate.client._client import Client
from runstate.projections._protocol import GetRequest

__all__ = ["get_view", "result_bytes", "versioned"]

_RESULT = b'{"result":'


def result_bytes(raw: bytes) -> bytes:
    """The ``result`` of a query service reply ``{"result": ...}``, as JSON bytes."""
    if raw.startswith(_RESULT) and raw.endswith(b"}"):
        return raw[len(_RESULT) : -1]
    return orjson.dumps(orjson.loads(raw)["result"])


def view_bytes(raw: bytes, kind: str) -> bytes:
    """The view of a ``get`` reply ``{"result": {"kind": kind, "view": ...}}``, as JSON bytes."""
    prefix = b'{"result":{"kind":"' + kind.encode() + b'","view":'
    if raw.startswith(prefix) and raw.endswith(b"}}"):
        return raw[len(prefix) : -2]
    return orjson.dumps(orjson.loads(raw)["result"]["view"])


async def get_view(
    client: Client, pathspec: str, kind: str, *, attempt: int | None, after: int | None
) -> bytes:
    """The JSON of the view at ``pathspec`` (a ``kind``, checked by the caller's parse), as
    ``client.get`` reads it: in the client's namespace, once ``after`` is applied."""
    query = client.query(
        GetRequest, pathspec=pathspec, attempt=attempt, namespace=client.namespace, after=after
    )
    return view_bytes(await client._request(query, None), kind)


async def versioned(
    client: Client, subject: str, read: Callable[[], Awaitable[bytes]]
) -> tuple[bytes, int]:
    """``read()`` and the version of ``subject`` (its last sequence in the log), asked at
    the same time: one round trip's wait, not two. ``read``'s error wins."""
    asked: list[int | Exception] = []

    async def ask() -> None:
        try:
            asked.append(await client.log.last_sequence(subject))
        except Exception as exc:  # raised below, unless read raised first
            asked.append(exc)

    failed: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        try:
            body = await read()
        except Exception as exc:  # raised as itself, not in a group
            failed = exc
            tg.cancel_scope.cancel()
    if failed is not None:
        raise failed
    version = asked[0]
    if isinstance(version, Exception):
        raise version
    return body, version
