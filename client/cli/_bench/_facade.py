"""The ``facade`` benchmark: the blocking compat facade against the async client."""

from __future__ import annotations

import functools
import time

import anyio

from runstate.client import compat
from runstate.client.cli._bench._harness import _client, _Place, _read_after, _server_version
from runstate.client.cli._bench._params import BenchParams
from runstate.client.cli._bench._report import Figure, Report, Target, _ms
from runstate.client.cli._bench._turns import take_turn_sync
from runstate.client.cli._bench._workload import WriteResult, write_workload


def bench_facade(place: _Place, p: BenchParams, report: Report) -> None:
    """Read (a) through ``runstate.client.compat`` against the async client, same loop."""

    async def write() -> WriteResult:
        async with _client(place) as client:
            report.server_version = _server_version(client.nc)
            return await write_workload(client.writer, 2, min(p.tasks, 10), 1)

    result = anyio.run(write)
    pathspec = result.run_pathspecs[0]
    # it runs the replica: the projector's role
    compat.connect(place.url, settings=place.settings("projector"), projector=True)
    if place.auth is not None:
        # the runs are the writer's (user:<its key>), the session the projector's: read all
        compat.namespace(None)
    try:
        session = compat._session
        client, portal = session.async_client, session.portal
        assert portal is not None
        portal.call(functools.partial(_read_after, client, pathspec, result.last_sequence))

        async def timed_async() -> float:
            started = time.perf_counter()
            await client.run(pathspec)
            return time.perf_counter() - started

        def timed_blocking() -> float:
            started = time.perf_counter()
            compat.Run(pathspec)
            return time.perf_counter() - started

        for _ in range(20):
            portal.call(timed_async)
            timed_blocking()
        inner, outer, added = [], [], []
        for _ in range(p.calls):
            take_turn_sync()
            a = portal.call(timed_async)
            b = timed_blocking()
            inner.append(a)
            outer.append(b)
            added.append(b - a)
    finally:
        compat.close()
        if place.auth is not None:
            compat.default_namespace()
    report.add(
        Figure(
            "async_get_run_ms", "(a) one run, async client (timed in its loop)", "ms", _ms(inner)
        )
    )
    report.add(Figure("facade_get_run_ms", "(a) one run, compat.Run(pathspec)", "ms", _ms(outer)))
    report.add(
        Figure(
            "facade_added_ms",
            "added by the blocking facade (paired calls)",
            "ms",
            _ms(added),
            target=Target("median", "<", 0.3),
        )
    )
    report.notes.append(
        "the replica and the async client run on the facade's background loop; each pair is "
        "one async call timed inside that loop and one blocking compat.Run() timed outside"
    )
