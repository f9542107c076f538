"""Issue 17, hole 3: a planted pickle is not run by reading or displaying its task.

Pickles are trusted by default only on the embedded server of the user's own
data directory; from a server at a URL a pickle raises ``UnsafeArtifact``
before it is unpickled, unless the user says to trust it. The command line
never unpickles to display. The "planted" pickle here creates a file when
unpickled: every test asserts the file is not there.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from click.testing import CliRunner

from runstate.client import UnsafeArtifact, compat, connect
from runstate.client.cli import cli
from runstate.client.cli._render import pickle_names, pickled_preview
from runstate.engine._settings import Settings


class Planted:
    """A value whose unpickling creates ``marker`` (runs code the writer chose)."""

    def __init__(self, marker: Path, padding: int = 0) -> None:
        self.code = f"open({str(marker)!r}, 'w').close()" + "#" + "x" * padding

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.code,))


async def _plant(url: str | None, data_dir: Path, marker: Path) -> str:
    """A task with a small (inline) and a large (object store) planted pickle; its pathspec."""
    async with connect(url, data_dir=data_dir, projector=False) as client:
        run = await client.create_run("Planted")
        async with run.running(), run.task("start") as task:
            await task.save(small=Planted(marker), big=Planted(marker, padding=40_000))
        return task.pathspec


@pytest.fixture
def planted(nats_url: str, tmp_path: Path) -> tuple[str, str, Path]:
    """(url, task pathspec, marker) on a server at a URL."""
    marker = tmp_path / "pwned"
    pathspec = anyio.run(_plant, nats_url, tmp_path / "writer", marker)
    assert not marker.exists()  # writing a pickle does not run it
    return nats_url, pathspec, marker


def test_default_settings_leave_trust_undecided() -> None:
    """Unset, trust is decided on connecting; set, it is kept."""
    assert Settings().trust_pickles is None
    assert Settings().trusting_pickles_if(True).trust_pickles is True
    assert Settings().trusting_pickles_if(False).trust_pickles is False
    assert Settings(trust_pickles=True).trusting_pickles_if(False).trust_pickles is True
    assert Settings.from_env({"RUNSTATE_TRUST_PICKLES": "1"}).trust_pickles is True


def test_task_data_from_a_url_refuses_a_pickle(planted: tuple[str, str, Path]) -> None:
    """``task.data.x`` and ``data.load()`` raise UnsafeArtifact, naming the setting, unrun."""
    url, pathspec, marker = planted

    async def read() -> None:
        async with connect(url, data_dir=marker.parent / "reader", projector=True) as client:
            task = await client.task(pathspec, after=client.last_write)
            assert client.settings.trust_pickles is False
            with pytest.raises(UnsafeArtifact, match="trust_pickles"):
                _ = task.data.small
            with pytest.raises(UnsafeArtifact, match="trust_pickles"):
                await task.data.load("big")
            (big,) = [a for a in task.artifacts if a.id == "big"]
            with pytest.raises(UnsafeArtifact):
                await big.load()

    anyio.run(read)
    assert not marker.exists()


def test_the_facade_from_a_url_refuses_a_pickle(planted: tuple[str, str, Path]) -> None:
    """The Metaflow facade's ``Task(...).data.x`` refuses a pickle from a URL too."""
    url, pathspec, marker = planted
    compat.connect(url, projector=True, data_dir=marker.parent / "facade")
    try:
        task = compat.Task(pathspec)
        with pytest.raises(UnsafeArtifact):
            _ = task.data.small
        with pytest.raises(UnsafeArtifact):
            _ = task.data.big
        with pytest.raises(UnsafeArtifact):
            _ = compat.DataArtifact(f"{pathspec}/small").data
    finally:
        compat.close()
    assert not marker.exists()


def test_trust_pickles_true_loads_from_a_url(planted: tuple[str, str, Path]) -> None:
    """Saying so (``connect(..., trust_pickles=True)``) loads a pickle from a URL: it runs."""
    url, pathspec, marker = planted

    async def read() -> None:
        async with connect(
            url, data_dir=marker.parent / "trusting", projector=True, trust_pickles=True
        ) as client:
            task = await client.task(pathspec, after=client.last_write)
            _ = task.data.small

    anyio.run(read)
    assert marker.exists()


@pytest.mark.parametrize("trust", ["0", "1"])
def test_show_never_unpickles(planted: tuple[str, str, Path], trust: str) -> None:
    """``runstate show`` of the task and of each artifact shows type and size, even trusting."""
    url, pathspec, marker = planted
    runner = CliRunner()
    env = {"RUNSTATE_TRUST_PICKLES": trust, "RUNSTATE_DATA_DIR": str(marker.parent / "cli")}
    # the command line reads through a query service: a projector in this process serves it
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(
            connect(url, data_dir=marker.parent / "projector", projector=True)
        ),
    ):
        for target in (pathspec, f"{pathspec}/small", f"{pathspec}/big"):
            result = runner.invoke(cli, ["--nats", url, "show", target], env=env)
            assert result.exit_code == 0, result.output
            assert "a pickle of" in result.output
            assert "builtins.exec" in result.output
    assert not marker.exists()


def test_the_embedded_server_trusts_its_owner_pickles(tmp_path: Path) -> None:
    """Without a URL (the user's own embedded server) a pickle loads by default."""

    async def roundtrip() -> tuple[complex, bool | None]:
        async with connect(data_dir=tmp_path) as client:
            run = await client.create_run("Local")
            async with run.running(), run.task("start") as task:
                await task.save(value=complex(1, 2))
            read = await client.task(task.pathspec, after=client.last_write)
            return read.data.value, client.settings.trust_pickles

    value, trust = anyio.run(roundtrip)
    assert value == complex(1, 2)
    assert trust is True


def test_pickle_names_reads_globals_without_running() -> None:
    """The preview names what a pickle imports, for every protocol, and runs none of it."""
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(Planted(Path("/nonexistent/x")), protocol=protocol)
        expected = "builtins.exec" if protocol >= 3 else "__builtin__.exec"  # Python 2 names
        assert pickle_names(data) == [expected]
    assert pickle_names(pickle.dumps({"a": [1, 2]})) == []
    assert pickle_names(b"\x80\x05garbage") == []
    assert pickled_preview(2048, None) == "(a pickle of 2.0 kB, not unpickled)"
