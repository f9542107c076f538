"""``Subscription``: a live stream of items that stops its consumer when left.

Watches (``_watch``) and metric tails (``_tails``) hand their items out
through it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Generic, TypeVar

import anyio

__all__ = ["Subscription"]

T = TypeVar("T")


class Subscription(Generic[T]):
    """A live stream of items; use as ``async with client.watch(p) as changes: async for ...``.

    Leaving the ``async with`` block (normally, by an exception, or by
    cancellation) stops the consumer at once. Iterating without the block
    also works, but then the consumer stops only when the iterator is
    garbage-collected or ``aclose()`` is called.
    """

    def __init__(self, generator: AsyncGenerator[T, None]) -> None:
        self._generator = generator

    async def __aenter__(self) -> Subscription[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        return await self._generator.__anext__()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._generator.aclose()
