"""A client's life across tasks and runtimes: ``open_client``/``aclose`` in different tasks
(notebook cells), exceptions that leave runstate's blocks as themselves, and a clear error
outside asyncio.

Each behaviour is checked on the embedded server of a data directory, on a server at a URL,
and, where it applies, on ``in_memory()``.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import pytest

from runstate.client import Client, ConfigurationError, NotFound, compat, connect, open_client
from runstate.client.testing import in_memory
from runstate.engine import Settings
from runstate.projections import Replica

pytestmark = pytest.mark.anyio

KINDS = ["embedded", "url", "memory"]


def _options(kind: str, tmp_path: Path, nats_url: str) -> dict[str, object]:
    """``connect()``'s options for a client with its own projector, embedded or at a URL."""
    if kind == "embedded":
        return {"data_dir": tmp_path / "embedded"}
    return {"url": nats_url, "data_dir": tmp_path / "client", "projector": True}


def _client(kind: str, tmp_path: Path, nats_url: str) -> AbstractAsyncContextManager[Client]:
    if kind == "memory":
        return in_memory()
    return connect(**_options(kind, tmp_path, nats_url))  # type: ignore[arg-type]


@pytest.fixture
def url_for(request: pytest.FixtureRequest) -> str:
    """A NATS URL when the test's kind needs one (so the embedded and memory cases start no
    nats-server of their own)."""
    kind = request.node.callspec.params.get("kind")
    if kind == "url":
        url: str = request.getfixturevalue("nats_url")
        return url
    return ""


# -- exceptions come out as themselves ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_an_error_inside_the_client_block_is_not_wrapped(
    kind: str, tmp_path: Path, url_for: str
) -> None:
    """``except KeyError`` catches a KeyError raised in ``async with connect()``, with or
    without a URL, and in ``in_memory()``: never an ExceptionGroup."""
    with pytest.raises(KeyError, match="mine") as caught:
        async with _client(kind, tmp_path, url_for) as client:
            await client.create_run("Raises")
            raise KeyError("mine")
    assert type(caught.value) is KeyError


@pytest.mark.parametrize("kind", KINDS)
async def test_an_error_inside_runstates_other_blocks_is_not_wrapped(
    kind: str, tmp_path: Path, url_for: str
) -> None:
    """A watch, a run's ``running()``, a task block and an attempt let the block's own
    exception through as itself (each is also inside the client's block)."""
    async with _client(kind, tmp_path, url_for) as client:
        run = await client.create_run("Raises")
        with pytest.raises(KeyError, match="watch"):
            async with client.watch(run.pathspec) as changes:
                async for _ in changes:
                    raise KeyError("watch")
        with pytest.raises(KeyError, match="running"):
            async with run.running():
                raise KeyError("running")
        other = await client.create_run("Raises")
        async with other.running():
            with pytest.raises(KeyError, match="task"):
                async with other.task("start"):
                    raise KeyError("task")
            shards = await other.foreach("train", 1)
            with pytest.raises(KeyError, match="attempt"):
                async with shards[0].attempting():
                    raise KeyError("attempt")
            with pytest.raises(NotFound):  # runstate's own errors too
                await client.run("Raises/999")
        assert (await client.run(run.pathspec, after=client.last_write)).state == "failed"


@pytest.mark.parametrize("kind", ["embedded", "url"])
async def test_an_error_inside_a_replica_is_not_wrapped(
    kind: str, tmp_path: Path, url_for: str
) -> None:
    """A ``Replica`` running its projector lets the block's exception through as itself."""
    settings = Settings(nats_url=url_for or None, data_dir=tmp_path / "replica")
    with pytest.raises(ValueError, match="mine") as caught:
        async with Replica(settings, projector=True):
            raise ValueError("mine")
    assert type(caught.value) is ValueError


# -- opened in one task, closed in another -------------------------------------------------


@pytest.mark.parametrize("kind", ["embedded", "url"])
async def test_a_client_opened_in_one_task_closes_in_another(
    kind: str, tmp_path: Path, url_for: str
) -> None:
    """As notebook cells do: ``open_client`` in one task, reads and writes in a second,
    ``aclose`` in a third; the connection is closed after, and ``aclose`` again does nothing."""
    opened: list[Client] = []

    async def cell(coroutine: object) -> None:
        await asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]

    async def open_it() -> None:
        opened.append(await open_client(**_options(kind, tmp_path, url_for)))  # type: ignore[arg-type]

    await cell(open_it())
    client = opened[0]

    async def use_it() -> None:
        run = await client.create_run("Cells")
        async with run.running():
            pass
        assert (await client.run(run.pathspec, after=client.last_write)).state == "completed"

    await cell(use_it())
    await cell(client.aclose())
    assert client.nc is not None and client.nc.is_closed
    await client.aclose()


async def test_a_client_that_cannot_open_raises_its_error_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """``open_client`` raises ``connect()``'s error itself, and no task is left behind."""
    before = set(asyncio.all_tasks())
    with pytest.raises(ConfigurationError, match="not a NATS URL"):
        await open_client("http://localhost:1", data_dir=tmp_path)
    assert set(asyncio.all_tasks()) == before


async def test_a_client_of_a_block_is_not_closed_by_aclose(tmp_path: Path) -> None:
    """``aclose`` on a client of ``async with connect()`` leaves it to its block."""
    async with connect(data_dir=tmp_path) as client:
        await client.aclose()
        assert await client.flows() == []


# -- runtimes ---------------------------------------------------------------------------


@asynccontextmanager
async def _opened(use: str, url: str) -> AsyncIterator[None]:
    if use == "connect":
        async with connect(url):
            yield
    else:
        client = await open_client(url)
        try:
            yield
        finally:
            await client.aclose()


@pytest.mark.parametrize("use", ["connect", "open_client"])
def test_outside_asyncio_the_client_says_it_needs_asyncio(use: str, nats_url: str) -> None:
    """Under trio, ``connect()`` and ``open_client()`` raise ``ConfigurationError`` naming
    the facade, before anything starts: no coroutine is left never awaited."""

    async def main() -> None:
        async with _opened(use, nats_url):
            pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConfigurationError, match=r"asyncio.*trio.*runstate\.client\.compat"):
            anyio.run(main, backend="trio")
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_the_facade_works_under_trio(nats_url: str, tmp_path: Path) -> None:
    """The blocking facade runs its client on a loop of its own: it works from trio."""

    async def write() -> None:
        async with connect(nats_url, data_dir=tmp_path, projector=True) as client:
            run = await client.create_run("Trio")
            async with run.running():
                pass
            await client.run(run.pathspec, after=client.last_write)

    anyio.run(write)

    async def read() -> str:
        return compat.Flow("Trio").latest_run.pathspec  # type: ignore[union-attr]

    compat.connect(nats_url, data_dir=tmp_path, projector=True)
    try:
        compat.namespace(None)
        assert anyio.run(read, backend="trio") == "Trio/1"
    finally:
        compat.close()
        compat.default_metadata()
        compat.default_namespace()
