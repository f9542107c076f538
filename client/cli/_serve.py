"""``runstate server`` and ``runstate projector``: a NATS server and a replica, until stopped."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import click

from runstate.client.cli._app import (
    CliError,
    configure_logs,
    current_options,
    global_options,
    reporting_errors,
    stoppable,
)
from runstate.engine._settings import Settings
from runstate.projections._lock import store_lock

__all__ = ["projector", "server"]

async def _serve(
    settings: Settings,
    *,
    port: int | None,
    replica: bool,
    store: Path | None,
    name: str,
    rebuild: bool,
    own_server: bool,
) -> None:
    """Run the embedded server (without a URL) and a replica, until cancelled."""
    from runstate.engine._connection import open_nats, provision
    from runstate.engine._server import EmbeddedHandle, ensure_embedded
    from runstate.projections._runner import serve_replica

    embedded: EmbeddedHandle | None = None
    if settings.nats_url is None:
        with anyio.CancelScope(shield=True):
            handle = await anyio.to_thread.run_sync(
                functools.partial(ensure_embedded, settings.data_dir, port=port)
            )
        if own_server and not handle.owned:
            raise CliError(
                f"a runstate server already runs on {settings.data_dir} at {handle.url} "
                f"(pid {handle.pid}); use it, or stop it first"
            )
        embedded = handle
        settings = settings.replace(nats_url=handle.url)
    if store is None:
        # a second replica beside an embedded server's own gets its own file
        attached = embedded is not None and not embedded.owned
        store = settings.data_dir / (f"views-{name}.sqlite3" if attached else "views.sqlite3")
    try:
        with store_lock(store) if replica else contextlib.nullcontext():
            nc = await open_nats(settings, name=f"runstate-{name}")
            try:
                await provision(nc, settings)
                async with anyio.create_task_group() as tg:
                    if replica:
                        await tg.start(
                            functools.partial(
                                serve_replica,
                                nc,
                                settings,
                                store,
                                name=name,
                                rebuild=rebuild,
                                dedicated=True,  # this process exists for the replica
                            )
                        )
                    _announce(settings, embedded, store if replica else None)
                    await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await nc.close()
    finally:
        if embedded is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(embedded.stop)


def _announce(settings: Settings, embedded: Any, store: Path | None) -> None:
    url = settings.nats_url
    if embedded is not None and embedded.owned:
        click.echo(f"runstate server ready: {url}")
        click.echo(f"  data dir: {settings.data_dir}")
        click.echo(f"  connect:  export RUNSTATE_NATS_URL={url}")
    else:
        click.echo(f"runstate replica ready on {url}")
    if store is not None:
        click.echo(f"  projector store: {store}")
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
@reporting_errors
def server(port: int | None, no_projector: bool) -> None:
    """Run the embedded NATS JetStream server and a projector replica, in the foreground.

    Starts nats-server with JetStream on --data-dir, creates the streams,
    and runs a projector replica (read store: <data-dir>/views.sqlite3)
    with its query service and heartbeat reaper. It prints the NATS URL and
    runs until Ctrl-C or SIGTERM, then stops the server. The data directory
    survives restarts: events are kept and the replica resumes from its
    checkpoint. With --nats URL it runs only the replica, against that NATS.

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
    help="The replica's SQLite read store. Default: <data-dir>/views.sqlite3 "
    "(views-<name>.sqlite3 beside an embedded server another process runs).",
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
