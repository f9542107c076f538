"""The blocking facade's background loop and the life of its process: a child forked after
its parent used the facade (a multiprocessing pool with the fork start method) connects
anew instead of waiting for ever on its parent's loop, which it does not have; and a script
that used the facade exits (with anyio before 4.5 it never did: CI's run on the dependency
floors checks that)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from _query_service import query_service, write_run

from runstate.client import compat
from runstate.client._local import local_status, stop_local


def _child_reads(pathspec: str) -> tuple[str, str, float]:
    """What a pool worker reads through the facade it inherited."""
    run = compat.Run(pathspec)
    return run.pathspec, str(run.state), run["start"].task.data.accuracy


@pytest.fixture
def facade() -> Iterator[None]:
    yield
    compat.close()
    compat.default_metadata()
    compat.default_namespace()


def test_a_pool_forked_after_the_facade_was_used_reads_through_it(
    nats_url: str, tmp_path: Path, facade: None
) -> None:
    """The parent reads through the facade, then forks a pool: every child's facade calls
    succeed (each child connects on its first call), and the parent's still work."""
    with query_service(nats_url, tmp_path / "store" / "views.sqlite3"):
        pathspec = anyio.run(write_run, nats_url, tmp_path / "writer", "Forked", 0.5)
        compat.connect(nats_url, data_dir=tmp_path / "facade")
        compat.namespace(None)
        expected = (pathspec, "completed", 0.5)
        assert _child_reads(pathspec) == expected  # the parent has a client and a loop now
        with multiprocessing.get_context("fork").Pool(2) as pool:
            # a child that waited on its parent's loop would never answer: bounded here
            results = pool.map_async(_child_reads, [pathspec] * 6).get(timeout=60)
        assert results == [expected] * 6
        assert _child_reads(pathspec) == expected


def test_a_script_that_used_the_facade_exits_and_leaves_the_local_runstate_serving(
    tmp_path: Path,
) -> None:
    """A script that read through the facade, on the local runstate it started, ends by
    itself (anyio 4.4's portal thread made it hang), and the local runstate it started
    outlives it, answering the next client (it belongs to no client)."""
    script = (
        "from runstate.client import compat\n"
        "compat.namespace(None)\n"
        "print(len(compat.Metaflow().flows))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTATE_")}
    env["RUNSTATE_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,  # a script that never exits fails here
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "0\n"
    status = anyio.run(local_status, tmp_path / "data")
    assert status is not None, "the local runstate stopped with the script that started it"
    anyio.run(stop_local, tmp_path / "data")
