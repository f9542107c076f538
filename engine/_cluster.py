"""A loopback NATS JetStream cluster of nats-server processes, for tests and benchmarks."""

from __future__ import annotations

import json
import string
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from runstate.engine._logging import get_logger
from runstate.engine._server import NatsServer, _free_ports, _PortInUse
from runstate.engine.errors import ConfigurationError, Unavailable

__all__ = ["CLUSTER_CONF_TEMPLATE", "NatsCluster", "render_cluster_config"]

log = get_logger("runstate.server")

#: one node of a NATS JetStream cluster; deploy/nats-cluster-n*.conf are renderings of it
CLUSTER_CONF_TEMPLATE = """\
# runstate: node $server_name of a $size-node NATS JetStream cluster.
# Rendered from runstate.engine._cluster.CLUSTER_CONF_TEMPLATE; keep them in step.
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
    authorization: str | None = None,
) -> str:
    """Return ``CLUSTER_CONF_TEMPLATE`` filled in for one node.

    ``route_ports`` are the cluster ports of every node (this one included), all on ``host``.
    ``authorization``: the path (relative to the config) of the block ``runstate auth
    init`` writes, included at the end so that clients sign in as runstate's roles.
    """
    routes = "\n".join(f"    nats-route://{host}:{port}" for port in route_ports)
    rendered = string.Template(CLUSTER_CONF_TEMPLATE).substitute(
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
    if authorization is None:
        return rendered
    return rendered + _INCLUDE_AUTHORIZATION.format(path=authorization)


#: the end of a node's config that includes runstate's roles
_INCLUDE_AUTHORIZATION = """
# runstate's roles: runstate auth init --out auth (beside this file) writes the block
include "{path}"
"""


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
