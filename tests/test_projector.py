"""The projector, the query service and the reaper against a real nats-server."""

from __future__ import annotations

import gc
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from runstate.client import connect
from runstate.engine import (
    Settings,
    open_nats,
    provision,
)
from runstate.engine._jetstream import JetStreamEventLog
from runstate.engine._server import NatsServer
from runstate.engine.errors import NotFound, Timeout
from runstate.engine.testing import EventFactory
from runstate.projections import Projector, SQLiteReadStore, serve_replica
from runstate.projections._feeder import feeder_command
from runstate.projections._protocol import GetRequest

pytestmark = pytest.mark.anyio


async def _write_log(url: str, runs: int, tasks: int, flow: str = "Train") -> int:
    """Write ``runs`` complete runs with the pipeline; return the last stream sequence."""
    settings = Settings(nats_url=url)
    nc = await open_nats(settings)
    try:
        await provision(nc, settings)
        log = JetStreamEventLog(nc, settings)
        async with log.pipeline() as pipe:
            for run in range(1, runs + 1):
                for commit in EventFactory(flow=flow).run_commits(str(run), tasks):
                    await pipe.append(commit)
            receipts = await pipe.flush()
        return receipts[-1].sequence
    finally:
        await nc.close()


def _replica_process(url: str, store: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runstate.projections",
            "--nats",
            url,
            "--store",
            str(store),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _checkpoint(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'checkpoint'").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def _rows(store: Path) -> tuple[list[Any], list[Any]]:
    with sqlite3.connect(store) as db:
        runs = db.execute("SELECT pathspec, json FROM runs ORDER BY pathspec").fetchall()
        tasks = db.execute("SELECT pathspec, json FROM tasks ORDER BY pathspec").fetchall()
    return runs, tasks


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@asynccontextmanager
async def _replica(url: str, store: Path, **options: Any) -> AsyncIterator[Any]:
    settings = options.pop("settings", None) or Settings(nats_url=url)
    nc = await open_nats(settings)
    try:
        await provision(nc, settings)
        async with anyio.create_task_group() as tg:
            replica = await tg.start(
                lambda task_status: serve_replica(
                    nc, settings, store, task_status=task_status, **options
                )
            )
            yield replica
            tg.cancel_scope.cancel()
    finally:
        await nc.close()


async def _wait_until(predicate: Any, deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.02)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="alone"),
        # through a feeder process that folds its share of the runs, killed with it
        pytest.param(["--feed-from", "1"], id="fed"),
    ],
)
async def test_projector_killed_mid_apply_resumes_to_the_rebuilt_views(
    nats_url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]], extra: list[str]
) -> None:
    """kill -9 of a projector mid-log, then a restart, equals a fresh rebuild row for row."""
    last = await _write_log(nats_url, runs=120, tasks=40)
    store = tmp_path / "killed.sqlite3"
    proc = _replica_process(nats_url, store, *extra)
    processes.append(proc)
    await _wait_until(lambda: _checkpoint(store) > 0, 30, "the first checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed_at = _checkpoint(store)
    assert 0 < killed_at < last, "the kill should land in the middle of the log"
    proc = _replica_process(nats_url, store, *extra)
    processes.append(proc)
    await _wait_until(lambda: _checkpoint(store) == last, 60, "the restarted projector to catch up")
    proc.terminate()
    proc.wait(timeout=10)

    fresh = tmp_path / "fresh.sqlite3"
    async with _replica(nats_url, fresh, name="fresh") as replica:
        await replica.projector.wait_for(last, timeout=60)
    assert _rows(store) == _rows(fresh)
    runs, tasks = _rows(fresh)
    assert len(runs) == 120 and len(tasks) == 120 * 40


async def test_two_replicas_answer_identically_and_survive_one_dying(
    nats_url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Two replicas build identical stores; with one killed, every query is still answered."""
    last = await _write_log(nats_url, runs=30, tasks=5)
    stores = [tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"]
    for index, store in enumerate(stores):
        processes.append(_replica_process(nats_url, store, "--name", f"r{index}"))
    await _wait_until(lambda: all(_checkpoint(s) == last for s in stores), 60, "both replicas")
    assert _rows(stores[0]) == _rows(stores[1])
    processes[0].send_signal(signal.SIGKILL)
    processes[0].wait(timeout=10)
    async with connect(nats_url, projector=False, namespace=None) as client:
        for run in range(1, 31):
            view = await client.run(f"Train/{run}")
            assert view.state == "completed"
        status = await client.status()
        assert status["name"] == "r1"


async def test_malformed_messages_are_deadlettered_and_later_events_applied(
    nats_url: str, tmp_path: Path
) -> None:
    """A malformed or foreign message on an events subject is set aside; later events apply."""
    async with _replica(nats_url, tmp_path / "v.sqlite3") as replica:
        settings = Settings(nats_url=nats_url)
        nc = await open_nats(settings)
        try:
            js = nc.jetstream()
            bad = await js.publish("rs.ev.Train.1.r", b"this is not json")
            foreign = await js.publish(
                "rs.ev.Train.1.r",
                orjson.dumps(
                    [
                        {
                            "type": "task.state_changed",
                            "pathspec": "Other/9/x/1",
                            "payload": {"state": "running"},
                        }
                    ]
                ),
            )
            unknown_type = await js.publish(
                "rs.ev.Train.1.r", orjson.dumps([{"type": "run.exploded", "pathspec": "Train/1"}])
            )
            log = JetStreamEventLog(nc, settings)
            good = await log.append(EventFactory().run_created("1"))
            await replica.projector.wait_for(good.sequence, timeout=10)
            letters = replica.store.list_deadletters(10)
            assert [d.sequence for d in letters] == [bad.seq, foreign.seq, unknown_type.seq]
            assert "not JSON" in letters[0].reason
            assert "not written by runstate" in letters[1].reason
            dlq = await js.get_last_msg("RS_DEADLETTER", f"rs.dlq.{bad.seq}")
            assert dlq.data == b"this is not json"
            assert dlq.headers is not None and "Runstate-Reason" in dlq.headers
        finally:
            await nc.close()
        async with connect(nats_url, projector=False, namespace=None) as client:
            run = await client.run("Train/1", after=good)
            assert run.state == "pending"


async def test_after_sees_the_write_and_a_future_sequence_times_out(
    nats_url: str, tmp_path: Path
) -> None:
    """A read with after=<receipt> includes that write; a sequence far ahead times out clearly."""
    async with (
        _replica(nats_url, tmp_path / "v.sqlite3"),
        connect(nats_url, projector=False, namespace=None) as client,
    ):
        run = await client.create_run("Train")
        for _ in range(20):
            receipt = await (await client.run_handle(run.pathspec)).add_tags(f"t{_}")
            seen = await client.run(run.pathspec, after=receipt)
            assert f"t{_}" in seen.tags
        with pytest.raises(Timeout, match="applied up to sequence"):
            await client.request(
                client.query(GetRequest, pathspec=run.pathspec, after=10**9, wait=0.3)
            )
        with pytest.raises(NotFound):
            await client.run("Train/404")


WORKER = """
import anyio, sys
from runstate.engine import Settings, open_nats, provision, JetStreamEventLog, Writer
async def main():
    s = Settings(nats_url=sys.argv[1], heartbeat_interval=0.1, heartbeat_timeout=0.5)
    nc = await open_nats(s)
    await provision(nc, s)
    w = Writer(JetStreamEventLog(nc, s))
    run = await w.create_run("Reap")
    await run.start()
    async with run.task("train", 1) as task:
        print(task.pathspec, flush=True)
        await anyio.sleep_forever()
anyio.run(main)
"""


async def test_reaper_marks_a_killed_workers_task_crashed_once(
    nats_url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A task whose worker was killed is marked crashed, once, even with two reaping replicas."""
    worker = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [sys.executable, "-c", WORKER, nats_url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    processes.append(worker)
    assert worker.stdout is not None
    line = await anyio.to_thread.run_sync(worker.stdout.readline)
    pathspec = line.decode().strip()
    assert pathspec == "Reap/1/train/1"
    await anyio.sleep(0.3)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    worker.stdout.close()

    settings = Settings(nats_url=nats_url, heartbeat_interval=0.1, heartbeat_timeout=0.5)
    async with (
        _replica(nats_url, tmp_path / "a.sqlite3", settings=settings, name="a"),
        _replica(nats_url, tmp_path / "b.sqlite3", settings=settings, name="b"),
        connect(nats_url, projector=False, namespace=None) as client,
    ):
        deadline = time.monotonic() + 15
        while True:
            task = await client.task(pathspec)
            if task.state == "crashed":
                break
            assert time.monotonic() < deadline, f"task still {task.state}"
            await anyio.sleep(0.1)
        await anyio.sleep(1.5)  # give both reapers more rounds to (not) crash it again
        history = [r async for r in client.events(pathspec, follow=False)]
        crashes = [
            r
            for r in history
            if r.event.type == "task.state_changed" and r.event.payload.state == "crashed"
        ]
        assert len(crashes) == 1
        assert "no heartbeat" in (crashes[0].event.payload.message or "")
        assert task.exception is None and task.label == "Crashed"


async def test_reaper_leaves_a_task_awaiting_its_retry_alone(nats_url: str, tmp_path: Path) -> None:
    """A failed attempt waiting (pending) for its retry is not crashed, however long it waits."""
    settings = Settings(nats_url=nats_url, heartbeat_interval=0.1, heartbeat_timeout=0.4)
    async with (
        _replica(nats_url, tmp_path / "v.sqlite3", settings=settings) as replica,
        connect(nats_url, settings=settings, projector=False, namespace=None) as client,
    ):
        run = await client.create_run("Reap")
        await run.start()
        task = await run.create_task("train", start=True)
        await task.heartbeat()
        await task.fail("transient")
        receipt = await task.retry()
        await anyio.sleep(1.5)  # several reaper rounds past the timeout
        assert replica.reaper.crashed == []
        view = await client.task(task.pathspec, after=receipt)
        assert view.state == "pending" and view.attempt == 1


async def test_a_store_from_another_stream_is_rebuilt(nats_server: Any, tmp_path: Path) -> None:
    """A store folded from a deleted-and-recreated stream is rebuilt, not resumed."""
    url = nats_server.url
    store = tmp_path / "v.sqlite3"
    last = await _write_log(url, runs=3, tasks=2)
    async with _replica(url, store) as replica:
        await replica.projector.wait_for(last)
    settings = Settings(nats_url=url)
    nc = await open_nats(settings)
    try:
        await nc.jetstream().delete_stream("RS_EVENTS")
    finally:
        await nc.close()
    fresh_last = await _write_log(url, runs=1, tasks=1, flow="Other")
    assert fresh_last < last
    async with _replica(url, store) as replica:
        await replica.projector.wait_for(fresh_last, timeout=10)
        assert replica.store.get_run("Train/1") is None
        assert replica.store.get_run("Other/1") is not None


async def _fold_log(nats_url: str, store: Path, **options: Any) -> Any:
    """A projector with ``options`` that has folded the whole log into ``store``."""
    from runstate.projections import Projector, SQLiteReadStore

    settings = Settings(nats_url=nats_url)
    last = await JetStreamEventLog(nc := await open_nats(settings), settings).stream_last_sequence()
    views = SQLiteReadStore(store)
    try:
        async with anyio.create_task_group() as tg:
            projector = Projector(JetStreamEventLog(nc, settings), views, **options)
            tg.start_soon(projector.run)
            await projector.wait_for(last, timeout=60)
            tg.cancel_scope.cancel()
    finally:
        views.close()
        await nc.close()
    return projector


_FEEDER = feeder_command()


def _feeder_whose_wire_fails(after: int) -> list[str]:
    """The feeder, with its ``WireConsumer`` failing after ``after`` deliveries."""
    script = f"""
from runstate.engine import _wire
original = _wire.WireConsumer.deliveries
def deliveries(self):
    for number, delivery in enumerate(original(self)):
        if number == {after}:
            raise _wire.WireError("cut by the test")
        yield delivery
_wire.WireConsumer.deliveries = deliveries
from runstate.projections._feeder import main
main()
"""
    return [sys.executable, "-c", script]


@pytest.mark.parametrize("share", [0.0, 0.5, 0.95])
async def test_a_feeder_folding_its_share_of_the_runs_folds_what_the_projector_alone_folds(
    nats_url: str, tmp_path: Path, share: float
) -> None:
    """The feeder folds the runs its share hashes to, mark after mark, with caches too small
    to hold a run (so views the store has yet to see are kept, and the rest read back from the
    store): the views, and the dead letters of malformed messages on either side's subjects,
    are the projector's alone, row for row."""
    await _write_log(nats_url, runs=12, tasks=10)
    nc = await open_nats(Settings(nats_url=nats_url))
    try:
        for run in range(1, 13):
            await nc.jetstream().publish(f"rs.ev.Train.{run}.r", b"not json %d" % run)
            await nc.jetstream().publish(f"rs.ev.Train.{run}.t.train.{run}", b"[{}]")
        last = (await nc.jetstream().stream_info("RS_EVENTS")).state.last_seq
    finally:
        await nc.close()
    alone = await _fold_log(nats_url, tmp_path / "alone.sqlite3")
    fed = await _fold_log(
        nats_url,
        tmp_path / "fed.sqlite3",
        feeder=_FEEDER,
        feed_from=1,
        feed_share=share,
        batch_size=25,
        cache_size=3,
    )
    assert fed.fed == last
    if share == 0:
        assert fed.folded_by_feeder == 0
    else:
        assert 0 < fed.folded_by_feeder < last
    assert fed.events_applied == alone.events_applied
    assert fed.deadlettered == alone.deadlettered == 24
    assert _rows(tmp_path / "fed.sqlite3") == _rows(tmp_path / "alone.sqlite3")
    assert _deadletters(tmp_path / "fed.sqlite3") == _deadletters(tmp_path / "alone.sqlite3")


async def test_a_server_killed_in_the_middle_of_a_feed_loses_nothing(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """kill -9 of nats-server while a feeder feeds (and folds), then a restart: the projector
    gets to the end of the log with the views of a projector alone."""
    url = nats_server.url
    last = await _write_log(url, runs=60, tasks=40)
    settings = Settings(nats_url=url)
    nc = await open_nats(settings)
    store = SQLiteReadStore(tmp_path / "fed.sqlite3")
    try:
        async with anyio.create_task_group() as tg:
            projector = Projector(
                JetStreamEventLog(nc, settings), store, feeder=_FEEDER, feed_from=1, batch_size=50
            )
            tg.start_soon(projector.run)
            with anyio.fail_after(30):
                while projector.applied == 0:  # noqa: ASYNC110 - polls its progress
                    await anyio.sleep(0.005)
            nats_server.kill()
            killed_at = projector.applied
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(nats_server.restart)
            await projector.wait_for(last, timeout=60)
            tg.cancel_scope.cancel()
    finally:
        store.close()
        await nc.close()
    assert 0 < killed_at < last, "the kill should land in the middle of the feed"
    await _fold_log(url, tmp_path / "alone.sqlite3")
    assert _rows(tmp_path / "fed.sqlite3") == _rows(tmp_path / "alone.sqlite3")


def _deadletters(store: Path) -> list[Any]:
    with sqlite3.connect(store) as db:
        return db.execute(
            "SELECT sequence, subject, reason, data FROM deadletters ORDER BY sequence"
        ).fetchall()


async def test_a_long_backlog_is_held_back_and_resumed_without_loss(
    nats_url: str, tmp_path: Path
) -> None:
    """A projector holding ``buffer_limit`` deliveries stops its consumer, resumes after the
    last one held, and folds the same views as one that never stopped."""
    last = await _write_log(nats_url, runs=10, tasks=30)
    # small batches, so deliveries pile up while each is folded
    paused = await _fold_log(nats_url, tmp_path / "held.sqlite3", batch_size=20, buffer_limit=50)
    unpaused = await _fold_log(nats_url, tmp_path / "free.sqlite3")
    assert last > 600
    assert paused.pauses >= 2
    assert unpaused.pauses == 0
    assert paused.events_applied == unpaused.events_applied
    assert _rows(tmp_path / "held.sqlite3") == _rows(tmp_path / "free.sqlite3")


@pytest.mark.parametrize(
    ("command", "fed_all"),
    [
        pytest.param(_FEEDER, True, id="feeder"),
        # its own reading of the consumer fails, at once or after 100 deliveries: it goes
        # on through nats-py from where it got
        pytest.param(_feeder_whose_wire_fails(after=0), True, id="wire-refused"),
        pytest.param(_feeder_whose_wire_fails(after=100), True, id="wire-cut"),
        # the feeder's output cut off inside a frame: what came whole is applied
        pytest.param(
            ["sh", "-c", f"{shlex.join(_FEEDER)} | head -c 40000"],
            False,
            id="cut-short",
        ),
        pytest.param(
            [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * 64)"],
            False,
            id="garbage",
        ),
        pytest.param(["/nonexistent/feeder"], False, id="missing"),
    ],
)
async def test_a_backlog_through_a_feeder_folds_what_the_projector_alone_folds(
    nats_url: str,
    tmp_path: Path,
    command: list[str],
    fed_all: bool,
    capfd: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    """Through a feeder process, or after it fails in any way (its own consumer goes on from
    what was applied), the projector folds the same views as without one."""
    last = await _write_log(nats_url, runs=4, tasks=30)
    alone = await _fold_log(nats_url, tmp_path / "alone.sqlite3")
    collector = gc.get_threshold()
    fed = await _fold_log(nats_url, tmp_path / "fed.sqlite3", feeder=command, feed_from=1)
    assert gc.get_threshold() == collector  # rarer young collections only while it feeds

    assert alone.fed == 0
    if fed_all:
        assert fed.fed == last
    else:
        assert fed.fed < last
    assert fed.events_applied == alone.events_applied
    assert _rows(tmp_path / "fed.sqlite3") == _rows(tmp_path / "alone.sqlite3")
    # the feeder read the consumer off the wire, unless the test cut it; and a feeder whose
    # output is cut (the projector no longer reads) exits without complaint
    err = capfd.readouterr().err
    assert ("drain.wire_failed" in err) == request.node.callspec.id.startswith("wire-")
    assert "feeder.failed" not in err
