"""The gateway with bearer tokens: no token, no access (401 with WWW-Authenticate: Bearer);
a reader may read and follow but not write (403); a writer and an admin may write; probes
and the sign-in page stay open; the browser signs in with a form and reads with the cookie,
which never counts for a write; and an open gateway is refused off loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _web import problem_of
from test_web_pages import _in_browser, _wait_text, browser

from runstate.client import Client
from runstate.client.testing import in_memory
from runstate.client.web import GatewayTokens, serve
from runstate.client.web._auth import COOKIE
from runstate.engine.errors import ConfigurationError

pytestmark = pytest.mark.anyio

__all__ = ["browser"]  # the fixture, shared with test_web_pages


@asynccontextmanager
async def guarded_gateway(client: Client, registry: GatewayTokens) -> AsyncIterator[str]:
    """The gateway over ``client`` asking for ``registry``'s tokens, on a free port."""
    async with anyio.create_task_group() as tg:
        url = await tg.start(partial(serve, client, port=0, keepalive=0.5, tokens=registry))
        yield url
        tg.cancel_scope.cancel()


@asynccontextmanager
async def guarded(
    tmp_path: Path,
) -> AsyncIterator[tuple[Client, httpx.AsyncClient, dict[str, str]]]:
    """An in-memory runstate behind a gateway with a registry: the client, an HTTP client
    of the gateway, and a token of each role."""
    registry = GatewayTokens(tmp_path / "tokens.json")
    tokens = {role: registry.create(role) for role in ("reader", "writer", "admin")}
    async with in_memory() as client, guarded_gateway(client, registry) as url:
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            yield client, http, tokens


async def _until(lines: AsyncIterator[str], last: str) -> AsyncIterator[str]:
    """``lines`` up to and including ``last``."""
    async for line in lines:
        yield line
        if line == last:
            return


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_no_token_no_access(tmp_path: Path) -> None:
    """Without a token, reads, writes, event streams and /metrics are 401 problems with a
    Bearer challenge; a token the registry does not hold is an invalid_token 401."""
    async with guarded(tmp_path) as (client, http, _):
        await client.create_run("Train")
        for method, path in [
            ("GET", "/api/v1/runs/Train/1"),
            ("GET", "/api/v1/runs"),
            ("POST", "/api/v1/runs"),
            ("GET", "/api/v1/watch/Train/1"),
            ("GET", "/metrics"),
        ]:
            response = await http.request(method, path, json={"flow": "Train"})
            body = problem_of(response, 401, "unauthorized")
            assert "Authorization: Bearer" in body["detail"]
            assert response.headers["www-authenticate"] == 'Bearer realm="runstate"'
        wrong = await http.get("/api/v1/runs/Train/1", headers=_bearer("rs_not-a-token"))
        problem_of(wrong, 401, "unauthorized")
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        basic = await http.get("/api/v1/runs/Train/1", headers={"Authorization": "Basic eDp5"})
        problem_of(basic, 401, "unauthorized")


async def test_a_reader_reads_and_follows_but_may_not_write(tmp_path: Path) -> None:
    """A reader's token reads a run, the metrics and a watch stream; its write is a 403
    problem naming what to use, and nothing is written."""
    async with guarded(tmp_path) as (client, http, tokens):
        run = await client.create_run("Train")
        reader = _bearer(tokens["reader"])
        got = await http.get("/api/v1/runs/Train/1", headers=reader)
        assert got.status_code == 200 and got.json()["pathspec"] == "Train/1"
        assert (await http.get("/metrics", headers=reader)).status_code == 200
        with anyio.fail_after(20):
            async with http.stream("GET", "/api/v1/watch/Train/1", headers=reader) as stream:
                assert stream.status_code == 200
                lines = [line async for line in _until(stream.aiter_lines(), "event: snapshot")]
                assert f"id: {run.receipt.sequence}" in lines
        refused = await http.post("/api/v1/runs", json={"flow": "Train"}, headers=reader)
        body = problem_of(refused, 403, "forbidden")
        assert "a reader token may not POST /api/v1/runs" in body["detail"]
        assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
        page = await client.runs("Train")
        assert [r.pathspec for r in page.items] == ["Train/1"]


async def test_writers_and_admins_write(tmp_path: Path) -> None:
    """A writer's and an admin's token create runs; the admin's reads too."""
    async with guarded(tmp_path) as (_, http, tokens):
        for role in ("writer", "admin"):
            made = await http.post(
                "/api/v1/runs", json={"flow": "Train"}, headers=_bearer(tokens[role])
            )
            assert made.status_code == 201, made.text
        read = await http.get("/api/v1/runs/Train/2", headers=_bearer(tokens["admin"]))
        assert read.status_code == 200


