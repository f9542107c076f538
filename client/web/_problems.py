"""Errors over HTTP: RFC 9457 problem details mapped from runstate's exception tree.

Every error the gateway answers is ``application/problem+json``: ``type``
(``urn:runstate:problem:<code>``, the error's ``code``), ``title``,
``status``, ``detail`` (the error's message, which says what to do) and
``instance`` (the request path), plus runstate's own ``code`` and
``details``. A conflict on ``If-Match`` adds ``current_version``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from runstate.engine.errors import (
    BadFilter,
    ConfigurationError,
    ConflictError,
    IdempotencyKeyReused,
    IllegalTransition,
    InvalidEvent,
    InvalidName,
    JetStreamDisabled,
    NotFound,
    NotInNamespace,
    PayloadTooLarge,
    RunstateError,
    ServerTooOld,
    StepWentBack,
    Timeout,
    Unavailable,
)

__all__ = [
    "PROBLEM_JSON",
    "Problem",
    "install_problem_handlers",
    "problem_of",
    "problem_response",
    "status_of",
]

PROBLEM_JSON = "application/problem+json"

#: the HTTP status of each error class; the first class an error is an instance of wins
_STATUS: tuple[tuple[type[RunstateError], int], ...] = (
    (NotFound, 404),
    (NotInNamespace, 404),
    # the draft on Idempotency-Key: a key reused with another request is 422
    (IdempotencyKeyReused, 422),
    (ConflictError, 409),
    (IllegalTransition, 409),
    (InvalidName, 422),
    (InvalidEvent, 422),
    (BadFilter, 422),
    (StepWentBack, 422),
    (PayloadTooLarge, 413),
    (Unavailable, 503),
    (ServerTooOld, 503),
    (JetStreamDisabled, 503),
    (Timeout, 504),
    (ConfigurationError, 500),
)


def status_of(error: RunstateError) -> int:
    """The HTTP status an error is answered with (500 for one without a mapping)."""
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


class Problem(Exception):
    """An HTTP error the gateway raises itself (412, 428, ...), answered as a problem."""

    def __init__(self, status: int, code: str, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.extra = extra


def problem_response(
    request: Request,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:runstate:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _title(code: str) -> str:
    return code.replace("_", " ").capitalize()


def problem_of(request: Request, exc: RunstateError | Problem) -> JSONResponse:
    """The problem answering a runstate error or a ``Problem`` raised by a route."""
    if isinstance(exc, Problem):
        return _gateway_problem(request, exc)
    return _runstate_problem(request, exc)


async def _runstate_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RunstateError)
    return _runstate_problem(request, exc)


def _runstate_problem(request: Request, exc: RunstateError) -> JSONResponse:
    status = status_of(exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return problem_response(
        request,
        status,
        exc.code,
        _title(exc.code),
        exc.message,
        headers,
        details=_jsonable(exc.details),
    )


async def _problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return _gateway_problem(request, exc)


def _gateway_problem(request: Request, exc: Problem) -> JSONResponse:
    headers: dict[str, str] | None = None
    if "current_version" in exc.extra:
        headers = {"ETag": f'"{exc.extra["current_version"]}"'}
    return problem_response(
        request, exc.status, exc.code, exc.title, exc.detail, headers, **exc.extra
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(part) for part in error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]
    where = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
    return problem_response(
        request,
        422,
        "bad_request",
        "Bad request",
        f"the request is not valid: {where}",
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "no_route", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return problem_response(
        request, exc.status_code, code, _title(code), str(exc.detail), exc.headers
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as a problem: runstate's, the gateway's, FastAPI's."""
    app.add_exception_handler(RunstateError, _runstate_error)
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
