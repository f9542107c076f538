"""The local runstate: the background server a client given no URL joins or starts.

Real processes throughout: scripts and a Jupyter kernel (executed with
nbclient) that start it and are killed mid-write, processes racing to start
it, its idle stop, ``runstate server status`` and ``stop``, a stale record
and a server of an older version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from runstate.client import LocalServerOutdated, RunState, connect
from runstate.client._local import _running
from runstate.engine._settings import Settings

RUNSTATE = [sys.executable, "-m", "runstate.client.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTATE_")}
    env.update(RUNSTATE_LOG_LEVEL="warning", PYTHONUNBUFFERED="1", **extra)
    return env


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an orphan that exited may wait a while for init to reap it)."""
    return _running(pid)


def _until(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition()`` every 20 ms until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def _record(data_dir: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((data_dir / "server.json").read_text())
    return record


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


#: writes runs until stopped, appending each acknowledged run's pathspec to a file
_WRITER = """
import os, sys, anyio
from runstate.client import connect

async def main(data_dir, acked):
    async with connect(data_dir=data_dir) as client:
        with open(acked, "a") as out:
            while True:
                run = await client.create_run("Killed")
                out.write(run.pathspec + "\\n")
                out.flush()
                os.fsync(out.fileno())

anyio.run(main, sys.argv[1], sys.argv[2])
"""


async def _next_client_sees(data_dir: Path, acked: list[str]) -> None:
    """A new client reads every acknowledged run and writes and reads one of its own."""
    async with connect(data_dir=data_dir) as client:
        for pathspec in acked:
            assert (await client.run(pathspec)).pathspec == pathspec
        run = await client.create_run("After")
        assert (await client.run(run.pathspec, after=run.receipt)).state is RunState.PENDING


def _kill_mid_write(process: subprocess.Popen[bytes], acked: Path, sig: signal.Signals) -> None:
    try:
        _until(lambda: len(_lines(acked)) >= 20, 60, "the writer acknowledged 20 runs")
        process.send_signal(sig)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_script_killed_mid_write_leaves_the_local_runstate_serving(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """A script that started the local runstate, killed while writing, leaves it serving:
    the next client reads every acknowledged run and writes at once, on the same server."""
    data_dir, acked = tmp_path / "data", tmp_path / "acked"
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(data_dir), str(acked)], env=_env(), cwd=tmp_path
    )
    _kill_mid_write(process, acked, sig)
    before = _record(data_dir)
    assert before["owner_pid"] != process.pid and _alive(before["owner_pid"])
    anyio.run(_next_client_sees, data_dir, _lines(acked))
    assert _record(data_dir)["owner_pid"] == before["owner_pid"]


_NOTEBOOK_CELLS = [
    "import os\nopen({pid!r}, 'w').write(str(os.getpid()))",
    "from runstate.client import connect\n"
    "connection = connect(data_dir={data_dir!r})\n"
    "client = await connection.__aenter__()",
    "with open({acked!r}, 'a') as out:\n"
    "    while True:\n"
    "        run = await client.create_run('Kernel')\n"
    "        out.write(run.pathspec + '\\n')\n"
    "        out.flush()\n"
    "        os.fsync(out.fileno())",
]

#: executes the notebook given as JSON cells with nbclient (its kernel is the venv's python3)
_EXECUTE = """
import json, sys, nbformat
from nbclient import NotebookClient
cells = [nbformat.v4.new_code_cell(source) for source in json.loads(sys.argv[1])]
notebook = nbformat.v4.new_notebook(cells=cells)
NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_jupyter_kernel_killed_mid_write_leaves_the_local_runstate_serving(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """A Jupyter kernel (run by nbclient) that started the local runstate, killed while
    writing, leaves it serving: the next client reads every acknowledged run and writes."""
    data_dir, acked, pid_file = tmp_path / "data", tmp_path / "acked", tmp_path / "kernel.pid"
    cells = [
        cell.format(pid=str(pid_file), data_dir=str(data_dir), acked=str(acked))
        for cell in _NOTEBOOK_CELLS
    ]
    runner = subprocess.Popen(
        [sys.executable, "-c", _EXECUTE, json.dumps(cells)],
        env=_env(JUPYTER_PLATFORM_DIRS="1"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _until(lambda: len(_lines(acked)) >= 20, 120, "the kernel acknowledged 20 runs")
        kernel = int(pid_file.read_text())
        os.kill(kernel, sig)
        _until(lambda: not _alive(kernel), 30, "the kernel exits")
    finally:
        runner.kill()
        runner.wait()
    record = _record(data_dir)
    assert record["owner_pid"] != kernel and _alive(record["owner_pid"])
    anyio.run(_next_client_sees, data_dir, _lines(acked))


_RACER = """
import sys, anyio
from runstate.client import connect

async def main(data_dir):
    async with connect(data_dir=data_dir) as client:
        run = await client.create_run("Race")
        await client.run(run.pathspec, after=run.receipt)
        print(client.settings.nats_url, run.pathspec)

anyio.run(main, sys.argv[1])
"""


def test_eight_processes_racing_to_connect_start_one_server(tmp_path: Path) -> None:
    """8 processes connecting at once on a fresh data directory start one local runstate,
    and all 8 connect to it, write and read."""
    data_dir = tmp_path / "data"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(data_dir)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), [err for _, err in outputs]
    urls = {out.split()[0] for out, _ in outputs}
    assert urls == {_record(data_dir)["url"]}
    assert len({out.split()[1] for out, _ in outputs}) == 8
    log = (data_dir / "runstate-server.log").read_text()
    assert log.count("runstate server ready:") == 1, log


def test_the_local_runstate_stops_when_idle_and_not_before(tmp_path: Path) -> None:
    """A connected client keeps it running past its idle time; once none is connected it
    stops by itself and forgets its record, and the next client starts it again."""
    settings = Settings(data_dir=tmp_path / "data", local_idle_timeout=1.0)

    async def stay_connected() -> tuple[int, str]:
        async with connect(settings=settings) as client:
            owner = _record(settings.data_dir)["owner_pid"]
            await anyio.sleep(3.0)  # three idle times
            run = await client.create_run("Idle")  # still served
            return owner, run.pathspec

    owner, pathspec = anyio.run(stay_connected)
    assert _alive(owner)
    _until(lambda: not _alive(owner), 30, "the idle server stops")
    assert not (settings.data_dir / "server.json").exists()

    async def again() -> int:
        async with connect(settings=settings) as client:
            assert (await client.run(pathspec)).pathspec == pathspec
            return int(_record(settings.data_dir)["owner_pid"])

    assert anyio.run(again) != owner


def test_status_shows_the_server_and_stop_stops_it(tmp_path: Path) -> None:
    """``server status`` shows pid, URLs, data directory, version, uptime and applied
    sequence; ``server stop`` stops it; then status says none runs (exit 1). Its log is
    0600, and the token is on no command line."""
    data_dir = tmp_path / "data"

    async def write() -> int:
        async with connect(data_dir=data_dir) as client:
            run = await client.create_run("Status")
            assert run.receipt is not None
            await client.run(run.pathspec, after=run.receipt)
            return run.receipt.sequence

    sequence = anyio.run(write)
    record = _record(data_dir)
    token = (data_dir / "server.token").read_text().strip()
    for pid in (record["owner_pid"], record["pid"]):  # the token is on no command line
        assert token not in Path(f"/proc/{pid}/cmdline").read_text()
    log = data_dir / "runstate-server.log"
    assert log.stat().st_mode & 0o777 == 0o600 and "runstate server ready" in log.read_text()
    args = ["--data-dir", str(data_dir)]
    shown = subprocess.run(
        [*RUNSTATE, "server", "status", "--json", *args], capture_output=True, text=True, env=_env()
    )
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["pid"] == record["owner_pid"] and status["url"] == record["url"]
    assert status["data_dir"] == str(data_dir) and status["detached"] is True
    assert status["version"] == record["version"] and status["applied"] >= sequence
    assert status["uptime"] > 0
    text = subprocess.run(
        [*RUNSTATE, "server", "status", *args], capture_output=True, text=True, env=_env()
    )
    for label in ("pid:", "NATS:", "HTTP:", "data dir:", "uptime:", "applied:", "log:"):
        assert label in text.stdout, text.stdout

    stopped = subprocess.run(
        [*RUNSTATE, "server", "stop", *args], capture_output=True, text=True, env=_env()
    )
    assert stopped.returncode == 0, stopped.stderr
    assert f"pid {record['owner_pid']}" in stopped.stdout
    assert not _alive(record["owner_pid"]) and not _alive(record["pid"])
    assert not (data_dir / "server.json").exists()
    none = subprocess.run(
        [*RUNSTATE, "server", "status", *args], capture_output=True, text=True, env=_env()
    )
    assert none.returncode == 1 and "no runstate server runs" in none.stdout


def test_a_stale_record_is_replaced(tmp_path: Path) -> None:
    """A record whose processes are gone, or whose owner lives but whose server does not
    answer, is replaced by a server that works; a live pid it named is never signalled."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    gone = subprocess.Popen(["true"])
    gone.wait()
    unrelated = subprocess.Popen(["sleep", "120"])
    try:
        for owner in (gone.pid, unrelated.pid):
            record = {
                "url": "nats://127.0.0.1:9",
                "pid": gone.pid,
                "owner_pid": owner,
                "version": "0.1.0",
                "detached": True,
                "ready": True,
            }
            (data_dir / "server.json").write_text(json.dumps(record))

            async def use() -> None:
                async with connect(data_dir=data_dir) as client:
                    run = await client.create_run("Stale")
                    await client.run(run.pathspec, after=run.receipt)

            anyio.run(use)
            replaced = _record(data_dir)
            assert replaced["owner_pid"] not in (gone.pid, unrelated.pid)
            assert _alive(replaced["owner_pid"]) and unrelated.poll() is None
            anyio.run(_stop, data_dir)
    finally:
        unrelated.kill()
        unrelated.wait()


def test_a_server_that_stopped_answering_is_replaced(tmp_path: Path) -> None:
    """A local runstate that no longer answers (here: stopped with SIGSTOP) is stopped and
    replaced under the lock, keeping every event."""
    data_dir = tmp_path / "data"

    async def write() -> str:
        async with connect(data_dir=data_dir) as client:
            return (await client.create_run("Hung")).pathspec

    pathspec = anyio.run(write)
    hung = _record(data_dir)
    os.kill(hung["owner_pid"], signal.SIGSTOP)
    try:
        anyio.run(_next_client_sees, data_dir, [pathspec])
    finally:
        if _alive(hung["owner_pid"]):
            os.kill(hung["owner_pid"], signal.SIGCONT)
    assert not _alive(hung["owner_pid"]) and not _alive(hung["pid"])
    assert _record(data_dir)["owner_pid"] != hung["owner_pid"]


def test_an_older_local_runstate_says_so_and_restarts_when_asked(tmp_path: Path) -> None:
    """A client meeting a local runstate of an older version raises LocalServerOutdated
    naming both fixes, touching nothing; ``restart_local=True`` replaces it."""
    data_dir = tmp_path / "data"

    async def write() -> str:
        async with connect(data_dir=data_dir) as client:
            return (await client.create_run("Versions")).pathspec

    pathspec = anyio.run(write)
    old = _record(data_dir)
    (data_dir / "server.json").write_text(json.dumps({**old, "version": "0.0.9"}))

    async def join(**options: Any) -> int:
        async with connect(data_dir=data_dir, **options) as client:
            assert (await client.run(pathspec)).pathspec == pathspec
            return int(_record(data_dir)["owner_pid"])

    with pytest.raises(LocalServerOutdated, match=r"runs runstate 0\.0\.9, older than") as info:
        anyio.run(join)
    assert "runstate server stop" in info.value.message
    assert "restart_local=True" in info.value.message
    assert _alive(old["owner_pid"])
    assert anyio.run(lambda: join(restart_local=True)) != old["owner_pid"]
    assert not _alive(old["owner_pid"])
    assert _record(data_dir)["version"] != "0.0.9"


def test_a_client_of_another_prefix_reads_its_own_runs(tmp_path: Path) -> None:
    """A client whose prefix the local runstate does not fold joins it all the same and
    folds its prefix itself, so its reads answer."""
    data_dir = tmp_path / "data"

    async def use(prefix: str) -> str | None:
        async with connect(data_dir=data_dir, prefix=prefix) as client:
            run = await client.create_run("Prefixed")
            assert (await client.run(run.pathspec, after=run.receipt)).pathspec == run.pathspec
            return client.settings.nats_url

    first = anyio.run(use, "rs")
    assert anyio.run(use, "other") == first == _record(data_dir)["url"]


async def _stop(data_dir: Path) -> None:
    from runstate.client._local import stop_local

    await stop_local(data_dir)
