"""A projector replica in a process of its own, answering queries for tests that need a
query service outside their client (a Jupyter kernel, a forked pool).

``query_service(url, store)`` starts ``python -m runstate.projections`` on ``url`` and
returns once it answers a query; leaving it stops the process. ``write_run`` writes a
run for those tests to read, and returns once the query service has it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from runstate.client import Unavailable, connect


async def _answers(url: str, data_dir: Path) -> None:
    async with connect(url, data_dir=data_dir, projector=False) as client:
        await client.status()


async def write_run(url: str, data_dir: Path, flow: str, accuracy: float) -> str:
    """A completed run of ``flow`` whose ``start`` task saved ``accuracy``, written with no
    projector of its own; its pathspec, once the query service has applied it."""
    async with connect(url, data_dir=data_dir, projector=False) as client:
        run = await client.create_run(flow)
        async with run.running():
            async with run.task("start") as task:
                await task.save(accuracy=accuracy)
        await client.run(run.pathspec, after=client.last_write)
        return run.pathspec


@contextmanager
def query_service(url: str, store: Path, *, patience: float = 60.0) -> Iterator[None]:
    """A replica process folding ``url``'s log into ``store`` and answering its queries."""
    process = subprocess.Popen(
        [sys.executable, "-m", "runstate.projections", "--nats", url, "--store", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + patience
        while True:
            try:
                anyio.run(_answers, url, store.parent)
                break
            except Unavailable:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
        yield
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
