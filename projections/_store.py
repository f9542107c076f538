"""The SQLite read store: the projected views of one projector replica, in one file.

The projector writes from a worker thread (or the event loop) through one
connection (``StoreWriter``) while the query service reads on the event
loop thread through another (``StoreQueries``); in WAL mode a reader sees
the last committed transaction and never waits for the writer. A third
connection, on a thread of its own, copies the WAL into the database file
(``WalCheckpointer``). The tables and rows are in ``_schema``.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Self

from runstate.engine._private import private_file
from runstate.projections._frame import frame_page
from runstate.projections._queries import RunQuery
from runstate.projections._schema import ensure_schema
from runstate.projections._store_query import StoreQueries
from runstate.projections._store_write import StoreWriter
from runstate.projections._wal import WalCheckpointer

__all__ = ["SQLiteReadStore"]


class SQLiteReadStore(StoreWriter, StoreQueries):
    """The projected views in one SQLite file (or ``":memory:"``, for tests): a ``ReadStore``.

    Write methods (``commit``, ``prepare``, ``write``, ``load_*``, ``reset``)
    belong to the projector and may run in a worker thread; read methods may
    run on any thread at the same time. Each connection is used by one thread
    at a time.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        memory = self.path == ":memory:"
        if not memory:
            private_file(Path(self.path))  # 0600; SQLite gives its -wal and -shm the same mode
        writer = self._connect()
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA synchronous = NORMAL")
        ensure_schema(writer)
        write_lock = threading.Lock()
        checkpoints = None if memory else WalCheckpointer.take_over(writer, self._connect())
        StoreWriter.__init__(self, writer, write_lock, checkpoints)
        if memory:
            # a second connection to ":memory:" would be another, empty database
            StoreQueries.__init__(self, writer, write_lock)
        else:
            reader = self._connect()
            reader.execute("PRAGMA query_only = ON")
            StoreQueries.__init__(self, reader, threading.Lock())

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA cache_size = -65536")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA mmap_size = 268435456")
        return conn

    def runs_frame_json(self, q: RunQuery, max_bytes: int) -> bytes:
        """The runs ``q`` selects (up to ``q.limit``) as columns, at most ``max_bytes`` of JSON:
        see ``runstate.projections._frame``."""
        with self._metrics_attached() as metrics:
            return frame_page(self._reader, q, metrics, max_bytes)

    def close(self) -> None:
        """Close every connection; the store is unusable afterwards."""
        if self._checkpoints is not None:
            self._checkpoints.close()
        with self._write_lock:
            self._writer.close()
        if self._reader is not self._writer:
            with self._read_lock:
                self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
