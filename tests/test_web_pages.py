"""The web view: pages rendered with their data (readable without JavaScript, escaped), and
in a real headless browser (Debian's chromium through its chromedriver, driven by selenium):
the pages load, a change written through the client appears on an open run page without a
reload, and a dropped connection resumes without losing a change."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from runstate.client import Client, connect
from runstate.client.testing import in_memory
from runstate.client.web import create_app, serve

pytestmark = pytest.mark.anyio

#: seconds the browser waits for the page to show a change
WAIT = 20

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


async def _story(client: Client) -> dict[str, Any]:
    """A run with a failed task (traceback, metadata, artifacts) and a running one."""
    run = await client.create_run("Train", tags=["team:<ml>"], parameters={"lr": 0.1})
    await run.start()
    failed = await run.create_task("prepare", start=True)
    await failed.save(accuracy=0.9, note="<b>bold</b>")
    await failed.record_metadata(host="node-1")
    try:
        raise RuntimeError("boom <script>alert(1)</script>")
    except RuntimeError as exc:
        receipt = await failed.fail(exc)
    running = await run.create_task("train", start=True)
    return {"run": run, "failed": failed, "running": running, "sequence": receipt.sequence}


async def test_pages_hold_their_data_escaped_without_javascript() -> None:
    """Each page's HTML holds its data (no script needed to read it), every value escaped."""
    async with in_memory() as client:
        story = await _story(client)
        after = story["running"].receipt.sequence
        app = create_app(client)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            flows = (await http.get("/", params={})).text
            assert '<a href="/flows/Train">Train</a>' in flows
            run_page = (await http.get("/runs/Train/1", params={"after": after})).text
            assert 'id="run-state" class="state state-running">running<' in run_page
            assert 'data-step="prepare"' in run_page and "failed 1" in run_page
            assert "team:&lt;ml&gt;" in run_page and "<ml>" not in run_page
            assert 'data-task="Train/1/train/2"' in run_page  # the timeline's bar
            runs = (await http.get("/flows/Train", params={"state": "running"})).text
            assert 'data-run="Train/1"' in runs
            none = (await http.get("/flows/Train", params={"state": "completed"})).text
            assert "No run matches." in none
            task = (await http.get("/tasks/Train/1/prepare/1", params={"after": after})).text
            assert "RuntimeError: boom &lt;script&gt;alert(1)&lt;/script&gt;" in task
            assert "<script>alert" not in task and "Traceback (most recent call last)" in task
            assert "node-1" in task and "&lt;b&gt;bold&lt;/b&gt;" in task
            events = (await http.get("/events/Train/1", params={"limit": 2})).text
            assert "run.created" in events and 'rel="next"' in events
            css = await http.get("/ui-assets/runstate.css")
            assert css.status_code == 200 and "text/css" in css.headers["content-type"]
            missing = await http.get("/runs/Train/99")
            assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
            assert "run Train/99 does not exist" in missing.text
            bad = await http.get("/flows/Train", params={"sort": "<nope>"})
            assert bad.status_code == 422 and "unknown sort key" in bad.text
            assert "<nope>" not in bad.text


# -- in a browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager downloads nothing
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def gateway(client: Client, port: int) -> AsyncIterator[str]:
    """The gateway over ``client`` on ``port`` until the block ends (then it stops)."""
    async with anyio.create_task_group() as tg:
        url = await tg.start(partial(serve, client, port=port, keepalive=0.5))
        yield url
        tg.cancel_scope.cancel()


async def _in_browser(function: Callable[[], Any]) -> Any:
    return await anyio.to_thread.run_sync(function)


