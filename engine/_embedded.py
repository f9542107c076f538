"""The embedded nats-server of a data directory, recorded in its ``server.json``.

The server asks every client for a token (issue 17): generated at its first
start, kept in ``server.token`` (0600, in a 0700 directory), so only the
account that owns the data directory can read it, and its clients pick it up
from there when they join the server (``read_token``). The token reaches
nats-server through ``nats-server.conf`` (0600), never its command line,
which any local user can read.

``server.json`` names the server (its URL and pid), the process that owns
it (``owner_pid``: ``runstate server``, the local runstate in the
background, or a process running its own ``Replica``) and the runstate
version that process runs; ``runstate server`` adds what it serves
(``update_record``). ``local.lock`` is the lock clients hold while they
decide to join or start the local runstate (``runstate.client._local``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.metadata
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from runstate.engine._logging import get_logger
from runstate.engine._private import PRIVATE_FILE, private_dir, private_file
from runstate.engine._server import NatsServer, _answers_nats, _pid_alive

__all__ = [
    "EmbeddedHandle",
    "ensure_embedded",
    "local_lock",
    "read_record",
    "read_token",
    "runstate_version",
    "update_record",
]

_SERVER_JSON = "server.json"
_SERVER_LOCK = "server.lock"
_LOCAL_LOCK = "local.lock"
_SERVER_TOKEN = "server.token"
_SERVER_CONF = "nats-server.conf"

log = get_logger("runstate.server")


#: the watchdog of an embedded server: a shell that waits for a line on its stdin (a pipe
#: whose only writer is the owner). ``stop`` means the owner stops the server itself; end
#: of file without it means the owner died (SIGTERM, SIGKILL, a crash), so it stops the server.
_WATCHDOG = 'read -r word; [ "$word" = stop ] || kill -TERM "$1" 2>/dev/null'


class _Watchdog:
    """Stops a server when the process that started it dies without stopping it.

    nats-server cannot follow its parent's life, and ``PR_SET_PDEATHSIG``
    follows the parent *thread* (the embedded server starts in a worker
    thread, which may end long before the process). So a tiny ``sh`` in a
    session of its own holds the read end of a pipe only this process
    writes to: the kernel closes it however this process ends.
    """

    def __init__(self, server_pid: int) -> None:
        read_end, write_end = os.pipe()  # not inherited by later children (PEP 446)
        try:
            self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                ["/bin/sh", "-c", _WATCHDOG, "runstate-watchdog", str(server_pid)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._pipe = os.fdopen(write_end, "wb", buffering=0)

    def dismiss(self) -> None:
        """The owner stops the server itself: let the watchdog exit without a signal."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            self._pipe.write(b"stop\n")
        self._pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


