"""Every runstate error has its HTTP status, and reaches an HTTP client as a problem."""

from __future__ import annotations

import inspect

import httpx
import pytest

import runstate.engine.errors as errors
from runstate.client import Client
from runstate.client.web import create_app
from runstate.client.web._problems import status_of
from runstate.engine._memory import MemoryEventLog
from runstate.engine._settings import Settings

pytestmark = pytest.mark.anyio

EXPECTED = {
    "NotFound": 404,
    "NotInNamespace": 404,
    "ConflictError": 409,
    "IllegalTransition": 409,
    "IdempotencyKeyReused": 422,
    "InvalidName": 422,
    "InvalidEvent": 422,
    "BadFilter": 422,
    "StepWentBack": 422,
    "PayloadTooLarge": 413,
    "Unavailable": 503,
    "ServerTooOld": 503,
    "JetStreamDisabled": 503,
    "Timeout": 504,
}


def _instance(cls: type[errors.RunstateError]) -> errors.RunstateError:
    if cls is errors.ConflictError:
        return cls("Train/1", 1, 2)
    if cls is errors.IllegalTransition:
        return cls("Train/1", "completed", "running")
    return cls("what went wrong")


def test_every_error_class_has_a_status() -> None:
    """Each RunstateError subclass maps to its status; the ones outside the caller's
    control that have no better status are 500."""
    classes = [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, errors.RunstateError)
    ]
    for cls in classes:
        want = EXPECTED.get(cls.__name__, 500)
        assert status_of(_instance(cls)) == want, cls.__name__


class _Failing:
    """A query service that fails every request with one error."""

    def __init__(self, error: errors.RunstateError) -> None:
        self.error = error

    async def request(self, endpoint: str, payload: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
        raise self.error


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.Unavailable("no query service is answering"), 503),
        (errors.Timeout("the query service did not answer runs in time"), 504),
        (errors.NotInNamespace("Train/1 is not in namespace user:bob"), 404),
    ],
)
async def test_errors_of_the_query_service_are_problems(
    error: errors.RunstateError, status: int
) -> None:
    """An error the query service answers reaches the HTTP client as a problem with its
    status, code and message (503 with Retry-After); /readyz is 503 too when it cannot."""
    client = Client(MemoryEventLog(Settings()), _Failing(error))
    transport = httpx.ASGITransport(app=create_app(client))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        response = await http.get("/api/v1/runs")
        ready = await http.get("/readyz")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == error.code and problem["detail"] == error.message
    assert problem["instance"] == "/api/v1/runs"
    if status == 503:
        assert response.headers["retry-after"] == "1"
    assert ready.status_code == 503 and ready.json()["code"] == "unavailable"