async def test_probes_the_sign_in_page_and_the_api_description_stay_open(tmp_path: Path) -> None:
    """/healthz, /readyz, /login, /docs, /openapi.json and the page assets answer without a
    token; the schema declares the bearer scheme for the API page's Authorize button."""
    async with guarded(tmp_path) as (_, http, _tokens):
        for path in ("/healthz", "/readyz", "/login", "/docs", "/ui-assets/runstate.css"):
            assert (await http.get(path)).status_code == 200, path
        schema = (await http.get("/openapi.json")).json()
        assert schema["components"]["securitySchemes"]["bearer"] == {
            "type": "http",
            "scheme": "bearer",
        }
        assert schema["security"] == [{"bearer": []}]


async def test_the_browser_signs_in_and_the_cookie_only_reads(tmp_path: Path) -> None:
    """A page without a token redirects to the sign-in form (with where to come back); a
    wrong token is refused there; the right one sets an HttpOnly, SameSite=Strict cookie
    and goes back; the cookie reads pages and the API, but a write with only the cookie is
    401 (no cross-site request forgery); a sign-in link elsewhere goes home instead."""
    async with guarded(tmp_path) as (client, http, tokens):
        await client.create_run("Train")
        redirected = await http.get("/runs/Train/1", params={"after": 1})
        assert redirected.status_code == 303
        assert redirected.headers["location"] == "/login?next=%2Fruns%2FTrain%2F1%3Fafter%3D1"
        form = (await http.get(redirected.headers["location"])).text
        assert 'name="next" value="/runs/Train/1?after=1"' in form
        wrong = await http.post("/login", data={"token": "rs_nope", "next": "/"})
        assert wrong.status_code == 401 and "not one this gateway knows" in wrong.text
        signed = await http.post(
            "/login", data={"token": tokens["writer"], "next": "/runs/Train/1?after=1"}
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/runs/Train/1?after=1"
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert (await http.get("/runs/Train/1")).status_code == 200  # the cookie jar sends it
        assert (await http.get("/api/v1/runs/Train/1")).status_code == 200
        write = await http.post("/api/v1/runs", json={"flow": "Train"})
        problem_of(write, 401, "unauthorized")
        away = await http.get(
            "/login", params={"token": tokens["reader"], "next": "//evil.example"}
        )
        assert away.status_code == 303 and away.headers["location"] == "/"
        out = await http.get("/logout")
        assert out.status_code == 303
        http.cookies.clear()
        assert (await http.get("/runs/Train/1")).status_code == 303


async def test_an_open_gateway_is_refused_off_loopback() -> None:
    """serve() without tokens on an address that is not loopback raises ConfigurationError
    before it listens."""
    async with in_memory() as client:
        with pytest.raises(ConfigurationError, match=r"refuses to serve 0\.0\.0\.0 without tokens"):
            await serve(client, host="0.0.0.0", port=0)


async def test_a_browser_signs_in_and_the_page_is_live(browser: Any, tmp_path: Path) -> None:
    """In chromium: the run page sends an unsigned browser to the sign-in form; with a
    reader's token typed in, it shows the run, and a change written through the client
    appears without a reload (the event stream goes with the cookie)."""
    from selenium.webdriver.common.by import By

    registry = GatewayTokens(tmp_path / "tokens.json")
    token = registry.create("reader", "browser")
    async with in_memory() as client:
        run = await client.create_run("Train")
        async with guarded_gateway(client, registry) as url:
            await _in_browser(browser.delete_all_cookies)
            await _in_browser(partial(browser.get, url + "/runs/Train/1"))
            await _in_browser(partial(_wait_text, browser, "h1", "Sign in"))
            await _in_browser(partial(browser.save_screenshot, str(tmp_path / "login.png")))
            field = await _in_browser(partial(browser.find_element, By.ID, "token"))
            await _in_browser(partial(field.send_keys, token))
            # the page loads from this event loop: submit from the browser's thread
            await _in_browser(field.submit)
            await _in_browser(partial(_wait_text, browser, "#run-state", "pending"))
            await _in_browser(partial(_wait_text, browser, "#live", "live"))
            await run.start()
            await _in_browser(partial(_wait_text, browser, "#run-state", "running"))
            await _in_browser(partial(browser.save_screenshot, str(tmp_path / "signed-in.png")))
            assert browser.current_url == url + "/runs/Train/1"
            await _in_browser(browser.delete_all_cookies)
