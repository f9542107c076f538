"""Reads across a node failure: a read in flight on a connection whose server dies is asked
again once the connection is back, within the read's time, then ``Unavailable``.

To lose a read for certain, the client's node is first stopped (SIGSTOP), so the request
the read writes to it goes nowhere, and then killed: without asking again, the read would
wait out its whole timeout and raise ``Timeout``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from runstate.client import Client, Run, Unavailable, connect
from runstate.engine import Settings, open_nats, provision
from runstate.engine._cluster import NatsCluster
from runstate.engine._connection import provision_server
from runstate.engine._server import NatsServer
from runstate.projections import serve_replica

pytestmark = pytest.mark.anyio


def _node_of(client: Client, cluster: NatsCluster) -> int:
    """The index of the cluster node ``client``'s connection is on."""
    assert client.nc is not None and client.nc.connected_url is not None
    port = client.nc.connected_url.port
    return next(i for i, node in enumerate(cluster.nodes) if node.port == port)


async def _lose_the_server_under_a_read(client: Client, server: NatsServer, pathspec: str) -> Run:
    """Start reading ``pathspec`` while ``server`` is stopped, then kill it; the run read."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)  # the request the read sends now is never routed
    read: list[Run] = []
    failed: list[Exception] = []
    try:
        async with anyio.create_task_group() as tg:

            async def reading() -> None:
                try:
                    read.append(await client.run(pathspec))
                except Exception as exc:  # raised below as itself, not in a group
                    failed.append(exc)

            tg.start_soon(reading)
            await anyio.sleep(0.5)  # the read's request is in the stopped server's socket
            server.kill()
    finally:
        if server.running:
            server.kill()
    if failed:
        raise failed[0]
    return read[0]


async def test_a_read_in_flight_when_its_node_dies_is_asked_again(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """The client's node dies under a read: the read is sent again through the node the
    connection moves to, and answered, instead of raising ``Timeout``."""
    settings = Settings(nats_url=nats_cluster.url, replicas=3, data_dir=tmp_path)
    await provision_server(settings)  # the admin's step: clients only check the streams
    async with connect(settings=settings, projector=False, namespace=None) as client:
        node = _node_of(client, nats_cluster)
        # the replica on another node, and only there: it stays up
        replica_settings = settings.replace(nats_url=nats_cluster.urls[(node + 1) % 3])
        nc = await open_nats(replica_settings)
        try:
            await provision(nc, replica_settings)
            async with anyio.create_task_group() as tg:
                await tg.start(
                    lambda task_status: serve_replica(
                        nc, replica_settings, tmp_path / "v.sqlite3", task_status=task_status
                    )
                )
                handle = await client.create_run("Failover")
                await client.run(handle.pathspec, after=handle.receipt)
                run = await _lose_the_server_under_a_read(
                    client, nats_cluster.nodes[node], handle.pathspec
                )
                assert run.pathspec == handle.pathspec
                assert _node_of(client, nats_cluster) != node
                tg.cancel_scope.cancel()
        finally:
            await nc.close()


async def test_a_read_whose_server_does_not_come_back_is_unavailable(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """With no server to reconnect to, a read lost with its server ends, at the end of its
    time, in ``Unavailable`` saying the connection was lost, not ``Timeout``."""
    async with connect(nats_server.url, data_dir=tmp_path, projector=True) as client:
        handle = await client.create_run("Failover")
        await client.run(handle.pathspec, after=handle.receipt)
        with pytest.raises(Unavailable, match="lost its server"):
            await _lose_the_server_under_a_read(client, nats_server, handle.pathspec)
