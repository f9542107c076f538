"""``runstate server`` and ``runstate projector``: a NATS server and a replica, until stopped.

``runstate server`` runs in the foreground; a client given no URL starts the
same server in the background (``--detached``, the local runstate of its data
directory), which ``runstate server status`` and ``runstate server stop``
report on and stop.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import click

from runstate.client._client import Client
from runstate.client._gateway_tokens import GatewayTokens
from runstate.client._local import LOG_FILE, local_status, stop_local
from runstate.client.cli._app import (
    configure_logs,
    current_options,
    echo_json,
    global_options,
    reporting_errors,
    stoppable,
)
from runstate.client.cli._auth_tokens import (
    announce_access,
    gateway_tokens,
    owner_token,
    tokens_option,
)
from runstate.client.cli._local_server import LocalControl
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
    http: _Http | None = None,
    detached: bool = False,
    provision: bool = False,
) -> None:
    """Run the embedded server (without a URL), a replica and the gateway (``http``),
    until cancelled or, as the local
    runstate (``detached``), stopped or idle. A server of its own data directory
    answers ``runstate server status`` and ``stop`` (``LocalControl``). ``provision``:
    create the streams on a server at a URL (``runstate server``, an admin's command)."""
    with contextlib.ExitStack() as shutdown:  # outlives the replica: the lock it stops under
        async with (
            Replica(
                settings,
                projector=replica,
                store=store,
                name=name,
                rebuild=rebuild,
                dedicated=True,  # this process exists for the replica
                port=port,
                own_server=own_server,
                connection_name=f"runstate-{name}",
                provision=provision,
            ) as running,
            anyio.create_task_group() as tg,
        ):
            control = None
            if running.owns_server:
                control = LocalControl(
                    running, detached=detached, stop=tg.cancel_scope.cancel, shutdown=shutdown
                )
                await tg.start(control.run)
            _announce(running)
            if http is not None:
                await _serve_http(running, http, control=control)
            await anyio.sleep_forever()


@dataclass(frozen=True)
class _Http:
    """The gateway ``runstate server`` serves: where, and the tokens it asks for."""

    host: str
    #: None: the default port, or none when another process has it
    port: int | None
    #: None: no tokens (--no-http-auth, loopback only)
    tokens: GatewayTokens | None
    #: the registry given with --http-tokens (None: the data directory's)
    tokens_path: Path | None


async def _serve_http(
    replica: Replica, http: _Http, *, control: LocalControl | None = None
) -> None:
    """Serve the HTTP gateway over the replica's connection until cancelled.

    Without a port given, a default port another process holds leaves the
    server without a gateway (it says so) rather than stopping it; the local
    runstate in the background (``control.detached``) takes a free port then.
    """
    from runstate.client.web import serve  # the web extra, loaded only to serve it

    client = Client.over_nats(replica.nc, replica.settings)
    data_dir = replica.settings.data_dir
    owner = owner_token(http.tokens, data_dir, http.tokens_path)
    port = DEFAULT_HTTP_PORT if http.port is None else http.port  # 0: a free one
    detached = control is not None and control.detached
    async with anyio.create_task_group() as tg:
        try:
            url = await tg.start(
                functools.partial(serve, client, host=http.host, port=port, tokens=http.tokens)
            )
        except ConfigurationError as exc:
            if http.port is not None:
                raise
            if not detached:
                click.echo(f"  HTTP gateway off: {exc.message}")
                return
            url = await tg.start(
                functools.partial(serve, client, host=http.host, port=0, tokens=http.tokens)
            )
        click.echo(f"  HTTP gateway: {url}  (API docs: {url}/docs)")
        announce_access(http.tokens, owner, data_dir, http.tokens_path, url)
        if control is not None:
            control.serving_http(url)
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


@click.group(invoke_without_command=True)
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
@tokens_option("--http-tokens", "http_tokens")
@click.option(
    "--no-http-auth",
    is_flag=True,
    help="Let every HTTP request in, with no token (a loopback --http-host only).",
)
@click.option(
    "--detached",
    is_flag=True,
    hidden=True,
    help="Run as the local runstate a client starts: stop when idle (clients pass it).",
)
@click.pass_context
@reporting_errors
def server(
    ctx: click.Context,
    port: int | None,
    no_projector: bool,
    http_host: str,
    http_port: int | None,
    no_http: bool,
    http_tokens: Path | None,
    no_http_auth: bool,
    detached: bool,
) -> None:
    """Run the embedded NATS JetStream server and a projector replica, in the foreground.

    Starts nats-server with JetStream on --data-dir, creates the streams,
    and runs a projector replica (read store: <data-dir>/views.sqlite3)
    with its query service and heartbeat reaper. It prints the NATS URL and
    runs until Ctrl-C or SIGTERM, then stops the server. It also serves the
    HTTP gateway (REST, server-sent events, API docs at /docs) on
    --http-host:--http-port and prints its URL, unless --no-http or the web
    extra is not installed. Every HTTP request needs a bearer token
    (--http-tokens, default <data-dir>/gateway-tokens.json; the owner's is
    made in <data-dir>/gateway-token and the server prints how to sign in
    with it); --no-http-auth turns tokens off, on loopback only. The data directory
    survives restarts: events are kept and the replica resumes from its
    checkpoint. With --nats URL it runs only the replica, against that NATS
    (its store: as `runstate projector --name server` would have it), after
    creating the streams there like `runstate provision` (an admin action:
    give the admin role's credentials).

    A client given no URL starts this server in the background itself (the
    local runstate of its data directory), which stops after
    RUNSTATE_LOCAL_IDLE_TIMEOUT seconds with no client connected: see
    `runstate server status` and `runstate server stop`.

    \b
    Example:
      runstate server --data-dir /var/lib/runstate --port 4222
    """
    if ctx.invoked_subcommand is not None:
        return
    configure_logs("info")
    settings = current_options().settings()
    if detached and settings.nats_url is not None:
        raise click.UsageError("--detached runs the local runstate of --data-dir, not --nats")
    if settings.nats_url is not None:
        if port is not None:
            raise click.UsageError(
                "--port is the embedded server's port; it does not apply with --nats"
            )
        if no_projector:
            raise click.UsageError(
                "with --nats the server command runs only a replica; --no-projector leaves nothing"
            )
    http: _Http | None = None
    if not no_http:
        if _web_available():
            tokens = gateway_tokens(
                settings.data_dir,
                http_tokens,
                no_auth=no_http_auth,
                host=http_host,
                flag="--no-http-auth",
            )
            http = _Http(http_host, http_port, tokens, http_tokens)
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
            detached=detached,
            provision=True,
        ),
    )


