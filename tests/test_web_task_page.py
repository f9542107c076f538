"""The task page's metric charts (inline SVG from the sampled history) and log tail: rendered
complete on the server, and live in a real headless browser (a point and a line written
through the client appear without a reload)."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_web_pages import _in_browser, _open, _wait_text, browser, gateway

from runstate.client import Client
from runstate.client.testing import in_memory
from runstate.client.web import create_app
from runstate.client.web._charts import (
    CHART_HEIGHT,
    CHART_WIDTH,
    LOG_TAIL,
    chart_svg,
    numeric_points,
)

pytestmark = pytest.mark.anyio

__all__ = ["browser"]  # the fixture, shared with test_web_pages

TASK_PAGE = "/tasks/Train/1/train/1"


def _polyline(svg: str) -> list[tuple[float, float]]:
    found = re.search(r'<polyline class="line" points="([^"]*)"', svg)
    assert found is not None
    return [
        (float(x), float(y))
        for x, y in (pair.split(",") for pair in found.group(1).split() if pair)
    ]


def test_numeric_points_keep_finite_numbers_only() -> None:
    """Strings, NaN and infinities are left out of a line; bools count as 0 and 1."""
    rows = [
        {"_step": 0, "loss": 1.5},
        {"_step": 1, "loss": "n/a"},
        {"_step": 2, "loss": float("nan")},
        {"_step": 3, "loss": float("inf")},
        {"_step": 4, "loss": True},
        {"_step": 5, "acc": 0.5},
        {"_step": 6, "loss": 2},
    ]
    assert numeric_points(rows, "loss") == [(0, 1.5), (4, 1.0), (6, 2.0)]


@given(
    st.dictionaries(
        st.integers(min_value=-(10**6), max_value=10**6),
        st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
        max_size=60,
    )
)
def test_a_chart_draws_every_point_inside_its_box(by_step: dict[int, float]) -> None:
    """One polyline vertex per point, in step order, all within the drawing; the labels
    name the value and step ranges."""
    points = sorted(by_step.items())
    svg = chart_svg(points)
    vertices = _polyline(svg)
    assert len(vertices) == len(points)
    assert all(0 <= x <= CHART_WIDTH and 0 <= y <= CHART_HEIGHT for x, y in vertices)
    assert [x for x, _ in vertices] == sorted(x for x, _ in vertices)
    if points:
        assert f'class="x-min" x="52" y="{CHART_HEIGHT - 4}">{points[0][0]}<' in svg
        assert f">{points[-1][0]}</text></svg>" in svg
        values = [value for _, value in points]
        highest = min(range(len(vertices)), key=lambda i: vertices[i][1])
        span = max(values) - min(values)
        assert values[highest] >= max(values) - span / 100  # the top value is drawn highest


async def _trained(client: Client) -> Any:
    """Train/1/train/1 running, with 50 steps of loss and acc and some output."""
    run = await client.create_run("Train")
    await run.start()
    task = await run.create_task("train", start=True)
    for step in range(50):
        await task.log({"loss": 1 / (step + 1), "acc": step / 50, "phase": "warm"})
    await task.flush()
    await task.write_log("epoch 1 <done>\n")
    await task.write_log("careful: lr high\n", stream="stderr")
    await task.flush_logs()
    return task


async def test_the_task_page_holds_charts_and_the_log_tail_without_javascript() -> None:
    """A chart per numeric metric key (an SVG line over the sampled history), the latest
    values, and the log's last lines with stderr marked, all in the HTML; the live
    script's stream addresses resume after what the page shows."""
    async with in_memory() as client:
        task = await _trained(client)
        for n in range(LOG_TAIL + 20):
            await task.write_log(f"line {n}\n")
        await task.flush_logs()
        transport = httpx.ASGITransport(app=create_app(client))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            page = (await http.get(TASK_PAGE)).text
        keys = re.findall(r'<figure class="metric" data-key="([^"]+)"', page)
        assert keys == ["acc", "loss"]  # "phase" holds strings: no line, a latest value
        loss = page.split('data-key="loss"')[1].split("</figure>")[0]
        assert len(_polyline(loss)) == 50
        assert '<span class="last">0.02</span>' in loss
        assert "&quot;warm&quot;" in page
        tail = page.split('id="log-tail"')[1].split("</pre>")[0]
        assert tail.count('class="line') == LOG_TAIL
        assert f"line {LOG_TAIL + 19}\n" in tail and "epoch 1" not in tail
        assert 'data-follow="/api/v1/metrics/Train/1/train/1/follow?attempt=0&amp;resume=' in page
        read = await client.task(TASK_PAGE.removeprefix("/tasks/"))
        lines = [line async for line in read.log_lines()]
        after = f"{lines[-1].sequence}%3A{lines[-1].index}"  # the query's ":"
        assert f"/log-lines/follow?attempt=0&amp;after={after}" in page


async def test_short_logs_mark_stderr_and_escape() -> None:
    """Lines keep their stream (stderr in its own class) and are escaped."""
    async with in_memory() as client:
        await _trained(client)
        transport = httpx.ASGITransport(app=create_app(client))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            page = (await http.get(TASK_PAGE)).text
        assert '<span class="line stdout">epoch 1 &lt;done&gt;\n</span>' in page
        assert '<span class="line stderr">careful: lr high\n</span>' in page


async def test_charts_and_log_tail_go_live_in_a_browser(browser: Any, tmp_path: Path) -> None:
    """With the task page open in chromium, a metric point (of a charted key and of a new
    key: its chart and its latest value) and a log line written through the client appear
    without a reload."""
    async with in_memory() as client:
        task = await _trained(client)
        async with gateway(client, 0) as url:
            await _in_browser(partial(_open, browser, url + TASK_PAGE))
            await _in_browser(partial(_wait_text, browser, '[data-key="loss"]', "0.02"))
            await _in_browser(partial(_wait_text, browser, "#log-tail", "careful: lr high"))
            await _in_browser(partial(browser.save_screenshot, str(tmp_path / "task.png")))
            browser.execute_script("document.body.setAttribute('data-marker', 'same page')")
            vertices = (
                "return document.querySelector('{}').getAttribute('points').split(' ').length"
            )
            loss_line = '[data-key="loss"] .line'
            assert await _in_browser(partial(browser.execute_script, vertices.format(loss_line)))
            await task.log({"loss": 7.5, "grad_norm": 3.25}, step=50)
            await task.flush()
            await task.write_log("epoch 2 started\n")
            await task.flush_logs()
            await _in_browser(partial(_wait_text, browser, '[data-key="loss"] .last', "7.5"))
            await _in_browser(partial(_wait_text, browser, '[data-key="grad_norm"]', "3.25"))
            await _in_browser(partial(_wait_text, browser, '[data-key="loss"] .y-max', "7.5"))
            await _in_browser(partial(_wait_text, browser, "#latest", "grad_norm 3.25"))
            await _in_browser(partial(_wait_text, browser, "#log-tail", "epoch 2 started"))
            count = await _in_browser(partial(browser.execute_script, vertices.format(loss_line)))
            assert count == 51
            await _in_browser(partial(browser.save_screenshot, str(tmp_path / "task-live.png")))
            browser.execute_script("document.getElementById('log-tail').scrollIntoView()")
            await _in_browser(partial(browser.save_screenshot, str(tmp_path / "task-log.png")))
            marker = await _in_browser(
                partial(browser.execute_script, "return document.body.dataset.marker")
            )
            assert marker == "same page"  # never reloaded
