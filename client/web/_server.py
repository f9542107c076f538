"""``serve``: the gateway on a socket, with uvicorn, inside an anyio task group."""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Iterator

import anyio
import anyio.abc
import uvicorn

from runstate.client._client import Client
from runstate.client._gateway_tokens import GatewayTokens, is_loopback
from runstate.client.web._app import create_app
from runstate.client.web._live import with_server_send
from runstate.engine.errors import ConfigurationError

__all__ = ["DEFAULT_HTTP_PORT", "serve"]

DEFAULT_HTTP_PORT = 8480


class _Server(uvicorn.Server):
    """uvicorn, leaving signals to the process that runs it (it stops on cancellation)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on sockets that
    # say they are TCP, and without it every keep-alive response waits ~40 ms for
    # the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigurationError(
            f"the HTTP gateway cannot listen on {host}:{port} ({reason}); "
            "choose another --http-port, or 0 for a free one"
        ) from None
    return sock


async def serve(
    client: Client,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_HTTP_PORT,
    keepalive: float = 15.0,
    tokens: GatewayTokens | None = None,
    idle_timeout: float = 5.0,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the gateway over ``client`` on ``host:port`` until cancelled.

    Reports its URL through ``task_status`` once it accepts connections
    (``port=0``: a free port, named in the URL). ``tokens``: the bearer
    tokens requests must show (``create_app``); without them the gateway is
    open to whoever reaches it, which it allows only on a loopback address
    (``ConfigurationError`` otherwise). Raises ``ConfigurationError`` when it
    cannot listen there. Open event streams are closed a second after a stop.
    ``idle_timeout``: seconds a keep-alive connection may wait for its next request
    before the gateway closes it (uvicorn's default, 5).
    """
    if tokens is None and not is_loopback(host):
        raise ConfigurationError(
            f"the HTTP gateway refuses to serve {host} without tokens: anyone who reaches it "
            "could read and write every run. Give it a token registry (runstate web and "
            "runstate server do unless --no-auth), or listen on 127.0.0.1"
        )
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        with_server_send(create_app(client, keepalive=keepalive, tokens=tokens)),
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
        timeout_keep_alive=math.ceil(idle_timeout),
    )
    server = _Server(config)

    async def run() -> None:
        with anyio.CancelScope(shield=True):  # it stops by should_exit, and closes its sockets
            await server.serve(sockets=[sock])

    shown = f"[{host}]" if ":" in host else host
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                while not server.started:
                    if server.should_exit:
                        return
                    await anyio.sleep(0.01)
                task_status.started(f"http://{shown}:{bound_port}")
                await anyio.sleep_forever()
            finally:
                server.should_exit = True
    finally:
        sock.close()
