"""The local runstate of a data directory: one background server that no client owns.

A client given no URL joins the server ``server.json`` names, as a client of
a URL (with the data directory's token). When none runs, the first client
starts one, ``runstate server --detached``, in a session of its own with its
output in ``runstate-server.log``, waits until its query service answers,
and joins it. Clients never stop it: a client that dies leaves it serving
the others. It stops by itself after ``Settings.local_idle_timeout`` seconds
with no client connected, or on ``runstate server stop``.

Joining, starting and stopping happen under ``local.lock``, so two clients
racing start one server, and a server stopping for idleness never leaves a
client that joined it meanwhile: a client holds the lock until its
presence is known to the server (a subscription to ``PRESENCE_SUBJECT``,
which is how the server counts its clients).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from runstate.engine._embedded import local_lock, read_record, read_token, runstate_version
from runstate.engine._logging import get_logger
from runstate.engine._private import PRIVATE_UMASK, private_dir, private_file
from runstate.engine._server import _answers_nats, _pid_alive
from runstate.engine._settings import Settings
from runstate.engine.errors import LocalServerOutdated, Unavailable
from runstate.projections._replica import Replica

__all__ = [
    "LOG_FILE",
    "PRESENCE_SUBJECT",
    "STATUS_SUBJECT",
    "STOP_SUBJECT",
    "local_replica",
    "local_status",
    "stop_local",
]

log = get_logger("runstate.client")

#: every client of the local runstate subscribes here; the server asks who is there
PRESENCE_SUBJECT = "_RS.local.presence"
#: the server's status (``runstate server status``)
STATUS_SUBJECT = "_RS.local.status"
#: asks the server to stop (``runstate server stop``)
STOP_SUBJECT = "_RS.local.stop"
#: the local runstate's own log, in its data directory (0600)
LOG_FILE = "runstate-server.log"

#: seconds a client waits for the local runstate it started to answer
_START_TIMEOUT = 30.0
#: seconds a stopped server's processes get to exit before SIGKILL
_STOP_TIMEOUT = 15.0
#: the log is moved to ``.1`` when a server starts and it is larger than this
_LOG_LIMIT = 10 * 1024 * 1024


@contextlib.asynccontextmanager
async def local_replica(
    settings: Settings, *, projector: bool | None, restart: bool = False
) -> AsyncIterator[Replica]:
    """A ``Replica`` (named ``client``) on the local runstate of ``settings.data_dir``.

    Joins the server that runs there, or starts one and waits until it
    answers. ``projector=True`` also runs a projector replica in this
    process (its store under ``data_dir/replicas``), as does a client of
    another prefix than the server folds, unless ``projector=False``. Raises
    ``LocalServerOutdated`` when the server runs an older runstate than this
    one, unless ``restart`` (it is then stopped and this version started),
    ``Unavailable`` when a server does not start (its log says why).
    """
    data_dir = private_dir(Path(settings.data_dir))
    held = local_lock(data_dir)
    await anyio.to_thread.run_sync(held.__enter__)
    async with contextlib.AsyncExitStack() as stack:
        try:
            replica = await _join(stack, settings.replace(data_dir=data_dir), projector, restart)
        finally:
            held.__exit__(None, None, None)
        yield replica


async def _join(
    stack: contextlib.AsyncExitStack, settings: Settings, projector: bool | None, restart: bool
) -> Replica:
    """Connect to the recorded server if it answers, else replace it; under the lock."""
    data_dir = settings.data_dir
    for _ in range(3):
        record = read_record(data_dir)
        started = False
        if record is not None and not await anyio.to_thread.run_sync(_answers, record):
            await anyio.to_thread.run_sync(_clear_stale, data_dir, record)
            record = None
        if record is not None and _older(record.get("version")):
            if not restart:
                raise LocalServerOutdated(
                    f"the local runstate of {data_dir} runs runstate {record.get('version')}, "
                    f"older than this client's {runstate_version()}: stop it with "
                    f"`runstate server stop --data-dir {data_dir}` (the next client starts "
                    "this version), or connect with restart_local=True",
                    version=record.get("version"),
                    pid=record.get("owner_pid", record.get("pid")),
                )
            await _stop_record(data_dir, record, settings, lock_held=True)
            record = None
        if record is None:
            record = await anyio.to_thread.run_sync(_start, settings)
            started = True
        foreign = record.get("prefix", settings.prefix) != settings.prefix
        if projector is None and foreign:
            # the server folds another prefix: this client folds its own, as with a URL
            projector = True
        attempt = contextlib.AsyncExitStack()
        try:
            replica = await attempt.enter_async_context(
                Replica(
                    _joining(settings, record),
                    projector=projector,
                    name="client",
                    # the owner's token makes this client the local server's admin: the
                    # streams of a prefix the server does not fold are its to create
                    provision=foreign,
                )
            )
            if started or not record.get("ready") or await _answers_status(replica.nc):
                await replica.nc.subscribe(PRESENCE_SUBJECT, cb=_present)
                await replica.nc.flush()
                stack.push_async_exit(attempt)
                return replica
        except Unavailable:
            await attempt.aclose()
            if started:
                raise
        except BaseException:
            await attempt.aclose()
            raise
        await attempt.aclose()
        log.warning("local.not_answering", data_dir=str(data_dir), record=record)
        await anyio.to_thread.run_sync(_clear_stale, data_dir, record, True)
    raise Unavailable(f"the local runstate of {data_dir} did not start; see {data_dir / LOG_FILE}")


def _joining(settings: Settings, record: dict[str, Any]) -> Settings:
    """Settings of a client of the recorded server: its URL and the data directory's token;
    pickles trusted unless the settings say not, the log being this user's own."""
    return settings.replace(
        nats_url=record["url"], token=read_token(settings.data_dir)
    ).trusting_pickles_if(True)


