"""A page of a list query, with its cursor to the next one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Page"]


class Page(Generic[T]):
    """Items of one page and the cursor of the next (``None`` on the last page).

    ``async for item in page.all()`` walks this page and every page after it.
    """

    def __init__(
        self,
        items: list[T],
        next_cursor: str | None,
        fetch: Callable[[str], Awaitable[Page[T]]],
    ) -> None:
        self.items = items
        self.next_cursor = next_cursor
        self._fetch = fetch

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> T:
        return self.items[index]

    def __bool__(self) -> bool:
        return bool(self.items)

    def __repr__(self) -> str:
        return f"Page({len(self.items)} items, next_cursor={self.next_cursor!r})"

    @property
    def has_next(self) -> bool:
        return self.next_cursor is not None

    async def next_page(self) -> Page[T] | None:
        """The following page, or None after the last."""
        if self.next_cursor is None:
            return None
        return await self._fetch(self.next_cursor)

    async def all(self) -> AsyncIterator[T]:
        """Every item of this page and the pages after it."""
        page: Page[T] | None = self
        while page is not None:
            for item in page.items:
                yield item
            page = await page.next_page()
