"""A process that started the local runstate leaves it serving, however it is stopped.

Each test runs a real process on a data directory of its own with no NATS
URL, so it starts the local runstate in the background: ``runstate watch
--wait``, ``runstate events --follow --wait`` or a script using
``connect()``. It is stopped with SIGTERM or SIGINT (or SIGKILL, which no
handler can see); the command exits cleanly, the local runstate keeps
running, ``runstate runs`` works on it at once, and after ``runstate server
stop`` a ``runstate server`` in the foreground starts on the same directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runstate.client._local import _running

RUNSTATE = [sys.executable, "-m", "runstate.client.cli"]

_SCRIPT = """
import sys, anyio
from runstate.client import connect

async def main():
    async with connect(data_dir=sys.argv[1]) as client:
        print("connected", file=sys.stderr, flush=True)
        await anyio.sleep(600)

anyio.run(main)
"""

_COMMANDS = {
    "watch": [*RUNSTATE, "watch", "Nothing/1", "--wait"],
    "events --follow": [*RUNSTATE, "events", "Nothing", "--follow", "--wait"],
    "script": [sys.executable, "-c", _SCRIPT],
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTATE_")}
    env.update(RUNSTATE_LOG_LEVEL="warning", PYTHONUNBUFFERED="1")
    return env


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an orphan that exited may wait a while for init to reap it)."""
    return _running(pid)


def _until(condition: object, timeout: float, what: str) -> None:
    """Poll ``condition()`` every 50 ms until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def _start(name: str, data_dir: Path) -> tuple[subprocess.Popen[str], int]:
    """Start the command ``name`` on ``data_dir``; once it waits, return it and the pid of
    the local runstate it started."""
    command = list(_COMMANDS[name])
    command += [str(data_dir)] if name == "script" else ["--data-dir", str(data_dir)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
    )
    assert process.stderr is not None
    line = process.stderr.readline()  # the command's first words: it is waiting now
    assert "waiting for it" in line or "connected" in line, line
    server = json.loads((data_dir / "server.json").read_text())
    assert _alive(server["owner_pid"]) and server["owner_pid"] != process.pid
    return process, int(server["owner_pid"])


#: SIGKILL reaches no handler: the script's case shows that none is needed
_CASES = [
    *((name, sig) for name in _COMMANDS for sig in (signal.SIGTERM, signal.SIGINT)),
    ("script", signal.SIGKILL),
]


@pytest.mark.parametrize(("name", "sig"), _CASES, ids=[f"{n}-{s.name}" for n, s in _CASES])
def test_a_stopped_process_leaves_the_local_runstate_serving(
    tmp_path: Path, name: str, sig: signal.Signals
) -> None:
    """A command or script stopped by a signal leaves the local runstate it started running:
    ``runs`` works on it; once stopped, ``server`` starts on the directory in the foreground
    (tried after SIGKILL)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()  # the reading commands create none
    process, server_pid = _start(name, data_dir)
    try:
        process.send_signal(sig)
        status = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        stderr = process.stderr.read()
        process.stderr.close()
    if name != "script":
        assert status == 0, stderr
        assert "Traceback" not in stderr, stderr
    assert _alive(server_pid)

    listed = subprocess.run(
        [*RUNSTATE, "runs", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert listed.returncode == 0, listed.stderr
    assert "no runs yet" in listed.stdout
    assert json.loads((data_dir / "server.json").read_text())["owner_pid"] == server_pid
    if sig is not signal.SIGKILL:
        return  # the teardown stops it; one case is enough to try the foreground after
    stopped = subprocess.run(
        [*RUNSTATE, "server", "stop", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert stopped.returncode == 0, stopped.stderr
    _until(lambda: not _alive(server_pid), 15, f"the local runstate {server_pid} stops")
    server = subprocess.Popen(
        [*RUNSTATE, "server", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert "ready: nats://" in first, first
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        for stream in (server.stdout, server.stderr):
            assert stream is not None
            stream.close()
