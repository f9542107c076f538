"""The lock that keeps two replicas from folding into one read store file."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from runstate.engine._private import private_dir, private_file
from runstate.engine.errors import StoreInUse

__all__ = ["store_lock"]


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold ``<store>.lock`` (an advisory ``flock``) while the block runs.

    Creates the store's directory. Raises ``StoreInUse`` at once, without
    waiting, when another process (or another replica of this one) holds it.
    """
    private_dir(store.parent, tighten=False)
    with open(private_file(store.with_name(store.name + ".lock")), "a+b") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreInUse(
                f"the read store {store} is in use by another replica; give this one its own "
                "with --store PATH (or --data-dir)",
                store=str(store),
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