async def _present(msg: Msg) -> None:
    """Answer the server's roll call: this client is connected."""
    if msg.reply:
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.respond(b"")


async def _answers_status(nc: NATS, timeout: float = 2.0) -> bool:  # noqa: ASYNC109
    try:
        await nc.request(STATUS_SUBJECT, b"", timeout=timeout)
    except (nats.errors.Error, OSError):
        return False
    return True


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive and not a zombie (an orphan exited, its reaping pending)."""
    if not _pid_alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: alive as far as anyone can tell
    return stat.rpartition(")")[2].split()[0] != "Z"


def _owner(record: dict[str, Any]) -> int:
    owner = record.get("owner_pid", record.get("pid"))
    return owner if isinstance(owner, int) else -1


def _answers(record: dict[str, Any]) -> bool:
    """Whether the recorded server and its owner are alive and the server speaks NATS."""
    url, pid = record.get("url"), record.get("pid")
    return (
        isinstance(url, str)
        and isinstance(pid, int)
        and _running(pid)
        and _running(_owner(record))
        and _answers_nats(url)
    )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0]))


def _older(version: object) -> bool:
    """Whether a server of ``version`` is older than this runstate (no version: older)."""
    if not isinstance(version, str):
        return True
    return _version_key(version) < _version_key(runstate_version())


def _cmdline(pid: int) -> str | None:
    """The process's command line (Linux), or None where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def _ours(pid: int, marker: str) -> bool:
    """Whether ``pid`` is alive and, where the system shows command lines, names ``marker``:
    a recorded pid since taken by another program is never signalled."""
    if pid == os.getpid() or not _running(pid):
        return False
    line = _cmdline(pid)
    return line is None or marker in line


