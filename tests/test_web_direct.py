"""The transitions the gateway answers past FastAPI's routing (``_direct``) answer as the
FastAPI routes do: the same status, headers and body for every request, errors included;
what the direct path leaves alone reaches FastAPI with its body intact."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from runstate.client._gateway_tokens import GatewayTokens
from runstate.client.testing import in_memory
from runstate.client.web import create_app
from runstate.client.web._direct import DirectWrites

pytestmark = pytest.mark.anyio

#: the headers a write's answer is compared on (uvicorn adds date and server itself)
_COMPARED = ("content-type", "content-length", "etag", "x-runstate-sequence", "location")

_Request = tuple[str, dict[str, Any]]


@asynccontextmanager
async def _gateway(direct: bool) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway on a fresh in-memory log, with or without the direct path: two of them
    given the same requests hold the same log, sequences included."""
    async with in_memory() as client:
        app = create_app(client)
        if not direct:
            app.direct = None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            created = await http.post("/api/v1/runs", json={"flow": "Train"})
            assert created.status_code == 201
            task = await http.post("/api/v1/runs/Train/1/tasks", json={"step": "fit"})
            assert task.status_code == 201
            yield http


def _answer(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {name: response.headers[name] for name in _COMPARED if name in response.headers}
    return response.status_code, headers, response.content


async def _answers(direct: bool, requests: list[_Request]) -> list[tuple[int, Any, bytes]]:
    async with _gateway(direct) as http:
        return [_answer(await http.post(url, **options)) for url, options in requests]


_RUN = "/api/v1/runs/Train/1/transitions"
_TASK = "/api/v1/runs/Train/1/steps/fit/tasks/1/transitions"

#: requests every answer of which both paths must agree on, in order (the log grows)
_CASES: list[_Request] = [
    (_RUN, {"json": {"state": "running"}}),  # 428: no If-Match
    (_RUN, {"json": {"state": "running"}, "headers": {"If-Match": "abc"}}),  # 400
    (_RUN, {"json": {"state": "running"}, "headers": {"If-Match": '"999"'}}),  # 412
    (_RUN, {"json": {"state": "running"}, "headers": {"If-Match": "*"}}),  # 200
    (_RUN, {"json": {"state": "pending"}, "headers": {"If-Match": "*"}}),  # 409 illegal
    (_RUN, {"json": {"state": "sleeping"}, "headers": {"If-Match": "*"}}),  # 422 body
    (_RUN, {"json": {"state": "running", "extra": 1}, "headers": {"If-Match": "*"}}),
    (_RUN, {"content": b"{not json", "headers": {"If-Match": "*"}}),  # 422 JSON
    (_RUN, {"content": b'{"state": "running"}', "headers": {"If-Match": "*"}}),  # no type
    (_RUN, {"data": {"state": "running"}, "headers": {"If-Match": "*"}}),  # a form
    (_TASK, {"json": {"state": "running"}, "headers": {"If-Match": '"2"'}}),  # 200 or 412
    (_TASK, {"json": {"state": "running"}, "headers": {"If-Match": "*"}}),
    (_TASK, {"json": {"state": "completed"}, "headers": {"If-Match": "*"}}),
    (_TASK, {"json": {"state": "running", "attempt": -1}, "headers": {"If-Match": "*"}}),
    (_TASK, {"json": {"state": "running", "attempt": 1}, "headers": {"If-Match": "*"}}),
    (
        "/api/v1/runs/Train/1/steps/fit/tasks/9/transitions",
        {"json": {"state": "running"}, "headers": {"If-Match": "*"}},
    ),
    (
        "/api/v1/runs/Train/99/transitions",
        {"json": {"state": "running"}, "headers": {"If-Match": "*"}},
    ),
    (
        "/api/v1/runs/Tr%20ain/1/transitions",
        {"json": {"state": "running"}, "headers": {"If-Match": "*"}},
    ),  # 422 name
    (
        "/api/v1/runs/Train/1/steps/fit/tasks/1/transitions/",
        {"json": {"state": "running"}, "headers": {"If-Match": "*"}},
    ),
    (_RUN, {"json": {"state": "completed", "message": "done"}, "headers": {"If-Match": "*"}}),
]


async def test_both_paths_answer_every_case_alike() -> None:
    direct = await _answers(True, _CASES)
    routed = await _answers(False, _CASES)
    assert [answer[0] for answer in direct] == [answer[0] for answer in routed]
    for case, mine, theirs in zip(_CASES, direct, routed, strict=True):
        assert mine == theirs, case
    statuses = {answer[0] for answer in direct}
    assert {200, 400, 404, 409, 412, 422, 428} <= statuses  # the cases reach every branch


_STATES = ["pending", "running", "completed", "failed", "cancelled", "crashed", "retrying"]
_IF_MATCH = st.one_of(
    st.none(),
    st.just("*"),
    st.integers(0, 12).map(lambda v: f'"{v}"'),
    st.integers(0, 12).map(lambda v: f'W/"{v}", "{v + 1}"'),
)


@st.composite
def _requests(draw: st.DrawFn) -> list[_Request]:
    requests: list[_Request] = []
    for _ in range(draw(st.integers(1, 8))):
        url = draw(st.sampled_from([_RUN, _TASK]))
        body: dict[str, Any] = {"state": draw(st.sampled_from(_STATES))}
        if url == _TASK and draw(st.booleans()):
            body["attempt"] = draw(st.integers(0, 2))
        if_match = draw(_IF_MATCH)
        headers = {} if if_match is None else {"If-Match": if_match}
        requests.append((url, {"json": body, "headers": headers}))
    return requests


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=_requests())
def test_any_sequence_of_transitions_is_answered_alike(requests: list[_Request]) -> None:
    """Property: whatever transitions arrive, with whatever If-Match, both paths give the
    same answers (and so leave the same log behind)."""

    async def both() -> tuple[list[Any], list[Any]]:
        return await _answers(True, requests), await _answers(False, requests)

    direct, routed = anyio.run(both)
    assert direct == routed


