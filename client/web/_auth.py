"""Who may use the gateway: bearer tokens mapped to roles, and a sign-in page for browsers.

With a token registry (``GatewayTokens``), every request but the probes,
the sign-in page, the API's description and the static files needs a
token, in ``Authorization: Bearer <token>`` or, for the browser's reads, in
the ``runstate_token`` cookie the sign-in page sets:

- no token, or one the registry does not hold: 401 with
  ``WWW-Authenticate: Bearer`` (a page asked for by a browser is sent to
  the sign-in page instead);
- a ``reader`` token may read (GET and HEAD: reads, event streams, pages,
  ``/metrics``); a ``writer`` may also write; an ``admin`` may do anything
  (over HTTP, what a writer may: the admin's own actions are NATS ones);
  a write with a reader's token: 403.

The cookie counts for reads only: a write needs the header, which no other
site can make a browser send, so a page elsewhere cannot write through a
signed-in browser (no cross-site request forgery), and the cookie is
``HttpOnly`` and ``SameSite=Strict`` besides. A request costs one SHA-256
and one dict lookup (``GatewayTokens.role_of``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from runstate.client._gateway_tokens import GatewayTokens, may
from runstate.client.web._html import ASSETS, esc, layout
from runstate.client.web._problems import problem_response

__all__ = ["COOKIE", "BearerAuth", "document_bearer", "refusal", "router"]

#: the cookie the sign-in page sets
COOKIE = "runstate_token"

#: paths anyone may ask for: probes, the sign-in page, the API's description
_OPEN = frozenset({"/healthz", "/readyz", "/login", "/logout", "/docs", "/openapi.json"})
_OPEN_PREFIXES = (ASSETS + "/", "/docs-assets/")
_SAFE = frozenset({"GET", "HEAD"})
_REALM = 'Bearer realm="runstate"'


class BearerAuth:
    """ASGI middleware letting through only requests whose token's role allows them."""

    def __init__(self, app: ASGIApp, tokens: GatewayTokens) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = refusal(self.tokens, scope) if scope["type"] == "http" else None
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)


def refusal(tokens: GatewayTokens, scope: Scope) -> Response | None:
    """The answer refusing an HTTP request (401, 403, or the sign-in page for a person),
    or None when its token's role allows it."""
    path: str = scope["path"]
    if path in _OPEN or path.startswith(_OPEN_PREFIXES):
        return None
    safe = scope["method"] in _SAFE
    token = _token(scope, cookie=safe)
    role = None if token is None else tokens.role_of(token)
    if role is None:
        return _unauthenticated(scope, safe, given=token is not None)
    if not may(role, "reader" if safe else "writer"):
        return problem_response(
            Request(scope),
            403,
            "forbidden",
            "Forbidden",
            f"a {role} token may not {scope['method']} {path}: use a writer's token "
            "(runstate auth token create --role writer)",
            headers={"WWW-Authenticate": f'{_REALM}, error="insufficient_scope"'},
        )
    return None


def _token(scope: Scope, *, cookie: bool) -> str | None:
    """The request's bearer token, else (``cookie``: for reads) its sign-in cookie's."""
    found: str | None = None
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"cookie" and cookie:
            found = _cookie_value(value.decode("latin-1")) or found
    return found


def _cookie_value(header: str) -> str | None:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def _unauthenticated(scope: Scope, safe: bool, *, given: bool) -> Response:
    request = Request(scope)
    path: str = scope["path"]
    if safe and not path.startswith("/api/") and path != "/metrics":
        # a person following a link: the sign-in page, then back here
        target = path + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    if given:
        detail = "the token is not one this gateway knows (revoked, or mistyped)"
        challenge = f'{_REALM}, error="invalid_token"'
    else:
        detail = (
            "this gateway needs a token: send Authorization: Bearer <token> "
            "(create one with runstate auth token create --role reader)"
        )
        challenge = _REALM
    return problem_response(
        request,
        401,
        "unauthorized",
        "Unauthorized",
        detail,
        headers={"WWW-Authenticate": challenge},
    )


# -- the sign-in page ---------------------------------------------------------------------

router = APIRouter(include_in_schema=False)


def _local(target: str | None) -> str:
    """``target`` if it is a path of this gateway, else ``/`` (no redirect elsewhere)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _form(target: str, error: str = "") -> str:
    message = f'<p class="error">{esc(error)}</p>' if error else ""
    return (
        f"{message}<p>This gateway needs a token. The owner's is in the data directory's "
        "<code>gateway-token</code> file; <code>runstate auth token create --role reader</code> "
        "makes another.</p>"
        '<form class="login" method="post" action="/login">'
        f'<input type="hidden" name="next" value="{esc(target)}">'
        '<label>token <input type="password" name="token" id="token" autocomplete="off" '
        'required autofocus></label> <button type="submit">sign in</button></form>'
    )


def _signed_in(request: Request, token: str, target: str) -> Response:
    response = RedirectResponse(_local(target), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.get("/login")
async def login_page(request: Request, next: str = "/", token: str | None = None) -> Response:
    """The sign-in form; with ``?token=`` (the link ``runstate server`` prints for its
    owner) it signs in at once."""
    if token is not None:
        return await _sign_in(request, token, next)
    return HTMLResponse(layout("Sign in", [], _form(_local(next))))


@router.post("/login")
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    return await _sign_in(request, token, (form.get("next") or ["/"])[0])


async def _sign_in(request: Request, token: str, target: str) -> Response:
    tokens: GatewayTokens = request.app.state.tokens
    if token and tokens.role_of(token) is not None:
        return _signed_in(request, token, target)
    page = layout("Sign in", [], _form(_local(target), "That token is not one this gateway knows."))
    return HTMLResponse(page, status_code=401, headers={"WWW-Authenticate": _REALM})


@router.get("/logout")
async def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def document_bearer(app: FastAPI) -> None:
    """Say in the OpenAPI schema that every route wants a bearer token, so the API page
    offers to take one ("Authorize")."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
