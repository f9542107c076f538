"""runstate.client.web: the HTTP gateway (REST with OpenAPI, server-sent events, probes).

A client of the query service and the log like any other: ``create_app``
wraps a ``Client`` in an ASGI application, ``serve`` runs it with uvicorn.
``runstate web --nats URL`` and ``runstate server`` run it from the command
line. ``GatewayTokens`` is the registry of the bearer tokens it asks for
(``runstate auth token``). It needs the ``web`` extra:
``pip install 'runstate[web]'``.
"""

from runstate.client._gateway_tokens import GatewayTokens as GatewayTokens
from runstate.client.web._app import create_app as create_app
from runstate.client.web._server import DEFAULT_HTTP_PORT as DEFAULT_HTTP_PORT
from runstate.client.web._server import serve as serve

__all__ = ["DEFAULT_HTTP_PORT", "GatewayTokens", "create_app", "serve"]
