"""The server's "no": permission violations, turned into ``PermissionDenied`` at once.

NATS refuses a publish or a subscription the user's permissions do not
allow by sending ``-ERR 'Permissions Violation for Publish to "<subject>"'``
on the connection, and nothing else: a request sent there simply gets no
reply, so a client would wait out its timeout, then its retry budget. nats-py
hands the error to the connection's error callback only (lower-cased). So
``open_nats`` reports each violation here (``report``), and the operations
that wait on a reply watch for a violation on the subjects they publish to
(``refusable``): the first one ends the wait with ``PermissionDenied`` naming
the operation and the subject.

A violation carries the subject, never which request it stopped, so a
watcher matches on subjects: an operation is refused when a publish on one
of its subjects (or patterns) was refused while it waited.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio
from nats.aio.client import Client as NATS

from runstate.engine._names import subject_matches
from runstate.engine.errors import PermissionDenied

__all__ = ["Refusals", "denied", "refusable", "refusals_of"]

_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.I)


@dataclass(eq=False, slots=True)
class _Watch:
    patterns: tuple[str, ...]
    on_refusal: Callable[[str, str], None]
    refused: tuple[str, str] | None = field(default=None)


class Refusals:
    """The permission violations of one connection, and the operations watching for them."""

    def __init__(self) -> None:
        self._watches: set[_Watch] = set()
        self._listeners: list[Callable[[str, str], None]] = []

    def listen(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(kind, subject)`` for every violation from now on (a hot path's
        own bookkeeping, cheaper than a watch per request; ``subject`` is lower-cased)."""
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[str, str], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def report(self, message: str) -> bool:
        """Take an error the server sent; True if it was a permission violation."""
        found = _VIOLATION.search(message)
        if found is None:
            return False
        kind = "publish to" if found.group(1).lower() == "publish" else "subscribe to"
        subject = found.group(2).lower()  # nats-py lower-cases the whole message
        for listener in list(self._listeners):
            listener(kind, subject)
        for watch in list(self._watches):
            if watch.refused is None and any(
                subject_matches(pattern, subject) for pattern in watch.patterns
            ):
                watch.refused = (kind, subject)
                watch.on_refusal(kind, subject)
        return True

    @contextmanager
    def watching(
        self, patterns: tuple[str, ...], on_refusal: Callable[[str, str], None]
    ) -> Iterator[_Watch]:
        """Call ``on_refusal(kind, subject)`` for a violation on ``patterns`` inside the block."""
        watch = _Watch(tuple(pattern.lower() for pattern in patterns), on_refusal)
        self._watches.add(watch)
        try:
            yield watch
        finally:
            self._watches.discard(watch)


_OF: weakref.WeakKeyDictionary[NATS, Refusals] = weakref.WeakKeyDictionary()


def refusals_of(nc: NATS) -> Refusals:
    """The refusals of a connection (made on first use; ``open_nats`` reports into it)."""
    refusals = _OF.get(nc)
    if refusals is None:
        refusals = _OF[nc] = Refusals()
    return refusals


def denied(operation: str, kind: str, subject: str) -> PermissionDenied:
    """The error of an operation the server refused."""
    return PermissionDenied(
        f"{operation}: the NATS server refused this user permission to {kind} {subject!r}; "
        "connect with the credentials of a role allowed to (runstate auth init writes them)",
        operation=operation,
        subject=subject,
    )


@contextmanager
def refusable(nc: NATS, operation: str, *patterns: str) -> Iterator[None]:
    """Run the block; a violation on ``patterns`` meanwhile ends it with ``PermissionDenied``.

    The block is cancelled as soon as the server's error arrives, so a
    refused request does not wait out its timeout or the retry budget.
    """
    with anyio.CancelScope() as scope:
        with refusals_of(nc).watching(patterns, lambda kind, subject: scope.cancel()) as watch:
            yield
    if watch.refused is not None:
        raise denied(operation, *watch.refused)
