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

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NATS

from runstate.client import _namespace
from runstate.client._local import stop_local
from runstate.engine._cluster import NatsCluster
from runstate.engine._connection import open_nats, provision, provision_server
from runstate.engine._jetstream import JetStreamEventLog
from runstate.engine._server import NatsServer
from runstate.engine._settings import Settings
from runstate.engine._typing import EventLog


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
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    """A NATS connection for the test module's ``settings`` fixture, its streams provisioned
    (for the modules that test the engine below the client on a real server)."""
    connection = await open_nats(settings)
    await provision(connection, settings)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def log(nc: NATS, settings: Settings) -> EventLog:
    """The JetStream event log over ``nc``."""
    return JetStreamEventLog(nc, settings)


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


# -- the local runstate ------------------------------------------------------------------

#: a test's local runstate (what a client with no URL starts) stops soon once its
#: clients are gone; the fixtures below stop every one a test left running anyway
os.environ.setdefault("RUNSTATE_LOCAL_IDLE_TIMEOUT", "30")


def _stop_local_runstates(under: Path) -> None:
    """Stop every local runstate running in the background on a data directory under ``under``."""
    for record_file in under.rglob("server.json"):
        try:
            record = json.loads(record_file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("detached"):
            anyio.run(stop_local, record_file.parent)


@pytest.fixture(autouse=True)
def _no_local_runstate_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test with a ``tmp_path``, no local runstate it started runs on."""
    tmp_path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp_path is not None:
        _stop_local_runstates(tmp_path)


@pytest.fixture(autouse=True)
def _default_user_of_the_process() -> Iterator[None]:
    """Every test starts with the process's default user: ``connect()`` sets it to the
    user the server authenticated (tests/test_roles.py signs in with nkeys), and a test
    that reads without connecting (a gateway's client) would see another test's user."""
    yield
    _namespace._default_user = None


@pytest.fixture(autouse=True, scope="session")
def _no_local_runstate_left_at_all(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session, none runs under the session's temporary directory either."""
    yield
    _stop_local_runstates(tmp_path_factory.getbasetemp())
