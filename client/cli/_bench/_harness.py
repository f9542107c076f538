"""Where a benchmark runs: the server or prefix, connections, the replica, the client."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import click
import nats.errors
import nats.js.errors
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from nats.aio.client import Client as NATS

from runstate.client._client import connect
from runstate.client.cli._bench._params import ProjectorMode
from runstate.engine._commits import new_commit_id
from runstate.engine._connection import open_nats, provision_server
from runstate.engine._credentials import AUTH_CONF
from runstate.engine._lines import lines_stream
from runstate.engine._logging import configure_logging
from runstate.engine._names import Subjects
from runstate.engine._points import points_stream
from runstate.engine._server import NatsServer
from runstate.engine._settings import Settings
from runstate.engine._tls_files import TLS_CONF, render_tls_block, tls_beside
from runstate.engine.errors import Timeout
from runstate.projections._replica import Replica


def _server_version(nc: NATS) -> str:
    return str(nc.connected_server_version).removeprefix("<nats server v").rstrip(">")


def _say(message: str) -> None:
    """Progress, on stderr so that ``--json`` output stays clean."""
    click.echo(f"  {message}", err=True)


@dataclass
class _Place:
    """Where a benchmark runs: a NATS URL, a subject prefix, a scratch directory, and the
    roles' credentials (``runstate auth init``'s directory) when the server asks for them."""

    url: str
    prefix: str
    tmp: Path
    owned: bool
    auth: Path | None = None
    #: False: the server runs ``auth``'s TLS alone, and clients sign in with no credentials
    roles: bool = True
    #: what the server asked of the admin's connection (``server_security``)
    security: str = ""

    def settings(self, role: str = "writer") -> Settings:
        """Settings of a client playing ``role`` (admin: provisions, purges; projector: the
        replica; writer: writes and reads), with that role's credentials if there are any
        (and its client certificate, which alone it shows a server running TLS alone)."""
        credentials = role_credentials(self.auth, role) if self.auth is not None else None
        return Settings(
            nats_url=self.url,
            prefix=self.prefix,
            data_dir=self.tmp / "data",
            credentials=credentials if self.roles else None,
            **tls_beside(credentials),
        )


def role_credentials(auth: Path, role: str) -> Path:
    """The credentials file of ``role`` in a ``runstate auth init`` directory."""
    for suffix in (".nk", ".pass"):
        if (auth / f"{role}{suffix}").is_file():
            return auth / f"{role}{suffix}"
    raise click.UsageError(f"{auth} has no credentials of the {role} role (runstate auth init)")


#: a child process's credentials argument when the server runs TLS alone: the path of the
#: role's credentials, whose TLS files beside it the child shows, signing in with nothing
_TLS_ALONE = "tls-alone:"


def child_credentials(place: _Place, role: str) -> str | None:
    """The credentials argument of a child process playing ``role`` (None: no auth directory),
    read back by ``child_connection``."""
    if place.auth is None:
        return None
    path = str(role_credentials(place.auth, role))
    return path if place.roles else _TLS_ALONE + path


def child_connection(argument: str | None) -> dict[str, Any]:
    """``Settings``' credentials and TLS files from ``child_credentials``' argument."""
    if not argument:
        return {}
    path = Path(argument.removeprefix(_TLS_ALONE))
    signs_in = not argument.startswith(_TLS_ALONE)
    return {**({"credentials": path} if signs_in else {}), **tls_beside(path)}


def has_tls(auth: Path) -> bool:
    """Whether a ``runstate auth init`` directory has TLS files (``--tls``)."""
    return (auth / TLS_CONF).is_file()


@contextlib.contextmanager
def _place(url: str | None, auth: Path | None = None, roles: bool = True) -> Iterator[_Place]:
    """A fresh nats-server in a temporary directory, or a fresh prefix on ``url``.

    ``auth``: a ``runstate auth init`` directory; the server started here runs its
    authorization block (and its TLS, verifying client certificates, when the directory
    has them: ``--tls``), and each client signs in as the role it plays. ``roles=False``
    (a ``--tls`` directory): the server runs the TLS alone, no authorization block, and
    each client connects with its role's certificate and no credentials.
    """
    if auth is not None and not roles and not has_tls(auth):
        raise click.UsageError(f"{auth} has no TLS files to run alone (runstate auth init --tls)")
    with tempfile.TemporaryDirectory(prefix="runstate-bench-") as scratch:
        tmp = Path(scratch)
        if url is not None:
            prefix = f"bench{new_commit_id()[:8]}"
            place = _Place(url, prefix, tmp, owned=False, auth=auth, roles=roles)
            try:
                # the benchmark is the admin of its place: clients only check the streams
                anyio.run(provision_server, place.settings("admin"))
                place.security = anyio.run(server_security, place.settings("admin"))
                yield place
            finally:
                anyio.run(_delete_streams, place)
            return
        config = None
        if auth is not None:
            # nats-server includes files relative to the config: copies of the blocks beside it
            if has_tls(auth):  # auth.conf includes it: the copy names its files
                (tmp / TLS_CONF).write_text(render_tls_block(auth.resolve()))
            if roles:
                shutil.copy(auth / AUTH_CONF, tmp / AUTH_CONF)
            config = tmp / "nats.conf"
            config.write_text(
                f'jetstream {{ store_dir: "{tmp / "nats"}" }}\n'
                f'include "{AUTH_CONF if roles else TLS_CONF}"\n'
            )
        server = NatsServer(tmp / "nats", config_file=config)
        server.start()
        try:
            place = _Place(server.url, "rs", tmp, owned=True, auth=auth, roles=roles)
            anyio.run(provision_server, place.settings("admin"))
            place.security = anyio.run(server_security, place.settings("admin"))
            yield place
        finally:
            server.stop()


async def server_security(settings: Settings) -> str:
    """What the server asks of a client, as its ``INFO`` says and this connection found it:
    authentication, TLS, and whether it verifies client certificates (a report's note, so
    that a run says which server it measured)."""
    nc = await open_nats(settings)
    try:
        info = nc._server_info  # nats-py keeps the server's INFO only here
        return (
            f"auth_required={bool(info.get('auth_required'))}, "
            f"tls_required={bool(info.get('tls_required'))}, "
            f"tls_verify={bool(info.get('tls_verify'))}"
        )
    finally:
        await nc.close()


async def _delete_streams(place: _Place) -> None:
    settings = place.settings("admin")
    subjects = Subjects(settings.prefix)
    nc = await open_nats(settings)
    try:
        js = nc.jetstream()
        for name in (
            subjects.events_stream,
            subjects.heartbeats_stream,
            subjects.counters_stream,
            subjects.deadletter_stream,
            points_stream(settings.prefix),
            lines_stream(settings.prefix),
            f"KV_{subjects.idempotency_bucket}",
            f"OBJ_{subjects.blobs_bucket}",
        ):
            with contextlib.suppress(nats.js.errors.Error, nats.errors.Error):
                await js.delete_stream(name)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def _connection(place: _Place, role: str = "writer") -> AsyncIterator[NATS]:
    """A plain NATS connection to the place (provisioned), as ``role``."""
    nc = await open_nats(place.settings(role))
    try:
        yield nc
    finally:
        with anyio.CancelScope(shield=True):
            await nc.close()


@contextlib.asynccontextmanager
async def _replica(place: _Place, mode: ProjectorMode, name: str = "views") -> AsyncIterator[None]:
    """A projector replica (projector + query service, no reaper) beside the benchmark.

    ``process``: its own OS process, as deployed (``runstate projector``);
    ``inprocess``: a task on this event loop, with its own NATS connection.
    """
    store = place.tmp / f"{name}.sqlite3"
    if mode == "inprocess":
        async with Replica(place.settings("projector"), store=store, reaper=False):
            yield
        return
    # the replica exits when its stdin closes
    credentials = child_credentials(place, "projector")
    args = [place.url, place.prefix, str(store), *([credentials] if credentials else [])]
    async with _child(place, "_replica", args, name, 60, 10):
        yield


@contextlib.asynccontextmanager
async def _child(
    place: _Place,
    role: str,
    args: Sequence[str],
    name: str,
    ready_within: float,
    stop_within: float,
) -> AsyncIterator[tuple[Process, BufferedByteReceiveStream]]:
    """``python -m runstate.client.cli._bench ROLE ARGS...`` once it has printed ``ready``.

    Yields the process and its stdout. Its stderr goes to ``<tmp>/<name>.stderr``
    and is shown if it does not start within ``ready_within`` seconds. On exit
    its stdin is closed and it has ``stop_within`` seconds to end before it is
    killed.
    """
    log_path = place.tmp / f"{name}.stderr"
    with log_path.open("wb") as errors:
        process = await anyio.open_process(
            [sys.executable, "-m", "runstate.client.cli._bench", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
    try:
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        try:
            with anyio.fail_after(ready_within):
                line = await lines.receive_until(b"\n", 100)
        except (anyio.EndOfStream, anyio.IncompleteRead, TimeoutError):
            line = b""
        if line.strip() != b"ready":
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the benchmark's {role.strip('_')} process did not start:\n{tail}")
        yield process, lines
    finally:
        with anyio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()
            with anyio.move_on_after(stop_within):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


async def _serve_replica(url: str, prefix: str, store: str, credentials: str | None) -> None:
    settings = Settings(
        nats_url=url, prefix=prefix, data_dir=Path(store).parent, **child_connection(credentials)
    )
    async with Replica(settings, store=store, reaper=False, dedicated=True):
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.buffer.read)


def _replica_main(argv: Sequence[str]) -> None:
    """``python -m runstate.client.cli._bench _replica URL PREFIX STORE [CREDENTIALS]``:
    serve; stop at EOF."""
    configure_logging("warning", force=True)
    url, prefix, store, *credentials = argv
    anyio.run(_serve_replica, url, prefix, store, credentials[0] if credentials else None)


@contextlib.asynccontextmanager
async def _client(place: _Place, role: str = "writer") -> AsyncIterator[Any]:
    async with connect(place.url, settings=place.settings(role), projector=False) as client:
        yield client


async def _wait_applied(client: Any, sequence: int) -> None:
    """Wait (up to 10 minutes) until the replica answering ``client`` has applied ``sequence``."""
    with anyio.fail_after(600):
        while True:
            status = await client.status()
            if int(status["applied"]) >= sequence:
                return
            await anyio.sleep(0.05)


async def _read_after(client: Any, pathspec: str, sequence: int) -> None:
    """A read that returns once ``sequence`` is queryable (retried past the 5 s bound)."""
    while True:
        try:
            await client.run(pathspec, after=sequence)
            return
        except Timeout:
            continue