def _terminate(pids: list[int]) -> None:
    """SIGTERM each pid, then SIGKILL what is left after ``_STOP_TIMEOUT``; wait for them."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped process could not act on it
    if not _await_exit(pids, _STOP_TIMEOUT):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _await_exit(pids, _STOP_TIMEOUT)


def _await_exit(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _clear_stale(data_dir: Path, record: dict[str, Any], hung: bool = False) -> None:
    """Stop what is left of a recorded server that does not answer, then forget it.

    Its nats-server (found by the data directory on its command line) must be
    gone before another starts on the same store. Its owner is stopped only
    when it is a background local runstate (``hung``: it is alive but does not
    answer); a process that ran its own server is someone's program.
    """
    log.info("local.replacing_stale_record", data_dir=str(data_dir), record=record)
    pids = []
    owner = _owner(record)
    if record.get("detached") and _ours(owner, "runstate"):
        pids.append(owner)
    pid = record.get("pid")
    if isinstance(pid, int) and (hung or not _running(owner)) and _ours(pid, str(data_dir)):
        pids.append(pid)
    elif isinstance(pid, int) and _running(pid):
        # a dying owner's watchdog stops its server: give it the time to
        _await_exit([pid], _STOP_TIMEOUT)
    _terminate(pids)
    if read_record(data_dir) == record:
        (data_dir / "server.json").unlink(missing_ok=True)


def _rotate_log(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > _LOG_LIMIT:
            os.replace(path, path.with_name(path.name + ".1"))


def _start(settings: Settings) -> dict[str, Any]:
    """Start the local runstate in the background and return its record once it answers."""
    data_dir = settings.data_dir
    log_path = data_dir / LOG_FILE
    _rotate_log(log_path)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RUNSTATE_NATS_URL", "RUNSTATE_TOKEN", "RUNSTATE_DATA_DIR", "RUNSTATE_PREFIX")
    }
    env["RUNSTATE_LOCAL_IDLE_TIMEOUT"] = str(settings.local_idle_timeout)
    env.setdefault("RUNSTATE_LOG_LEVEL", "info")
    env["PYTHONUNBUFFERED"] = "1"  # its log says what it did up to the moment it stopped
    command = [sys.executable, "-m", "runstate.client.cli._serve", "--detached"]
    command += ["--data-dir", str(data_dir), "--prefix", settings.prefix]
    with open(private_file(log_path), "ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals to this process's group do not reach it
            env=env,
            cwd=data_dir,
            umask=PRIVATE_UMASK,
        )
    # reaped as soon as it exits: a zombie would still count as alive
    threading.Thread(target=process.wait, name="runstate-local-reaper", daemon=True).start()
    log.info("local.starting", data_dir=str(data_dir), pid=process.pid)
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        record = read_record(data_dir)
        if record is not None and record.get("ready") and _answers(record):
            if record.get("owner_pid") == process.pid or process.poll() is not None:
                return record
        if process.poll() is not None:
            raise Unavailable(
                f"the local runstate of {data_dir} exited with code {process.returncode} "
                f"while starting; see {log_path}: {_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            _terminate([process.pid])
            raise Unavailable(
                f"the local runstate of {data_dir} did not answer within {_START_TIMEOUT:g} s; "
                f"see {log_path}: {_tail(log_path)}"
            )
        time.sleep(0.01)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no log output)"


# -- status and stop ---------------------------------------------------------------------


async def _ask(
    data_dir: Path,
    record: dict[str, Any],
    subject: str,
    payload: dict[str, Any],
    timeout: float,  # noqa: ASYNC109 - a bound on one request
) -> dict[str, Any] | None:
    """Send ``payload`` to the recorded server on ``subject``; its reply, or None."""
    try:
        nc = await nats.connect(
            record["url"],
            token=read_token(data_dir),
            allow_reconnect=False,
            connect_timeout=timeout,
            max_reconnect_attempts=0,
            name="runstate-control",
        )
    except (nats.errors.Error, OSError):
        return None
    try:
        reply = await nc.request(subject, orjson.dumps(payload), timeout=timeout)
        answer = orjson.loads(reply.data)
        return answer if isinstance(answer, dict) else None
    except (nats.errors.Error, OSError, orjson.JSONDecodeError):
        return None
    finally:
        with contextlib.suppress(nats.errors.Error, OSError):
            await nc.close()


async def local_status(data_dir: Path, *, timeout: float = 5.0) -> dict[str, Any] | None:  # noqa: ASYNC109
    """What the server of ``data_dir`` says of itself (pid, URLs, version, uptime, applied
    sequence), None when none is recorded; ``{"answering": False, ...}`` with the record
    when one is recorded but does not answer."""
    data_dir = Path(data_dir)
    record = read_record(data_dir)
    if record is None:
        return None
    answer = None
    if await anyio.to_thread.run_sync(_answers, record):
        answer = await _ask(data_dir, record, STATUS_SUBJECT, {}, timeout)
    if answer is None:
        return {**record, "answering": False, "data_dir": str(data_dir)}
    return {**answer, "answering": True}


async def stop_local(data_dir: Path, *, timeout: float = 5.0) -> dict[str, Any] | None:  # noqa: ASYNC109
    """Stop the server of ``data_dir`` and wait until its processes are gone; return its
    record, or None when none runs. Its clients lose their connection."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return None
    held = local_lock(data_dir)
    await anyio.to_thread.run_sync(held.__enter__)
    try:
        record = read_record(data_dir)
        if record is None:
            return None
        await _stop_record(data_dir, record, Settings(data_dir=data_dir), lock_held=True)
        return record
    finally:
        held.__exit__(None, None, None)


async def _stop_record(
    data_dir: Path, record: dict[str, Any], settings: Settings, *, lock_held: bool
) -> None:
    """Ask the recorded server to stop (``lock_held``: the caller holds ``local.lock`` through
    its shutdown); signal what does not answer; wait until its processes are gone."""
    answered = None
    if await anyio.to_thread.run_sync(_answers, record):
        answered = await _ask(
            data_dir, record, STOP_SUBJECT, {"lock_held": lock_held}, settings.request_timeout
        )
    pids = [pid for pid in (_owner(record), record.get("pid")) if isinstance(pid, int)]
    if answered is not None:
        if await anyio.to_thread.run_sync(functools.partial(_await_exit, pids, _STOP_TIMEOUT)):
            return
    await anyio.to_thread.run_sync(_clear_stale, data_dir, {**record, "detached": True}, True)
