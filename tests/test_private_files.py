"""Issue 17, hole 4: a data directory and what runstate stores in it are its owner's alone.

The directory is 0700 (tightened when an earlier version made it wider) and
every file runstate or its nats-server creates there is 0600, whatever the
umask: the read store and its WAL, the metrics store, ``server.json``, the
server's log, the locks and JetStream's own files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from runstate.client import connect
from runstate.engine._embedded import ensure_embedded
from runstate.engine._private import private_dir, private_file


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 022, as a login shell has: files would be 0644 by default."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_dir_and_file(tmp_path: Path, open_umask: None) -> None:
    """New directories are 0700, new files 0600; a data directory made wider is tightened."""
    made = private_dir(tmp_path / "a" / "b")
    assert _mode(made) == 0o700
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o755)
    assert _mode(wide) == 0o755
    assert _mode(private_dir(wide, tighten=False)) == 0o755  # a directory the user gave
    assert _mode(private_dir(wide)) == 0o700
    new = private_file(tmp_path / "new")
    assert _mode(new) == 0o600 and new.read_bytes() == b""
    old = tmp_path / "old"
    old.write_bytes(b"kept")
    old.chmod(0o644)
    assert _mode(private_file(old)) == 0o600 and old.read_bytes() == b"kept"


@pytest.mark.anyio
async def test_the_embedded_server_refuses_a_client_without_its_token(
    tmp_path: Path, open_umask: None
) -> None:
    """A raw connection without the token is refused; with it (read from the file) it works."""
    errors: list[Exception] = []

    async def record(exc: Exception) -> None:
        errors.append(exc)

    with ensure_embedded(tmp_path) as handle:
        assert handle.token is not None
        token_file = tmp_path / "server.token"
        assert _mode(token_file) == 0o600
        assert token_file.read_text().strip() == handle.token
        assert handle.token not in (tmp_path / "server.json").read_text()
        refused = NATS()
        try:
            with pytest.raises((nats.errors.Error, OSError)):
                await refused.connect(
                    handle.url, allow_reconnect=False, connect_timeout=2, error_cb=record
                )
        finally:
            await refused.close()  # nats-py keeps the socket of a refused connect open
        assert any("authorization violation" in str(exc).lower() for exc in errors), errors
        nc = await nats.connect(handle.url, token=handle.token, allow_reconnect=False)
        try:
            await nc.jetstream().add_stream(name="OWNER", subjects=["owner.>"])
        finally:
            await nc.close()
        # a second process of the same user joining the server reads the same token
        attached = ensure_embedded(tmp_path)
        assert not attached.owned and attached.token == handle.token
    # the token is kept: a server started again on the directory asks for the same one
    with ensure_embedded(tmp_path) as again:
        assert again.token == handle.token


def test_the_embedded_data_directory_is_private(tmp_path: Path, open_umask: None) -> None:
    """After a session on the embedded server, nothing in the data directory is open to others."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)  # as an earlier version left it

    async def session() -> dict[str, int]:
        async with connect(data_dir=data_dir) as client:
            run = await client.create_run("Private")
            async with run.running(), run.task("start") as task:
                await task.save(secret="hunter2")
                await task.log({"loss": 0.5})
            await client.run(run.pathspec, after=client.last_write)
            # while the server runs (server.json is removed when it stops)
            return {str(p.relative_to(data_dir)): _mode(p) for p in data_dir.rglob("*")}

    modes = anyio.run(session)
    for expected in (
        "server.json",
        "server.lock",
        "server.token",
        "nats-server.conf",
        "nats-server.log",
        "views.sqlite3",
        "views.sqlite3-wal",
        "views.sqlite3.lock",
        "views.metrics.sqlite3",
        "jetstream",
    ):
        assert expected in modes, sorted(modes)
    assert _mode(data_dir) == 0o700
    for name, mode in modes.items():
        assert mode & 0o077 == 0, f"{name} is {oct(mode)}: open to other users"
        if (data_dir / name).is_file():
            assert mode == 0o600, f"{name} is {oct(mode)}"