class EmbeddedHandle:
    """The embedded server of a data directory: one this process started, or one it found.

    ``owned`` says whether this process started it; ``stop()`` stops an owned
    server and does nothing for one attached to. An owned server is stopped
    however this process ends: by ``stop()``, or, when the process dies
    without calling it (a signal, ``os._exit``), by a watchdog process.
    Use as a context manager.
    """

    def __init__(
        self,
        url: str,
        pid: int,
        *,
        data_dir: Path,
        server: NatsServer | None,
        watchdog: _Watchdog | None = None,
        token: str | None = None,
    ) -> None:
        self.url = url
        self.pid = pid
        self.data_dir = data_dir
        #: what a client must present (None: a server started without one, by an older version)
        self.token = token
        self._server = server
        self._watchdog = watchdog

    @property
    def owned(self) -> bool:
        """Whether this handle started the server (and ``stop()`` stops it)."""
        return self._server is not None

    def __repr__(self) -> str:
        return f"<EmbeddedHandle {self.url} pid={self.pid} owned={self.owned}>"

    def stop(self) -> None:
        """Stop the server if this handle owns it and forget it in ``server.json``; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._watchdog is not None:
            self._watchdog.dismiss()
        server.stop()
        with _locked(self.data_dir):
            recorded = _read_server_json(self.data_dir)
            if recorded is not None and recorded.get("pid") == self.pid:
                (self.data_dir / _SERVER_JSON).unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ensure_embedded(
    data_dir: Path, *, port: int | None = None, timeout: float = 10.0
) -> EmbeddedHandle:
    """Return the embedded server of ``data_dir``, starting one if none runs.

    A server is running when ``data_dir/server.json`` names a live pid whose URL
    answers as NATS; the handle then attaches (``owned=False``). Otherwise a new
    server starts on the directory (on ``port``, or a free one) and the handle
    owns it: it stops when the handle stops, or when this process dies without
    stopping it. A lock on ``data_dir/server.lock`` makes concurrent callers, in any
    process, agree on one server. JetStream data in the directory is kept.
    Raises ``Unavailable`` if the server does not start, ``ConfigurationError``
    without a nats-server binary.
    """
    data_dir = private_dir(Path(data_dir))  # 0700: the log and the server are the owner's
    with _locked(data_dir):
        recorded = _read_server_json(data_dir)
        if recorded is not None:
            url, pid = recorded.get("url"), recorded.get("pid")
            if (
                isinstance(url, str)
                and isinstance(pid, int)
                and _pid_alive(pid)
                and _answers_nats(url)
            ):
                log.info(
                    "attached to embedded nats-server", url=url, pid=pid, data_dir=str(data_dir)
                )
                return EmbeddedHandle(
                    url, pid, data_dir=data_dir, server=None, token=read_token(data_dir)
                )
            log.info(
                "replacing stale embedded server record", recorded=recorded, data_dir=str(data_dir)
            )
        token = _ensure_token(data_dir)
        server = NatsServer(data_dir, port=port, config_file=_write_config(data_dir, token))
        server.start(timeout)
        watchdog = None
        try:
            pid = server.pid
            assert pid is not None
            watchdog = _Watchdog(pid)
            _write_server_json(
                data_dir,
                {
                    "url": server.url,
                    "pid": pid,
                    "owner_pid": os.getpid(),
                    "version": runstate_version(),
                    "started_at": datetime.now(UTC).isoformat(),
                },
            )
        except BaseException:
            if watchdog is not None:
                watchdog.dismiss()
            server.stop()
            raise
        return EmbeddedHandle(
            server.url, pid, data_dir=data_dir, server=server, watchdog=watchdog, token=token
        )


@contextlib.contextmanager
def _locked(data_dir: Path, name: str = _SERVER_LOCK) -> Iterator[None]:
    with open(private_file(data_dir / name), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def local_lock(data_dir: Path, *, timeout: float | None = None) -> Iterator[bool]:
    """Hold ``data_dir/local.lock``: one process at a time joins, starts or stops the local
    runstate. Blocks until it is free; with ``timeout``, gives up after that many seconds
    and yields False (the lock not held) instead."""
    with open(private_file(private_dir(Path(data_dir)) / _LOCAL_LOCK), "a+b") as lock:
        if timeout is None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        yield False
                        return
                    time.sleep(0.01)
        try:
            yield True
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@functools.cache
def runstate_version() -> str:
    """The version of the runstate package this process runs (recorded in ``server.json``)."""
    try:
        return importlib.metadata.version("runstate")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def read_record(data_dir: Path) -> dict[str, Any] | None:
    """``data_dir/server.json``: the embedded server running there, or None."""
    return _read_server_json(Path(data_dir))


def update_record(data_dir: Path, pid: int, **fields: Any) -> bool:
    """Add ``fields`` to ``server.json`` if it still names the server ``pid``; whether it did."""
    with _locked(data_dir):
        recorded = _read_server_json(data_dir)
        if recorded is None or recorded.get("pid") != pid:
            return False
        _write_server_json(data_dir, {**recorded, **fields})
        return True


def _read_server_json(data_dir: Path) -> dict[str, Any] | None:
    try:
        recorded = json.loads((data_dir / _SERVER_JSON).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _write_server_json(data_dir: Path, record: dict[str, Any]) -> None:
    target = data_dir / _SERVER_JSON
    temporary = target.with_name(f".{_SERVER_JSON}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, target)


def read_token(data_dir: Path) -> str | None:
    """The token the embedded server of ``data_dir`` asks for, or None when there is none."""
    try:
        token = (data_dir / _SERVER_TOKEN).read_text(encoding="ascii").strip()
    except (FileNotFoundError, PermissionError, UnicodeDecodeError):
        return None
    return token or None


def _ensure_token(data_dir: Path) -> str:
    """The data directory's token, generated (0600) the first time a server starts on it."""
    token = read_token(data_dir)
    if token is not None:
        return token
    token = secrets.token_urlsafe(32)
    target = data_dir / _SERVER_TOKEN
    temporary = target.with_name(f".{_SERVER_TOKEN}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, target)
    return token


def _write_config(data_dir: Path, token: str) -> Path:
    """``nats-server.conf`` (0600): JetStream's store where it always was, and the token."""
    target = private_file(data_dir / _SERVER_CONF)
    # nats-server keeps its streams in <store_dir>/jetstream, as with --store_dir
    text = (
        f"jetstream {{\n  store_dir: {json.dumps(str(data_dir))}\n}}\n"
        f"authorization {{\n  token: {json.dumps(token)}\n}}\n"
    )
    target.write_text(text, encoding="utf-8")
    return target
