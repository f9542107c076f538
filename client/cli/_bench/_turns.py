"""Turns: the two halves of a paired benchmark run at once, in two processes, taking turns.

One run of a whole benchmark moves by up to ±25% on a small VM (the load of
its neighbours, where the scheduler puts each process), more than the 10% a
paired run is to tell apart. So ``runstate bench --paired`` runs the plain
and the secured half of a benchmark at the same time, each in a process of
its own with its own server, and has them take turns: each benchmark calls
``take_turn()`` before each sample it times, which hands the turn to the
other half and waits for it back. The halves' samples alternate, one of
one, one of the other, so a drift of the machine weighs on both alike, and
while one half works the other waits (its processes idle): they never
measure at the same time.

The turn passes over two pipes, one byte at a time. A half that ends, or
dies, closes its end: the other one runs on alone. Outside a paired run (no
``Turns`` installed) ``take_turn()`` does nothing.
"""

from __future__ import annotations

import contextlib
import os

import anyio

__all__ = ["Turns", "install", "take_turn", "take_turn_sync"]


class Turns:
    """One half's ends of the two pipes: it reads its turns on ``mine`` and hands them on
    ``theirs``."""

    def __init__(self, mine: int, theirs: int) -> None:
        self._mine = mine
        self._theirs = theirs
        #: the other half has ended: nobody to take turns with
        self.alone = False
        #: turns handed over so far
        self.handed = 0

    def wait(self) -> None:
        """Block until the other half hands the turn back (or ends)."""
        if self.alone:
            return
        if not os.read(self._mine, 1):
            self.alone = True

    def swap(self) -> None:
        """Hand the turn to the other half and block until it comes back."""
        if self.alone:
            return
        try:
            os.write(self._theirs, b"t")
        except BrokenPipeError:
            self.alone = True
            return
        self.handed += 1
        self.wait()

    def close(self) -> None:
        """This half has ended: the other runs on alone."""
        self.alone = True
        for fd in (self._theirs, self._mine):
            with contextlib.suppress(OSError):
                os.close(fd)


_current: Turns | None = None


def install(turns: Turns | None) -> None:
    """Make ``turns`` the ones ``take_turn`` uses in this process (None: none)."""
    global _current
    _current = turns


async def take_turn() -> None:
    """Before a timed sample: let the other half of a paired run take its turn first (a
    no-op outside one). Waits in a worker thread, so this half's event loop runs on."""
    if _current is not None and not _current.alone:
        await anyio.to_thread.run_sync(_current.swap)


def take_turn_sync() -> None:
    """``take_turn`` for blocking code (the facade benchmark)."""
    if _current is not None:
        _current.swap()
