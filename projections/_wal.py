"""The WAL checkpointer: copies a file store's write-ahead log into its database file."""

from __future__ import annotations

import sqlite3
import threading

from runstate.engine._logging import get_logger

__all__ = ["WAL_HARD_LIMIT", "WalCheckpointer"]

log = get_logger("runstate.store")

_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
#: WAL pages (4 KiB) past which the writer copies them itself if the checkpointer has not
WAL_HARD_LIMIT = 16_384
#: the checkpointer's pause after each checkpoint: one per commit would fsync the
#: database for every commit; under a steady 5,000 events/s one copies ~400 pages
_CHECKPOINT_EVERY = 0.1


class WalCheckpointer:
    """Copies the WAL into the database file, on a thread and connection of its own.

    SQLite's automatic checkpoint runs inside the commit that crosses 1,000
    WAL pages, so one commit in many took 8-13 ms longer, on the projector's
    path and, for small commits, on the event loop that answers queries. A
    passive checkpoint from another connection never blocks the writer or
    readers; the GIL is released while SQLite copies and syncs.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # (WAL pages, pages copied) after the last checkpoint
        self._state = (0, 0)
        self._thread = threading.Thread(
            target=self._run, name="runstate-store-checkpointer", daemon=True
        )
        self._thread.start()

    @classmethod
    def take_over(cls, writer: sqlite3.Connection, conn: sqlite3.Connection) -> WalCheckpointer:
        """Stop ``writer`` checkpointing in its commits; checkpoint through ``conn`` instead."""
        # The writer never checkpoints as part of a commit (SQLite's default, every
        # 1,000 pages, stalled one commit in ~70 by 8-13 ms under steady load):
        # a thread of the store's own copies the WAL into the database meanwhile.
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute(f"PRAGMA journal_size_limit = {WAL_HARD_LIMIT * 4096}")
        return cls(conn)

    def nudge(self) -> None:
        """Something was committed: checkpoint soon."""
        self._wake.set()

    def behind(self) -> bool:
        """The WAL is past ``WAL_HARD_LIMIT`` pages and not all copied."""
        pages, copied = self._state
        return pages >= WAL_HARD_LIMIT and copied < pages

    def copy_through(self, conn: sqlite3.Connection) -> None:
        """Checkpoint through ``conn`` now (the writer's, between two of its commits)."""
        self.record(conn.execute(_CHECKPOINT).fetchone())

    def record(self, result: tuple[int, int, int]) -> None:
        _, pages, copied = result
        self._state = (pages, copied)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping.is_set():
                return
            self._wake.clear()
            try:
                self.record(self._conn.execute(_CHECKPOINT).fetchone())
            except sqlite3.Error as exc:  # the writer's own copy is the fallback
                log.warning("store.checkpoint_failed", error=str(exc))
            if self._stopping.wait(_CHECKPOINT_EVERY):
                return

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._conn.close()
