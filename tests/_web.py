"""What the gateway's tests read from its answers: a JSON body, or a problem.

``ok(response)`` is the body of a response with the status expected (200 by
default); ``problem_of(response, status, code)`` the RFC 9457 body of an error
answer, checked to be one (its media type, its ``code``, its ``status``).
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["ok", "problem_of"]


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body of ``response``, which must have answered ``status``."""
    assert response.status_code == status, response.text
    return response.json()


def problem_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The problem ``response`` answered: ``status``, its ``code``, a ``detail``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status and body["detail"]
    return body
