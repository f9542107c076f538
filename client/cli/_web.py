"""``runstate web``: the HTTP gateway alone, over a NATS where replicas answer queries."""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import click

from runstate.client._client import connect
from runstate.client._gateway_tokens import GatewayTokens
from runstate.client.cli._app import (
    configure_logs,
    current_options,
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
from runstate.engine._settings import Settings
from runstate.engine.errors import ConfigurationError

__all__ = ["loop_options", "run_gateway", "web"]


async def _gateway(
    settings: Settings,
    host: str,
    port: int,
    ready: Callable[[str, str], None],
    tokens: GatewayTokens | None,
    until_eof: bool,
    idle_timeout: float,
) -> None:
    try:
        from runstate.client.web import serve
    except ImportError:
        raise ConfigurationError(
            "the HTTP gateway needs the web extra: pip install 'runstate[web]'"
        ) from None
    async with connect(settings=settings, projector=False) as client:
        async with anyio.create_task_group() as tg:
            url = await tg.start(
                functools.partial(
                    serve, client, host=host, port=port, tokens=tokens, idle_timeout=idle_timeout
                )
            )
            ready(url, str(client.settings.nats_url))
            if until_eof:
                await anyio.to_thread.run_sync(sys.stdin.buffer.read)
                tg.cancel_scope.cancel()
            else:
                await anyio.sleep_forever()


def run_gateway(
    settings: Settings,
    host: str,
    port: int,
    ready: Callable[[str, str], None],
    *,
    tokens: GatewayTokens | None = None,
    until_eof: bool = False,
    idle_timeout: float = 5.0,
) -> None:
    """Serve the gateway alone over NATS until SIGINT/SIGTERM (or, ``until_eof``, the end
    of stdin): what ``runstate web`` does. ``ready(url, nats_url)`` once it listens.
    ``tokens``: the registry every request's bearer token is checked against (None: no
    tokens, which ``serve`` allows on loopback only). ``idle_timeout``: ``serve``'s."""
    anyio.run(
        stoppable,
        functools.partial(_gateway, settings, host, port, ready, tokens, until_eof, idle_timeout),
        backend_options=loop_options(),
    )


def loop_options() -> dict[str, bool]:
    """anyio's options for the gateway's process: uvloop when it is installed (the web
    extra installs it), whose event loop and sockets cost each request and each event
    stream's write less than asyncio's own."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


@click.command()
@global_options()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Where to listen (loopback only by default; 0.0.0.0 for every interface).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8480,
    show_default=True,
    help="The port (0: a free one).",
)
@tokens_option("--tokens", "path")
@click.option(
    "--no-auth",
    is_flag=True,
    help="Let every request in, with no token (loopback hosts only).",
)
@reporting_errors
def web(host: str, port: int, path: Path | None, no_auth: bool) -> None:
    """Run the HTTP gateway alone: REST with OpenAPI, server-sent events, API docs.

    It is a client like any other: reads go to the query service of the
    replicas on --nats (run `runstate server` or `runstate projector`),
    writes to the log. Run several side by side, behind a load balancer
    (give them one --tokens file).

    Every request needs a bearer token of the registry (--tokens, default
    <data-dir>/gateway-tokens.json; `runstate auth token create`). With the
    default registry it makes the owner's token (<data-dir>/gateway-token)
    and prints how to sign in with it. --no-auth turns tokens off, on a
    loopback --host only.

    \b
    Example:
      runstate web --nats nats://nats:4222 --host 0.0.0.0 --port 8480 \\
          --tokens /etc/runstate/gateway-tokens.json
    """
    configure_logs("info")
    settings = current_options().settings()
    tokens = gateway_tokens(settings.data_dir, path, no_auth=no_auth, host=host)
    owner = owner_token(tokens, settings.data_dir, path)

    def announce(url: str, nats_url: str) -> None:
        click.echo(f"runstate HTTP gateway ready: {url}")
        click.echo(f"  API docs: {url}/docs   NATS: {nats_url}")
        announce_access(tokens, owner, settings.data_dir, path, url)
        click.echo("  stop with Ctrl-C")

    run_gateway(settings, host, port, announce, tokens=tokens)
