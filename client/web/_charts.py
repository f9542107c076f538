"""The task page's metric charts and log tail, rendered on the server and then followed live.

A chart is an inline SVG line of one metric key over ``_step``, drawn from
the sampled history the client's ``history`` gives (first, last, and each
bucket's minimum, maximum and last point), so a million-point series costs
the page a few hundred points and no spike is lost. The log tail is the
attempt's last lines of stdout and stderr, in the order they were written.

Both are complete without JavaScript. The page's second script
(``static/tails.js``) then follows the gateway's event streams named in
their ``data-follow`` attributes: the metric tail from the end of the points
stream the charts were read at, the log tail right after the last line
shown. It redraws a chart with the same rule as ``chart_svg`` here.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import orjson

from runstate.client._logs import LogLine
from runstate.client._objects import Task
from runstate.client.web._html import ASSETS, esc, pairs_table, path_url, query_link
from runstate.client.web._tails import format_position

__all__ = [
    "CHART_HEIGHT",
    "CHART_SAMPLES",
    "CHART_WIDTH",
    "LOG_TAIL",
    "MAX_CHARTS",
    "chart_svg",
    "charts_section",
    "log_section",
    "numeric_points",
]

#: the chart's drawing area, in SVG user units (the page scales it to its column)
CHART_WIDTH = 320
CHART_HEIGHT = 120

#: points a chart asks the sampled history for (the client's ``history`` default)
CHART_SAMPLES = 500

#: metric keys charted on one task page (the first, in name order)
MAX_CHARTS = 24

#: lines of the log the task page shows
LOG_TAIL = 100

#: margins around the line, in the same units: room for the axis labels
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 8, 8, 18

Point = tuple[int, float]


def numeric_points(rows: list[dict[str, Any]], key: str) -> list[Point]:
    """``(step, value)`` of each row whose ``key`` is a finite number (bools as 0 and 1):
    what a line can show; strings, NaN and infinities are left out."""
    points: list[Point] = []
    for row in rows:
        value: Any = row.get(key)
        if type(value) in (int, float, bool) and math.isfinite(value):
            points.append((int(row["_step"]), float(value)))
    return points


def _label(value: float) -> str:
    """A number short enough for an axis: four significant digits (as the script's
    ``toPrecision(4)``)."""
    return f"{value:.4g}"


def chart_svg(points: list[Point]) -> str:
    """An SVG line chart of ``points`` (steps increasing), with the value range on the
    left and the step range below, and a dot on the latest point (a single point shows
    as one); a flat series is drawn in the middle."""
    width, height = CHART_WIDTH, CHART_HEIGHT
    inner_w, inner_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    line = ""
    dot = 'cx="-9" cy="-9"'  # off the drawing until there is a point
    labels = ("", "", "", "")
    if points:
        steps = [step for step, _ in points]
        values = [value for _, value in points]
        x0, x1 = min(steps), max(steps)
        y0, y1 = min(values), max(values)
        x_span, y_span = (x1 - x0) or 1, (y1 - y0) or 1

        def x(step: int) -> float:
            return _LEFT + (step - x0) / x_span * inner_w if x1 > x0 else _LEFT + inner_w / 2

        def y(value: float) -> float:
            return _TOP + (y1 - value) / y_span * inner_h if y1 > y0 else _TOP + inner_h / 2

        line = " ".join(f"{x(step):.1f},{y(value):.1f}" for step, value in points)
        dot = f'cx="{x(points[-1][0]):.1f}" cy="{y(points[-1][1]):.1f}"'
        labels = (_label(y1), _label(y0), str(x0), str(x1))
    bottom = _TOP + inner_h
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img">'
        f'<path class="axis" d="M{_LEFT} {_TOP}V{bottom}H{width - _RIGHT}"/>'
        f'<polyline class="line" points="{line}"/>'
        f'<circle class="dot" r="2.5" {dot}/>'
        f'<text class="y-max" x="{_LEFT - 4}" y="{_TOP + 8}">{esc(labels[0])}</text>'
        f'<text class="y-min" x="{_LEFT - 4}" y="{bottom}">{esc(labels[1])}</text>'
        f'<text class="x-min" x="{_LEFT}" y="{height - 4}">{esc(labels[2])}</text>'
        f'<text class="x-max" x="{width - _RIGHT}" y="{height - 4}">{esc(labels[3])}</text>'
        "</svg>"
    )


def _figure(key: str, points: list[Point], last: Any) -> str:
    """One key's chart; ``data-points`` is what the live script redraws from."""
    data = orjson.dumps(points).decode()
    return (
        f'<figure class="metric" data-key="{esc(key)}" data-points="{esc(data)}">'
        f'<figcaption><span class="key">{esc(key)}</span> '
        f'<span class="last">{esc(last)}</span></figcaption>{chart_svg(points)}</figure>'
    )


async def charts_section(task: Task) -> str:
    """The task attempt's charts (one per metric key with a number logged), then the
    keys' latest values, followed live from where they were read."""
    # The points stream's end before reading: the history read waits until the read
    # store holds it, and the live tail starts right after it (a row of a batch the
    # charts already hold may come again; the script keeps one point per step).
    end = await task._client.log.points.last_sequence()
    keys = await task._history().keys(after=end or None)
    figures = []
    for key in keys["keys"][:MAX_CHARTS]:
        rows = await task.history(samples=CHART_SAMPLES, keys=[key], after=end or None)
        points = numeric_points(rows, key)
        if points:
            figures.append(_figure(key, points, keys["summary"].get(key)))
    more = len(keys["keys"]) - MAX_CHARTS
    note = f'<p class="empty">{more} more keys are not charted.</p>' if more > 0 else ""
    view = task.view
    params: dict[str, Any] = {"attempt": task.attempt}
    if end:
        params["resume"] = end
    follow = query_link(path_url("/api/v1/metrics/", view.pathspec) + "/follow", params)
    latest = pairs_table(keys["summary"], empty="No metrics logged.")
    return (
        f'<div class="charts" id="charts" data-follow="{esc(follow)}" '
        f'data-limit="{2 * CHART_SAMPLES}">{"".join(figures)}</div>{note}'
        f'<h3>Latest values</h3><div id="latest">{latest}</div>'
    )


async def log_section(task: Task) -> str:
    """The attempt's last ``LOG_TAIL`` lines (stderr marked), then each new line live."""
    tail: deque[LogLine] = deque(maxlen=LOG_TAIL)
    async for line in task.log_lines():
        tail.append(line)
    after = format_position(tail[-1].position) if tail else "0"
    view = task.view
    base = path_url(
        "/api/v1/runs/", f"{view.flow}/{view.run_id}/steps/{view.step}/tasks/{view.task_id}"
    )
    follow = query_link(base + "/log-lines/follow", {"attempt": task.attempt, "after": after})
    lines = "".join(
        f'<span class="line {esc(line.stream)}">{esc(line.text)}</span>' for line in tail
    )
    return (
        f'<pre class="log" id="log-tail" data-follow="{esc(follow)}" '
        f'data-limit="{10 * LOG_TAIL}">{lines}</pre>'
        f'<script src="{ASSETS}/tails.js" defer></script>'
    )