def _wait_text(driver: Any, css: str, expected: str) -> None:
    """Wait until the element at ``css`` says ``expected`` (fails after ``WAIT`` seconds)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shows(d: Any) -> bool:
        found = d.find_elements(By.CSS_SELECTOR, css)
        return bool(found) and expected in found[0].text

    # the live script replaces rows: an element found may be gone when read
    wait = WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(shows, f"{css} never showed {expected!r}")


def _open(driver: Any, url: str) -> None:
    driver.get(url)
    _wait_text(driver, "#live", "live")  # the event stream is open


async def test_pages_load_in_a_browser(browser: Any, tmp_path: Path) -> None:
    """Every page loads and shows its data in chromium; screenshots in tmp_path."""
    async with in_memory() as client:
        await _story(client)
        async with gateway(client, 0) as url:
            for name, path, css, text in [
                ("flows", "/", "#flows", "Train"),
                ("runs", "/flows/Train", "#runs", "running"),
                ("run", "/runs/Train/1", "#steps", "failed 1"),
                ("task", "/tasks/Train/1/prepare/1", "main", "RuntimeError: boom"),
                ("events", "/events/Train/1", "#events", "task.created"),
            ]:
                await _in_browser(partial(browser.get, url + path))
                await _in_browser(partial(_wait_text, browser, css, text))
                await _in_browser(partial(browser.save_screenshot, str(tmp_path / f"{name}.png")))
            assert (tmp_path / "run.png").stat().st_size > 0


async def test_a_change_appears_on_an_open_run_page(browser: Any, tmp_path: Path) -> None:
    """With the run page open, a transition and a new task written through the client show
    up in place: the run's state, the step's counts and progress, with no reload."""
    async with in_memory() as client:
        run = await client.create_run("Train")
        async with gateway(client, 0) as url:
            await _in_browser(partial(_open, browser, url + "/runs/Train/1"))
            await _in_browser(partial(_wait_text, browser, "#run-state", "pending"))
            browser.execute_script("document.body.setAttribute('data-marker', 'same page')")
            await run.start()
            await _in_browser(partial(_wait_text, browser, "#run-state", "running"))
            task = await run.create_task("train", start=True)
            await _in_browser(partial(_wait_text, browser, '[data-step="train"]', "running 1"))
            await _in_browser(partial(_wait_text, browser, "#timeline", "train/1"))  # its lane
            await task.complete()
            await _in_browser(partial(_wait_text, browser, '[data-step="train"]', "1/1"))
            await _in_browser(partial(browser.save_screenshot, str(tmp_path / "live.png")))
            bar = '[data-task="Train/1/train/1"]'
            classes = await _in_browser(
                partial(browser.execute_script, f"return document.querySelector('{bar}').className")
            )
            assert classes == "bar state-completed"
            marker = await _in_browser(
                partial(browser.execute_script, "return document.body.dataset.marker")
            )
            assert marker == "same page"  # never reloaded


async def test_a_dropped_connection_resumes_without_losing_a_change(
    browser: Any, tmp_path: Path
) -> None:
    """The gateway stops while the run page is open; changes are written meanwhile and
    after it is back on the same port; the page's EventSource reconnects (with
    Last-Event-ID) and shows every one of them."""
    async with in_memory() as client:
        run = await client.create_run("Train")
        port = _free_port()
        async with gateway(client, port) as url:
            await _in_browser(partial(_open, browser, url + "/runs/Train/1"))
            browser.execute_script("document.body.setAttribute('data-marker', 'same page')")
        # the gateway is down: the page notices, and changes happen meanwhile
        await _in_browser(partial(_wait_text, browser, "#live", "reconnecting"))
        await run.start()
        first = await run.create_task("train", start=True)
        async with gateway(client, port):
            await _in_browser(partial(_wait_text, browser, "#run-state", "running"))
            await _in_browser(partial(_wait_text, browser, '[data-step="train"]', "running 1"))
            await _in_browser(partial(_wait_text, browser, "#live", "live"))
            await first.complete()
            second = await run.create_task("train", start=True)
            await second.complete()
            await _in_browser(partial(_wait_text, browser, '[data-step="train"]', "2/2"))
            await _in_browser(partial(_wait_text, browser, '[data-step="train"]', "completed 2"))
            await _in_browser(partial(browser.save_screenshot, str(tmp_path / "resumed.png")))
            marker = await _in_browser(
                partial(browser.execute_script, "return document.body.dataset.marker")
            )
            assert marker == "same page"


async def test_the_runs_page_follows_its_flow(browser: Any, tmp_path: Path) -> None:
    """On the newest-first runs page, a run's new state shows in its row and a run created
    while the page is open joins the top, with no reload."""
    async with in_memory() as client:
        first = await client.create_run("Train")
        async with gateway(client, 0) as url:
            await _in_browser(partial(_open, browser, url + "/flows/Train"))
            row = '[data-run="Train/1"]'
            await _in_browser(partial(_wait_text, browser, row, "pending"))
            await first.start()
            await _in_browser(partial(_wait_text, browser, row, "running"))
            await client.create_run("Train", tags=["<new>"])
            await _in_browser(partial(_wait_text, browser, "#runs tbody tr", "<new>"))
            await _in_browser(partial(_wait_text, browser, '[data-run="Train/2"]', "pending"))
            await _in_browser(partial(browser.save_screenshot, str(tmp_path / "runs.png")))


async def test_a_run_page_over_a_real_nats(browser: Any, nats_url: str, tmp_path: Path) -> None:
    """Over a real nats-server with a replica: the run page loads and follows a task from
    creation to failure."""
    async with connect(nats_url, projector=True, data_dir=tmp_path) as client:
        run = await client.create_run("Train")
        receipt = await run.start()
        async with gateway(client.with_namespace(None), 0) as url:
            page = f"{url}/runs/Train/1?after={receipt.sequence}"
            await _in_browser(partial(_open, browser, page))
            await _in_browser(partial(_wait_text, browser, "#run-state", "running"))
            task = await run.create_task("train", start=True)
            await _in_browser(partial(_wait_text, browser, '[data-step="train"]', "running 1"))
            await task.fail("out of memory")
            await _in_browser(partial(_wait_text, browser, '[data-step="train"]', "failed 1"))
