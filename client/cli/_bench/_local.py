"""The ``local`` benchmark: the local runstate a client given no URL starts or joins.

It needs no server of its own: each sample of the first figure starts the
local runstate of a fresh data directory (and stops it afterwards), the
others join one that runs. The fresh-process figure runs a new Python for
each sample, which imports runstate's facade and times its first call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from runstate.client._client import connect
from runstate.client._local import stop_local
from runstate.client.cli._bench._harness import _say, _server_version
from runstate.client.cli._bench._params import BenchParams
from runstate.client.cli._bench._report import Figure, Report, Target, _ms

#: a fresh process: import the facade, then time its first call (it joins the local runstate)
_FIRST_FACADE_CALL = """
import json, sys, time
started = time.perf_counter()
from runstate.client import compat
imported = time.perf_counter()
compat.Run(sys.argv[1])
done = time.perf_counter()
print(json.dumps({"import": imported - started, "first_call": done - imported}))
"""


def bench_local(p: BenchParams, report: Report) -> None:
    """First ``connect()`` that starts the local runstate, joining one, and a fresh
    process's first facade call."""
    with tempfile.TemporaryDirectory(prefix="runstate-bench-local-") as tmp:
        anyio.run(_measure, Path(tmp), p, report)
    report.notes.append(
        "start: connect() with no URL on a fresh data directory, until it yields a client "
        "(the local runstate started, its query service answering); join: connect() to a "
        "running one, in a process that has connected before; fresh process: the first "
        "compat.Run() after importing runstate.client.compat in a new Python"
    )


async def _measure(tmp: Path, p: BenchParams, report: Report) -> None:
    starts: list[float] = []
    for index in range(p.repeat):
        data_dir = tmp / f"start-{index}"
        started = time.perf_counter()
        async with connect(data_dir=data_dir) as client:
            starts.append(time.perf_counter() - started)
            assert client.nc is not None
            report.server_version = _server_version(client.nc)
        await stop_local(data_dir)
    _say(f"started the local runstate {p.repeat} times")

    data_dir = tmp / "running"
    async with connect(data_dir=data_dir) as client:
        run = await client.create_run("Local")
        await client.run(run.pathspec, after=run.receipt)
        pathspec = run.pathspec
    joins: list[float] = []
    for _ in range(p.calls):
        started = time.perf_counter()
        async with connect(data_dir=data_dir):
            joins.append(time.perf_counter() - started)
    _say(f"joined it {p.calls} times")

    imports, first_calls = [], []
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTATE_")}
    env["RUNSTATE_DATA_DIR"] = str(data_dir)
    for _ in range(p.repeat):
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-c", _FIRST_FACADE_CALL, pathspec],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
        )
        timing = json.loads(done.stdout)
        imports.append(timing["import"])
        first_calls.append(timing["first_call"])
    _say(f"ran {p.repeat} fresh processes")
    await stop_local(data_dir)

    report.add(
        Figure(
            "local_start_ms",
            "first connect() with no URL, starting the local runstate",
            "ms",
            _ms(starts),
            target=Target("median", "<", 1000.0),
        )
    )
    report.add(
        Figure(
            "local_join_ms",
            "connect() with no URL, joining the running local runstate",
            "ms",
            _ms(joins),
            target=Target("median", "<", 100.0),
        )
    )
    report.add(
        Figure(
            "facade_first_call_ms",
            "first compat.Run() of a fresh process, after the import",
            "ms",
            _ms(first_calls),
            target=Target("median", "<", 150.0),
        )
    )
    report.add(
        Figure(
            "facade_import_ms", "import runstate.client.compat, fresh process", "ms", _ms(imports)
        )
    )
