"""Realistic runs written with the worker API, shared by the client, watch and compat tests.

``write_training_run`` writes what a Metaflow training flow leaves behind:
``start`` -> a ``train`` foreach (one branch fails its first attempt and is
retried) -> ``join`` -> ``end``, with artifacts, metadata, lineage, and a
large artifact in the object store when asked. ``drive_tasks`` is one of the
concurrent writers of the watch tests. ``facade_world`` is the world the blocking
facades' tests (Metaflow's, W&B's) read through ``runstate.client.compat``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio

from runstate.client import Client, Receipt, RunHandle, RunState, compat, connect
from runstate.engine._connection import provision_server
from runstate.engine._server import NatsServer
from runstate.engine._settings import Settings
from runstate.engine.errors import Unavailable
from runstate.projections._protocol import StatusRequest

__all__ = [
    "BIG",
    "WrittenRun",
    "caught_up",
    "drive_tasks",
    "facade_world",
    "replica_client",
    "write_training_run",
]

#: a value well over the inline limit (16 KiB), so it lives in the object store
BIG: list[int] = list(range(20_000))


@dataclass
class WrittenRun:
    """What ``write_training_run`` wrote: pathspecs of the run and its tasks, the last receipt."""

    handle: RunHandle
    receipt: Receipt
    start: str
    train: list[str]
    join: str
    end: str
    retried: str | None
    accuracies: list[float] = field(default_factory=list)

    @property
    def pathspec(self) -> str:
        return self.handle.pathspec

    @property
    def id(self) -> str:
        return self.handle.id


def _diverged(message: str) -> ValueError:
    """A ValueError carrying a real traceback, as a failed step would leave."""
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


async def write_training_run(
    client: Client,
    flow: str = "TrainFlow",
    *,
    run_id: str | int | None = None,
    width: int = 3,
    tags: Sequence[str] = (),
    system_tags: Sequence[str] = (),
    user: str | None = None,
    parameters: dict[str, Any] | None = None,
    final: RunState | None = RunState.COMPLETED,
    retry: bool = True,
    big: bool = False,
    base_accuracy: float = 0.6,
) -> WrittenRun:
    """Write one start -> train (foreach of ``width``) -> join -> end run of ``flow``.

    ``final`` is the run's last state (``None`` leaves it running, ``FAILED``
    fails the join step). With ``retry`` the first train branch fails attempt 0
    with a ``ValueError`` and completes attempt 1. ``big`` saves ``BIG`` as the
    start step's ``dataset`` artifact.
    """
    run = await client.create_run(
        flow,
        run_id=run_id,
        parameters=parameters if parameters is not None else {"lr": 0.01, "epochs": 3},
        tags=tags,
        system_tags=system_tags,
        user=user,
        script_name="train_flow.py",
    )
    await run.start()
    env = {"python": "3.12", "conda": False}
    start = await run.create_task("start", runtime_name="local", environment_info=env, start=True)
    await start.record_metadata(runtime="local", attempt=0)
    await start.save(alpha=0.5, grid=[0.001, 0.01, 0.1])
    if big:
        await start.save(dataset=BIG)
    await start.complete()

    trains = await run.foreach("train", width, parents=[start], runtime_name="local")
    accuracies = []
    retried: str | None = None
    for branch in trains:
        assert branch.index is not None
        await branch.start()
        if retry and branch.index == 0:
            await branch.save(accuracy=0.0, loss=99.0)
            await branch.fail(_diverged("loss diverged at epoch 2"))
            await branch.retry()
            await branch.start()
            retried = branch.pathspec
        accuracy = round(base_accuracy + branch.index / 10, 3)
        accuracies.append(accuracy)
        await branch.record_metadata(runtime="local", attempt=branch.attempt)
        await branch.save(
            accuracy=accuracy,
            loss=round(1 - accuracy, 3),
            params={"lr": 0.001 * 10**branch.index},
            result=f"branch-{branch.index}",
        )
        await branch.complete()

    join = await run.create_task("join", parents=trains, runtime_name="local", start=True)
    if final is RunState.FAILED:
        await join.fail(_diverged("join found no usable model"))
        receipt = await run.fail("join failed")
        return WrittenRun(
            run,
            receipt,
            start.pathspec,
            [t.pathspec for t in trains],
            join.pathspec,
            "",
            retried,
            accuracies,
        )
    await join.save(accuracy=max(accuracies), result="joined")
    await join.complete()

    end = await run.create_task("end", parents=[join], runtime_name="local", start=True)
    await end.save(accuracy=max(accuracies), model={"weights": [0.1, 0.2], "kind": "linear"})
    receipt = await end.complete()
    if final is not None:
        receipt = await run.transition(final)
    return WrittenRun(
        run,
        receipt,
        start.pathspec,
        [t.pathspec for t in trains],
        join.pathspec,
        end.pathspec,
        retried,
        accuracies,
    )


async def drive_tasks(
    run: RunHandle,
    step: str,
    task_ids: Sequence[str],
    *,
    retry_every: int = 4,
    pause: float = 0.0,
) -> None:
    """Take each task through created+running -> completed (every ``retry_every``-th fails once).

    Every transition is a state change the run's watchers see. Appends retry
    transient faults themselves (same commit id) within the retry budget, so
    a NATS restart in the middle only delays them.
    """
    for n, task_id in enumerate(task_ids):
        task = await run.create_task(step, task_id, start=True)
        if retry_every and n % retry_every == retry_every - 1:
            await task.fail("flaky worker")
            await task.retry()
            await task.start()
        await task.complete()
        if pause:
            await anyio.sleep(pause)


async def caught_up(client: Client) -> int:
    """Wait until the query service has applied the whole events stream; return its end."""
    last = await client.log.stream_last_sequence()
    with anyio.fail_after(10):
        while True:
            try:
                await client.request(client.query(StatusRequest, after=last))
                return last
            except Unavailable:  # the replica is still starting
                await anyio.sleep(0.05)


def replica_client(url: str, data_dir: Path, **options: Any) -> AbstractAsyncContextManager[Client]:
    """``connect(url, projector=True)`` with the replica's store under ``data_dir``."""
    return connect(url, projector=True, data_dir=data_dir, **options)


_Written = TypeVar("_Written")


@contextmanager
def facade_world(
    base: Path,
    write: Callable[[str, Path], Awaitable[_Written]],
    settle: Callable[[Client], Awaitable[object]] = caught_up,
) -> Iterator[_Written]:
    """What ``write(url, data_dir)`` wrote on a nats-server under ``base`` (its streams
    provisioned, as an admin would), behind the blocking facade: ``compat`` connected to it
    with a projector replica of its own, settled (``settle``) before the block starts."""
    server = NatsServer(base / "nats")
    server.start()
    try:
        anyio.run(provision_server, Settings(nats_url=server.url))
        written = anyio.run(write, server.url, base / "writer")
        compat.connect(server.url, projector=True, data_dir=base / "replica")
        try:
            session = compat._session
            assert session.portal is not None and session.client is not None
            session.portal.call(settle, session.client)
            yield written
        finally:
            compat.close()
    finally:
        server.stop()