@server.command("status")
@global_options(exclude=("nats", "user"))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@reporting_errors
def server_status(as_json: bool) -> None:
    """Show the server of --data-dir: pid, URLs, data directory, version, uptime, applied sequence.

    Exits with 1 when no server runs there, or one is recorded but does not answer.
    """
    settings = current_options().settings()
    status = anyio.run(local_status, settings.data_dir)
    if as_json:
        echo_json(status)
    elif status is None:
        click.echo(f"no runstate server runs on {settings.data_dir}")
    elif not status["answering"]:
        click.echo(f"the runstate server recorded on {settings.data_dir} does not answer")
        click.echo(f"  pid:       {status.get('owner_pid', status.get('pid'))}")
        click.echo(f"  NATS:      {status.get('url')}")
    else:
        kind = "in the background" if status["detached"] else "in the foreground"
        click.echo(f"runstate server {status['version']} running {kind}")
        click.echo(f"  pid:       {status['pid']} (nats-server {status['nats_pid']})")
        click.echo(f"  NATS:      {status['url']}")
        click.echo(f"  HTTP:      {status['http'] or 'off'}")
        click.echo(f"  data dir:  {status['data_dir']}")
        click.echo(f"  uptime:    {_duration(status['uptime'])}")
        click.echo(f"  applied:   {status['applied']}")
        if status.get("idle_timeout"):
            click.echo(f"  idle stop: after {_duration(status['idle_timeout'])} with no client")
        click.echo(f"  log:       {Path(status['data_dir']) / LOG_FILE}")
    if status is None or not status["answering"]:
        sys.exit(1)


@server.command("stop")
@global_options(exclude=("nats", "user"))
@reporting_errors
def server_stop() -> None:
    """Stop the server of --data-dir (in the background or the foreground), and wait until
    it is gone. Its clients lose their connection; the next client starts it again."""
    settings = current_options().settings()
    record = anyio.run(stop_local, settings.data_dir)
    if record is None:
        click.echo(f"no runstate server runs on {settings.data_dir}")
        return
    pid = record.get("owner_pid", record.get("pid"))
    click.echo(f"stopped the runstate server of {settings.data_dir} (pid {pid})")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


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
    On a server at a URL the streams must exist (`runstate provision`).

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


if __name__ == "__main__":  # the local runstate a client starts, without the other commands
    server.main(prog_name="runstate server")
