"""``runstate server`` and ``runstate projector``: a NATS server and a replica, until stopped."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import anyio
import anyio.abc
import click

from runstate.client._client import Client
from runstate.client.cli._app import (
    configure_logs,
    current_options,
    global_options,
    reporting_errors,
    stoppable,
)
from runstate.engine._settings import Settings
from runstate.engine.errors import ConfigurationError
from runstate.projections._replica import Replica

__all__ = ["projector", "server"]

#: the HTTP gateway's port unless told (runstate.client.web.DEFAULT_HTTP_PORT, which
#: this module does not import: the web extra may be absent)
DEFAULT_HTTP_PORT = 8480


async def _serve(
    settings: Settings,
    *,
    port: int | None,
    replica: bool,
    store: Path | None,
    name: str,
    rebuild: bool,
    own_server: bool,
    http: tuple[str, int | None] | None = None,
) -> None:
    """Run the embedded server (without a URL), a replica and the gateway (``http``:
    host and port, None for the default one), until cancelled."""
    async with Replica(
        settings,
        projector=replica,
        store=store,
        name=name,
        rebuild=rebuild,
        dedicated=True,  # this process exists for the replica
        port=port,
        own_server=own_server,
        connection_name=f"runstate-{name}",
    ) as running:
        _announce(running)
        if http is not None:
            await _serve_http(running, *http)
        await anyio.sleep_forever()


async def _serve_http(replica: Replica, host: str, port: int | None) -> None:
    """Serve the HTTP gateway over the replica's connection until cancelled.

    Without a port given, a default port another process holds leaves the
    server without a gateway (it says so) rather than stopping it.
    """
    from runstate.client.web import serve  # the web extra, loaded only to serve it

    client = Client.over_nats(replica.nc, replica.settings)
    async with anyio.create_task_group() as tg:
        try:
            # 0 is a port too (a free one), not "the default"
            chosen = DEFAULT_HTTP_PORT if port is None else port
            url = await tg.start(functools.partial(serve, client, host=host, port=chosen))
        except ConfigurationError as exc:
            if port is not None:
                raise
            click.echo(f"  HTTP gateway off: {exc.message}")
            return
        click.echo(f"  HTTP gateway: {url}  (API docs: {url}/docs)")
        await anyio.sleep_forever()


def _web_available() -> bool:
    return importlib.util.find_spec("fastapi") is not None and (
        importlib.util.find_spec("uvicorn") is not None
    )


def _announce(replica: Replica) -> None:
    url = replica.url
    if replica.owns_server:
        click.echo(f"runstate server ready: {url}")
        click.echo(f"  data dir: {replica.settings.data_dir}")
        click.echo(f"  connect:  export RUNSTATE_NATS_URL={url}")
    else:
        click.echo(f"runstate replica ready on {url}")
    if replica.store_path is not None:
        click.echo(f"  projector store: {replica.store_path}")
    else:
        click.echo("  no projector: run `runstate projector` to answer queries")
    click.echo("  stop with Ctrl-C")


@click.command()
@global_options()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Client port of the embedded server (default: a free one).",
)
@click.option(
    "--no-projector", is_flag=True, help="Run only the NATS server, no projector replica."
)
@click.option(
    "--http-host",
    default="127.0.0.1",
    show_default=True,
    help="Where the HTTP gateway listens (loopback only by default).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    help=f"The HTTP gateway's port (0: a free one). Default: {DEFAULT_HTTP_PORT}, or none "
    "when another process has it (the server then says so and runs without the gateway).",
)
@click.option("--no-http", is_flag=True, help="Do not serve the HTTP gateway.")
@reporting_errors
def server(
    port: int | None, no_projector: bool, http_host: str, http_port: int | None, no_http: bool
) -> None:
    """Run the embedded NATS JetStream server and a projector replica, in the foreground.

    Starts nats-server with JetStream on --data-dir, creates the streams,
    and runs a projector replica (read store: <data-dir>/views.sqlite3)
    with its query service and heartbeat reaper. It prints the NATS URL and
    runs until Ctrl-C or SIGTERM, then stops the server. It also serves the
    HTTP gateway (REST, server-sent events, API docs at /docs) on
    --http-host:--http-port and prints its URL, unless --no-http or the web
    extra is not installed. The data directory
    survives restarts: events are kept and the replica resumes from its
    checkpoint. With --nats URL it runs only the replica, against that NATS
    (its store: as `runstate projector --name server` would have it).

    \b
    Example:
      runstate server --data-dir /var/lib/runstate --port 4222
    """
    configure_logs("info")
    settings = current_options().settings()
    if settings.nats_url is not None:
        if port is not None:
            raise click.UsageError(
                "--port is the embedded server's port; it does not apply with --nats"
            )
        if no_projector:
            raise click.UsageError(
                "with --nats the server command runs only a replica; --no-projector leaves nothing"
            )
    http: tuple[str, int | None] | None = None
    if not no_http:
        if _web_available():
            http = (http_host, http_port)
        else:
            click.echo("HTTP gateway off: install it with pip install 'runstate[web]'")
    anyio.run(
        stoppable,
        functools.partial(
            _serve,
            settings,
            port=port,
            replica=not no_projector,
            store=None,
            name="server",
            rebuild=False,
            own_server=True,
            http=http,
        ),
    )


@click.command()
@global_options()
@click.option(
    "--rebuild", is_flag=True, help="Drop the read store and fold the log again from sequence 1."
)
@click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The replica's SQLite read store. Default: <data-dir>/views.sqlite3 when it starts "
    "the embedded server, else <data-dir>/replicas/<name>-<prefix>-<stream id>.sqlite3.",
)
@click.option(
    "--name", default="projector", show_default=True, help="The replica's name in logs and status."
)
@reporting_errors
def projector(rebuild: bool, store: Path | None, name: str) -> None:
    """Run one projector replica until stopped: fold events into a read store and answer queries.

    Connects to --nats (or RUNSTATE_NATS_URL, or the embedded server of
    --data-dir, starting it if none runs), folds the events stream into its
    store from its checkpoint, and serves the query service and the
    heartbeat reaper. Run several for availability: they share the queries.

    \b
    Example:
      runstate projector --nats nats://nats:4222 --store /var/lib/runstate/views.sqlite3
    """
    configure_logs("info")
    settings = current_options().settings()
    anyio.run(
        stoppable,
        functools.partial(
            _serve,
            settings,
            port=None,
            replica=True,
            store=store,
            name=name,
            rebuild=rebuild,
            own_server=False,
        ),
    )
