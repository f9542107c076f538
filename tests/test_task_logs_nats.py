"""A task's log lines on a real nats-server: tails across restarts, ``runstate logs``, the facade.

The tail test writes lines without pause while the projector replica is
stopped and started again, then while nats-server is killed and restarted;
the follower, started before any of it, must see every line once, in order.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio
import pytest
from _workload import caught_up
from test_cli import Running, runstate

from runstate.client import Unavailable, compat, connect
from runstate.client._logs import LogLine
from runstate.engine import Settings
from runstate.engine._server import NatsServer
from runstate.projections._replica import Replica

pytestmark = pytest.mark.anyio

#: lines written (and flushed) between two disruptions
PER_PHASE = 200


async def test_a_tail_sees_every_line_once_across_a_projector_and_a_nats_restart(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """follow_logs started first gets every line written while the projector restarts and
    nats-server is killed and restarted: no gap, no repeat."""
    settings = Settings(
        nats_url=nats_server.url, data_dir=tmp_path / "data", retry_budget=20.0, request_timeout=1.0
    )
    store = tmp_path / "views.sqlite3"
    written = 0
    seen: list[LogLine] = []

    async with connect(settings=settings, projector=False, namespace=None) as client:
        run = await client.create_run("Tail")
        async with run.task("train", capture_output=False, heartbeat=False) as task:
            async with Replica(settings, store=store, reaper=False):
                view = await client.task(task.pathspec, after=task.receipt)

            async def write(count: int) -> None:
                nonlocal written
                for _ in range(count):
                    await task.write_log(f"line {written}")
                    while True:
                        try:
                            await task.flush_logs()
                            break
                        except Unavailable:  # the outage outlasted the budget: send it again
                            await anyio.sleep(0.1)
                    written += 1

            async def caught_up() -> None:
                with anyio.fail_after(60):
                    while len(seen) < written:  # noqa: ASYNC110 - polls the follower
                        await anyio.sleep(0.02)

            async def follow() -> None:
                async with view.follow_logs() as lines:
                    async for line in lines:
                        seen.append(line)

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await write(PER_PHASE)  # with no projector
                async with Replica(settings, store=store, reaper=False):
                    await write(PER_PHASE)  # a projector running
                await write(PER_PHASE)  # stopped again
                await caught_up()
                nats_server.kill()
                async with anyio.create_task_group() as outage:
                    outage.start_soon(write, PER_PHASE)  # rides out the restart
                    await anyio.sleep(0.5)
                    await anyio.to_thread.run_sync(nats_server.restart)
                await write(PER_PHASE)
                await caught_up()
                tg.cancel_scope.cancel()
    assert [line.text for line in seen] == [f"line {n}\n" for n in range(written)]
    positions = [line.position for line in seen]
    assert positions == sorted(set(positions)), "a line was delivered twice or out of order"


async def _write_task(url: str, data_dir: Path) -> str:
    async with connect(url, projector=False, data_dir=data_dir, namespace=None) as client:
        run = await client.create_run("Logs")
        async with run.running(), run.task("train") as task:
            print("out 1")
            print("err 1", file=sys.stderr)
            print("out 2")
        async with run.task("flaky") as flaky:
            await flaky.write_log("first attempt")
            await flaky.fail("boom")
            await flaky.retry()
            async with flaky.attempting():
                print("second attempt")
        return f"{task.pathspec} {flaky.pathspec}"


async def test_runstate_logs_prints_a_tasks_stdout_stderr_and_attempts(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """``runstate logs`` prints stdout, --stderr the other stream, --attempt an earlier
    attempt; an unknown task or attempt exits 2 in one line."""
    task, flaky = (await _write_task(nats_server.url, tmp_path / "w")).split()
    url = ["--nats", nats_server.url]
    out = await anyio.to_thread.run_sync(lambda: runstate("logs", task, *url))
    assert (out.returncode, out.stdout) == (0, "out 1\nout 2\n"), out.stderr
    err = await anyio.to_thread.run_sync(lambda: runstate("logs", task, "--stderr", *url))
    assert (err.returncode, err.stdout) == (0, "err 1\n"), err.stderr
    latest = await anyio.to_thread.run_sync(lambda: runstate("logs", flaky, *url))
    assert latest.stdout == "second attempt\n"
    first = await anyio.to_thread.run_sync(lambda: runstate("logs", flaky, "--attempt", "0", *url))
    assert first.stdout == "first attempt\n"
    for args in ([f"{task}0"], [flaky, "--attempt", "5"]):
        missing = await anyio.to_thread.run_sync(lambda a=args: runstate("logs", *a, *url))
        assert missing.returncode == 2 and missing.stderr.startswith("error: "), missing


async def test_runstate_logs_follow_prints_new_lines_until_interrupted(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """``runstate logs --follow`` prints the lines so far, then new ones; Ctrl-C exits 0."""
    async with connect(nats_server.url, projector=False, data_dir=tmp_path / "w") as client:
        run = await client.create_run("Logs")
        task = await run.create_task("train", start=True)
        await task.write_log("before")
        await task.flush_logs()
        follow = Running("logs", task.pathspec, "--follow", "--nats", nats_server.url)
        try:
            await anyio.to_thread.run_sync(follow.wait_for, r"^before$")
            await task.write_log("after")
            await task.flush_logs()
            await anyio.to_thread.run_sync(follow.wait_for, r"^after$")
        finally:
            assert await anyio.to_thread.run_sync(follow.stop, signal.SIGINT) == 0
    assert follow.lines == ["before", "after"]


def test_the_facade_reads_stdout_and_stderr_as_metaflow_does(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """compat.Task(p).stdout / .stderr are the task's output; loglines gives (time, line)."""
    task, _ = anyio.run(_write_task, nats_server.url, tmp_path / "w").split()
    compat.connect(nats_server.url, projector=True, data_dir=tmp_path / "replica")
    try:
        session = compat._session
        assert session.portal is not None and session.client is not None
        session.portal.call(caught_up, session.client)
        facade = compat.Task(task)
        assert facade.stdout == "out 1\nout 2\n"
        assert facade.stderr == "err 1\n"
        assert [line for _, line in facade.loglines("stdout")] == ["out 1", "out 2"]
    finally:
        compat.close()
