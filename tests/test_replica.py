"""``Replica``: server or URL, connection, store naming and its lock, projector, clean stop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runstate.client import Client, RunState, ServerAlreadyRunning, StoreInUse
from runstate.engine._connection import provision_server
from runstate.engine._server import NatsServer
from runstate.engine._settings import Settings
from runstate.projections import Replica

pytestmark = pytest.mark.anyio


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_replica_writes_and_answers_reads(nats_url: str, tmp_path: Path) -> None:
    """A replica on a URL connects, provisions, folds and answers a read-your-writes query."""
    settings = Settings(nats_url=nats_url, data_dir=tmp_path)
    async with Replica(settings, store=tmp_path / "views.sqlite3") as replica:
        assert replica.url == nats_url and replica.settings.nats_url == nats_url
        assert replica.projector is not None and replica.store is not None
        client = Client.over_nats(replica.nc, replica.settings)
        run = await client.create_run("Replicated")
        read = await client.run(run.pathspec, after=run.receipt)
        assert read.state is RunState.PENDING
        assert (await client.status())["name"] == "projector"


async def test_second_replica_on_one_store_is_refused(nats_url: str, tmp_path: Path) -> None:
    """A second replica on a held store raises StoreInUse naming the file; the first runs on."""
    settings = Settings(nats_url=nats_url, data_dir=tmp_path)
    store = tmp_path / "shared.sqlite3"
    async with Replica(settings, store=store, name="first") as first:
        with pytest.raises(StoreInUse, match=r"shared\.sqlite3 is in use by another replica"):
            async with Replica(settings, store=store, name="second"):
                pytest.fail("the second replica started")
        client = Client.over_nats(first.nc, first.settings)
        assert (await client.status())["name"] == "first"
    async with Replica(settings, store=store, name="third") as third:  # the lock was released
        assert third.projector is not None


async def test_clean_stop_leaves_no_server_running(tmp_path: Path) -> None:
    """Without a URL the replica starts the embedded server, and leaving the block stops it."""
    settings = Settings(nats_url=None, data_dir=tmp_path)
    async with Replica(settings) as replica:
        assert replica.owns_server and replica.embedded is not None
        pid = replica.embedded.pid
        assert _alive(pid) and (tmp_path / "server.json").exists()
        assert replica.store_path == tmp_path / "views.sqlite3"
    assert not _alive(pid)
    assert not (tmp_path / "server.json").exists()


async def test_an_error_in_the_block_passes_through_as_raised(tmp_path: Path) -> None:
    """The caller's exception leaves the block unwrapped (no ExceptionGroup), the server stopped."""
    settings = Settings(nats_url=None, data_dir=tmp_path)
    with pytest.raises(KeyError, match="mine"):
        async with Replica(settings) as replica:
            assert replica.embedded is not None
            pid = replica.embedded.pid
            raise KeyError("mine")
    assert not _alive(pid)


async def test_default_store_is_per_name_and_per_stream(nats_url: str, tmp_path: Path) -> None:
    """Given no store, a replica on a URL gets <data>/replicas/<name>-<prefix>-<digest>.sqlite3."""
    settings = Settings(nats_url=nats_url, data_dir=tmp_path)
    await provision_server(settings.replace(prefix="other"))  # as an admin would
    async with (
        Replica(settings, name="a") as a,
        Replica(settings, name="b") as b,
        Replica(settings.replace(prefix="other"), name="a") as other,
    ):
        paths = [a.store_path, b.store_path, other.store_path]
        assert all(p is not None and p.parent == tmp_path / "replicas" for p in paths)
        assert len(set(paths)) == 3
        assert a.store_path is not None and a.store_path.name.startswith("a-rs-")
        assert other.store_path is not None and other.store_path.name.startswith("a-other-")
    async with Replica(settings, name="a") as again:  # the same stream: the same file
        assert again.store_path == paths[0]


async def test_replica_beside_a_running_server_uses_its_own_store(tmp_path: Path) -> None:
    """Attached to an embedded server another replica owns, a replica gets a file of its own."""
    settings = Settings(nats_url=None, data_dir=tmp_path)
    async with Replica(settings, name="server") as owner:
        async with Replica(settings, name="second") as second:
            assert not second.owns_server and second.url == owner.url
            assert second.store_path is not None
            assert second.store_path.parent == tmp_path / "replicas"
        with pytest.raises(ServerAlreadyRunning, match="a runstate server already runs on"):
            async with Replica(settings, own_server=True):
                pytest.fail("a second server owner started")
        assert owner.embedded is not None and _alive(owner.embedded.pid)


async def test_projector_none_runs_one_only_when_owning_the_server(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """``projector=None`` (connect's default): no projector on a URL, one with its own server."""
    on_url = Settings(nats_url=nats_server.url, data_dir=tmp_path / "url")
    async with Replica(on_url, projector=None) as replica:
        assert replica.projector is None and replica.store_path is None
    own = Settings(nats_url=None, data_dir=tmp_path / "own")
    async with Replica(own, projector=None) as replica:
        assert replica.projector is not None


async def test_projector_started_later_takes_the_lock_too(nats_url: str, tmp_path: Path) -> None:
    """``start_projector()`` inside the block (the demo's way) names the store and locks it."""
    settings = Settings(nats_url=nats_url, data_dir=tmp_path)
    store = tmp_path / "later.sqlite3"
    async with Replica(settings, projector=False, store=store) as replica:
        assert replica.projector is None
        await replica.start_projector()
        assert replica.projector is not None
        with pytest.raises(StoreInUse):
            async with Replica(settings, store=store):
                pass


async def test_connection_closes_when_the_replica_stops(nats_url: str, tmp_path: Path) -> None:
    """After the block the connection is closed and ``nc`` says the replica is not running."""
    settings = Settings(nats_url=nats_url, data_dir=tmp_path)
    async with Replica(settings, projector=False) as replica:
        nc = replica.nc
        assert nc.is_connected
    assert nc.is_closed
    with pytest.raises(RuntimeError, match="not running"):
        replica.nc  # noqa: B018 - the property raises
