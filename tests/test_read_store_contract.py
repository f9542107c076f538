"""The read store contract, run against SQLite on a file and in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runstate.projections import SQLiteReadStore
from runstate.projections.testing import ReadStoreContract


class TestSQLiteFileStore(ReadStoreContract):
    """The SQLite store on a file (WAL, a reader and a checkpointer beside the writer)."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteReadStore]:
        """An empty store in a new file."""
        with SQLiteReadStore(tmp_path / "views.sqlite3") as store:
            yield store


class TestSQLiteMemoryStore(ReadStoreContract):
    """The SQLite store in ``":memory:"`` (one connection reads and writes)."""

    @pytest.fixture
    def store(self) -> Iterator[SQLiteReadStore]:
        """An empty store in memory."""
        with SQLiteReadStore(":memory:") as store:
            yield store