async def test_the_direct_path_answers_without_fastapi_and_gives_back_what_it_leaves() -> None:
    """A valid transition never reaches the app behind; a body it cannot take reaches it
    whole, and so does any other route."""
    async with in_memory() as client:
        app = create_app(client)
        reached: list[tuple[str, bytes]] = []

        async def behind(scope: Scope, receive: Receive, send: Send) -> None:
            message = await receive()
            reached.append((scope["path"], message.get("body", b"")))
            await send({"type": "http.response.start", "status": 599, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway"
        ) as http:
            assert (await http.post("/api/v1/runs", json={"flow": "Train"})).status_code == 201
        direct = DirectWrites(app, behind=behind)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=direct), base_url="http://gateway"
        ) as http:
            moved = await http.post(_RUN, json={"state": "running"}, headers={"If-Match": "*"})
            assert moved.status_code == 200 and moved.json()["state"] == "running"
            assert reached == []
            bad = await http.post(_RUN, content=b'{"state": 7}', headers={"If-Match": "*"})
            other = await http.post("/api/v1/runs", json={"flow": "Train"})
        assert bad.status_code == other.status_code == 599
        assert reached == [(_RUN, b'{"state": 7}'), ("/api/v1/runs", b'{"flow":"Train"}')]


async def test_a_direct_transition_is_counted_under_its_route_and_refused_to_a_reader(
    tmp_path: Path,
) -> None:
    """The request metrics label a direct transition with its route's template; the
    bearer check refuses a reader's transition before the direct path sees it."""
    tokens = GatewayTokens(tmp_path / "tokens.json")
    writer = tokens.create("writer", "w")
    reader = tokens.create("reader", "r")
    async with in_memory() as client:
        app = create_app(client, tokens=tokens)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway"
        ) as http:
            as_writer = {"Authorization": f"Bearer {writer}"}
            created = await http.post("/api/v1/runs", json={"flow": "Train"}, headers=as_writer)
            assert created.status_code == 201
            refused = await http.post(
                _RUN,
                json={"state": "running"},
                headers={"If-Match": "*", "Authorization": f"Bearer {reader}"},
            )
            assert refused.status_code == 403
            moved = await http.post(
                _RUN, json={"state": "running"}, headers={"If-Match": "*", **as_writer}
            )
            assert moved.status_code == 200
            text = (await http.get("/metrics", headers=as_writer)).text
    route = 'route="/api/v1/runs/{flow}/{run_id}/transitions"'
    assert f'runstate_http_requests_total{{method="POST",{route},status="200"}} 1.0' in text
