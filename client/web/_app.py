"""``create_app``: the gateway's ASGI application, around one ``Client``.

Besides the API: the web view's pages (``_pages``, from ``/``), ``/healthz``
and ``/readyz`` (probes) and ``/metrics`` (Prometheus, ``_metrics``).

FastAPI on Starlette: its OpenAPI comes from the same pydantic models the
query service answers with, and it runs on anyio, as runstate does. The
interactive API page (``/docs``) is Swagger UI served from package data
(the ``fastapi-offline`` distribution ships its files), so it works with no
network; ``/openapi.json`` is the schema it shows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from importlib.resources import files

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from runstate.client._client import Client
from runstate.client._gateway_tokens import GatewayTokens
from runstate.client.web import _auth, _live, _pages, _reads, _tails, _writes
from runstate.client.web._auth import BearerAuth, document_bearer
from runstate.client.web._direct import DirectWrites
from runstate.client.web._html import ASSETS
from runstate.client.web._metrics import GatewayMetrics, RequestMetrics, TimedQueries, metrics_page
from runstate.client.web._problems import install_problem_handlers, problem_response
from runstate.engine.errors import RunstateError

__all__ = ["DOCS_ASSETS", "Gateway", "create_app"]

#: where the docs page's scripts and styles are served from
DOCS_ASSETS = "/docs-assets"

#: seconds /readyz waits for a query service to answer
_READY_WAIT = 2.0


def create_app(
    client: Client, *, keepalive: float = 15.0, tokens: GatewayTokens | None = None
) -> Gateway:
    """The HTTP gateway over ``client``: REST under ``/api/v1``, SSE, ``/docs``, probes
    and ``/metrics``.

    Reads see every namespace unless a request names one (``?namespace=``).
    ``keepalive``: seconds an idle event stream waits before sending a
    comment, so proxies keep it open. ``tokens``: the registry of bearer
    tokens every request must show one of (``_auth``); None lets every
    request in (``serve`` allows that on loopback only). The caller owns
    ``client`` (connects and closes it); the app only uses it.
    """
    app = Gateway(
        lifespan=_lifespan,
        title="runstate",
        summary="Run state of workflows and ML runs: reads, writes and live events.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    # Every copy of the client (one per namespace asked for) shares these, so one feed
    # per subject serves the whole gateway (``runstate.client._watch``) and each commit
    # decodes once.
    client.__dict__.setdefault("_feeds", {})
    client.__dict__.setdefault("_feeds_lock", anyio.Lock())
    client.__dict__.setdefault("_decoded", OrderedDict())
    reads = client.with_namespace(None)
    metrics = GatewayMetrics()
    reads.queries = TimedQueries(reads.queries, metrics.query_seconds)
    app.state.client = reads
    app.state.keepalive = keepalive
    app.state.metrics = metrics
    #: the live watch channels, by pathspec and namespace (``_live.Channel``)
    app.state.channels = {}
    #: the writers' handles the gateway keeps (``_writes._kept``)
    app.state.handles = OrderedDict()
    if tokens is not None:
        app.state.tokens = tokens
        app.add_middleware(BearerAuth, tokens=tokens)
        app.include_router(_auth.router)
        document_bearer(app)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: refusals count too
    install_problem_handlers(app)
    # Writes first: FastAPI matches routes in order, so a write does not try every read's
    # route (twice, for an included router) before its own; a read tries the dozen writes.
    app.include_router(_writes.router)
    app.include_router(_reads.router)
    app.include_router(_live.router)
    app.include_router(_tails.router)
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(_swagger_files())), name="docs-assets")
    app.add_api_route("/docs", _docs_page, include_in_schema=False)
    app.mount(ASSETS, StaticFiles(directory=str(files("runstate.client.web") / "static")))
    app.include_router(_pages.router)
    app.add_api_route(
        "/metrics",
        metrics_page,
        summary="Prometheus metrics: requests, query latencies, streams, the replica's progress",
        tags=["probes"],
        response_class=PlainTextResponse,
    )
    app.add_api_route("/healthz", _healthz, summary="The process is alive", tags=["probes"])
    app.add_api_route(
        "/readyz",
        _readyz,
        summary="NATS is connected and a query service answers",
        tags=["probes"],
        responses={503: {"description": "Not ready: the problem says why."}},
    )
    app.direct = DirectWrites(app, behind=partial(FastAPI.__call__, app))
    return app


class Gateway(FastAPI):
    """FastAPI, with the writers' transitions answered ahead of it (``_direct``)."""

    #: what answers every request first (None: FastAPI alone)
    direct: DirectWrites | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.direct is None:
            await super().__call__(scope, receive, send)
        else:
            await self.direct(scope, receive, send)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """A task group for what outlives one request: the watch channels shared by streams."""
    async with anyio.create_task_group() as tasks:
        app.state.tasks = tasks
        yield
        tasks.cancel_scope.cancel()


def _swagger_files() -> object:
    return files("fastapi_offline") / "static"


async def _docs_page() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="runstate API",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        # Swagger UI's default asks an online validator for a badge: nothing leaves here.
        swagger_ui_parameters={"validatorUrl": None},
    )


async def _healthz() -> dict[str, str]:
    return {"status": "alive"}


async def _readyz(request: Request) -> Response:
    client: Client = request.app.state.client
    if client.nc is not None and not client.nc.is_connected:
        return problem_response(
            request, 503, "unavailable", "Not ready", "the gateway is not connected to NATS"
        )
    try:
        with anyio.fail_after(_READY_WAIT):
            status = await client.status()
    except (RunstateError, TimeoutError) as exc:
        detail = exc.message if isinstance(exc, RunstateError) else "no query service answered"
        return problem_response(request, 503, "unavailable", "Not ready", detail)
    return _reads.json_response({"status": "ready", "applied": status["applied"]})
