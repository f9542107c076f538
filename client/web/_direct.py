"""The transition routes answered past FastAPI's routing: the writers' hot path.

A worker that speaks HTTP moves each task running, then completed, and
each move is one request. FastAPI spends more on such a request than the
write itself (matching every route in turn, solving the dependencies,
building the response and passing it through its exception layer): about
half the gateway's CPU per transition. ``DirectWrites`` answers the two
transition routes itself with the functions their FastAPI routes call
(``_writes.move_run``, ``_writes.move_task``), so the same request gets the
same answer either way, errors included: a runstate error or a ``Problem``
is answered by the problem handlers of ``_problems``. It runs ahead of
FastAPI (``_app.Gateway``), not as a middleware inside it, because the
layers FastAPI puts around every request (its error and telemetry
middleware, the body limit, then ours) cost as much again.

What it does not handle it leaves to FastAPI untouched, so FastAPI stays
the reference: any other path or method, and a body that is not JSON or
does not validate (FastAPI answers those with its validation problems;
the body already read is given back to it). The routes stay declared in
FastAPI for OpenAPI, and ``scope["route"]`` is set to the route answered,
so the request metrics count it under its template.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runstate.client.web._auth import refusal
from runstate.client.web._metrics import GatewayMetrics
from runstate.client.web._problems import Problem, problem_of
from runstate.client.web._writes import (
    RunTransition,
    TaskTransition,
    WrittenParts,
    move_run,
    move_task,
    router,
)
from runstate.engine.errors import RunstateError

__all__ = ["DirectWrites"]

_Move = Callable[[State, tuple[str, ...], Any, str | None], Awaitable[WrittenParts]]


@dataclass(frozen=True, slots=True)
class _Direct:
    """One route answered directly: its template, body model and move."""

    template: str
    model: type[BaseModel]
    move: _Move

    def pattern(self) -> re.Pattern[str]:
        """Starlette's own pattern for the template: each {name} one non-empty segment."""
        return re.compile("^" + re.sub(r"\{[^}]+\}", "([^/]+)", self.template) + "$")


_ROUTES = (
    _Direct(
        "/api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}/transitions",
        TaskTransition,
        move_task,
    ),
    _Direct("/api/v1/runs/{flow}/{run_id}/transitions", RunTransition, move_run),
)


class DirectWrites:
    """The transition routes answered ahead of FastAPI; everything else goes ``behind``.

    ``Gateway`` (``_app``) calls it for every request. It does what the
    middleware around the routes would have done for a request it answers:
    a request the bearer check refuses goes behind, to be refused there; the
    request metrics are recorded as ``RequestMetrics`` records them.
    """

    def __init__(self, app: FastAPI, behind: ASGIApp) -> None:
        self.behind = behind
        self.state = app.state
        self.routes = [(direct, direct.pattern(), _route(direct.template)) for direct in _ROUTES]

    def _match(self, path: str) -> tuple[_Direct, APIRoute, tuple[str, ...]] | None:
        for direct, pattern, route in self.routes:
            match = pattern.match(path)
            if match is not None:
                return direct, route, match.groups()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.behind(scope, receive, send)
            return
        path: str = scope["path"]
        found = self._match(path) if path.endswith("/transitions") else None
        tokens = getattr(self.state, "tokens", None)
        if found is None or (tokens is not None and refusal(tokens, scope) is not None):
            await self.behind(scope, receive, send)
            return
        started = time.perf_counter()
        direct, route, parts = found
        body = await _body(receive)
        model = _parse(scope, direct.model, body)
        if model is None:  # FastAPI answers it, as it would have
            await self.behind(scope, _replay(body, receive), send)
            return
        scope["route"] = route
        metrics: GatewayMetrics = self.state.metrics
        status = 500
        try:
            try:
                status, content, headers = await direct.move(
                    self.state, parts, model, _header(scope, b"if-match")
                )
            except (RunstateError, Problem) as exc:
                response = problem_of(Request(scope), exc)
                status = response.status_code
                metrics.answering(scope, time.perf_counter() - started)
                await response(scope, receive, send)
                return
            metrics.answering(scope, time.perf_counter() - started)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
        finally:
            metrics.answered(scope, status)


def _route(template: str) -> APIRoute:
    """The writes router's route of ``template``, which FastAPI puts in ``scope["route"]``
    (or, before 0.16x, a copy with the same path)."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path == template:
            return route
    raise LookupError(f"the writes router has no POST route {template}")  # pragma: no cover


def _parse(scope: Scope, model: type[BaseModel], body: bytes) -> BaseModel | None:
    """The body, or None when FastAPI should answer the request (not JSON, not valid)."""
    content_type = _header(scope, b"content-type")
    if content_type is None or content_type.split(";", 1)[0].strip() != "application/json":
        return None
    try:
        return model.model_validate_json(body)
    except ValidationError:
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header, as Starlette's ``Headers.get`` gives it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` giving ``body`` again, then what ``receive`` gives (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
