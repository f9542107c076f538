"""Fixtures every test module shares: the anyio backend and real nats-servers.

Tests are async through anyio's pytest plugin (``pytestmark = pytest.mark.anyio``).

Markers:

- ``slow``: long soak or scale tests; skipped unless pytest runs with ``--runslow``.
- ``cluster``: tests that start a 3-node cluster (``nats_cluster``). They run by
  default: a loopback cluster is ready in well under a second and a node
  restart takes about two, so a cluster test fits in the 20 s a default run
  allows one. Mark a cluster test ``slow`` as well if it runs longer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from runstate.engine._cluster import NatsCluster
from runstate.engine._connection import provision_server
from runstate.engine._server import NatsServer
from runstate.engine._settings import Settings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        # a test using the cluster is a cluster test, so -m "not cluster" leaves it out
        if "nats_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run anyio tests on asyncio only."""
    return "asyncio"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A started nats-server with JetStream on a free port, storing in ``tmp_path/nats``.

    Its streams are provisioned for the default prefix, as an admin would
    (``runstate provision``): clients on a URL only check that they exist.
    """
    server = NatsServer(tmp_path / "nats")
    try:
        server.start()
        anyio.run(provision_server, Settings(nats_url=server.url, data_dir=tmp_path / "admin"))
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """The client URL of ``nats_server``."""
    return nats_server.url


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A started 3-node JetStream cluster on loopback, in ``tmp_path/cluster``.

    Connect with ``nats.connect(servers=nats_cluster.urls)``.
    """
    cluster = NatsCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
