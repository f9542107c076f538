"""The web view: HTML pages of flows, runs, tasks and event histories, served by the gateway.

Each page is rendered on the server from the same client reads the REST
routes answer with, so it is complete without JavaScript; the run and task
pages then follow ``/api/v1/watch/{pathspec}`` with a small script
(``static/runstate.js``) that updates states and counts in place. The
browser's ``EventSource`` resends ``Last-Event-ID`` when it reconnects, so
a dropped connection resumes with no change lost. Lists are pages of the
query service's cursors: a flow of 100,000 runs shows 50 at a time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from starlette.responses import Response

from runstate.client._client import Client
from runstate.client._objects import Run, Task
from runstate.client.web._charts import LOG_TAIL, charts_section, log_section
from runstate.client.web._html import (
    STATES,
    ago,
    counts_text,
    duration,
    esc,
    json_text,
    layout,
    link,
    pairs_table,
    path_url,
    query_link,
    state_badge,
    table,
)
from runstate.client.web._problems import status_of
from runstate.client.web._reads import client_of
from runstate.engine._names import parse_pathspec
from runstate.engine.errors import RunstateError
from runstate.projections._views import RunView, StepSummary, TaskView

__all__ = ["router"]


class _PageRoute(APIRoute):
    """A page route: runstate's errors as an HTML page (the API's are problem JSON), with
    the same status, so a person who follows a stale link reads what went wrong."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except RunstateError as exc:
                status = status_of(exc)
                body = f'<p class="error">{esc(exc.message)}</p><p>{link("/", "all flows")}</p>'
                return HTMLResponse(layout(f"{status}: {exc.code}", [], body), status_code=status)
            return response

        return page


router = APIRouter(
    include_in_schema=False, default_response_class=HTMLResponse, route_class=_PageRoute
)

#: the sorts the runs page offers (any sort of ``client.runs`` works in the URL)
SORTS = ("-created_at", "created_at", "-finished_at", "finished_at")

#: tasks per step the run page's timeline shows
TIMELINE_TASKS = 200


def _page(
    title: str, crumbs: list[tuple[str, str]], body: str, watch: str | None = None
) -> HTMLResponse:
    return HTMLResponse(layout(title, crumbs, body, watch=watch))


def run_url(pathspec: str) -> str:
    return path_url("/runs/", pathspec)


def task_url(pathspec: str) -> str:
    return path_url("/tasks/", pathspec)


def events_url(pathspec: str) -> str:
    return path_url("/events/", pathspec)


# -- flows -------------------------------------------------------------------------


@router.get("/")
async def flows_page(request: Request) -> HTMLResponse:
    flows = await client_of(request).flows()
    rows = (
        f"<tr><td>{link(path_url('/flows/', f.name), f.name)}</td>"
        f'<td class="num">{f.run_count}</td><td>{ago(f.info.last_created_at)}</td></tr>'
        for f in flows
    )
    body = table(["flow", "runs", "newest run"], rows, id="flows", empty="No runs yet.")
    return _page("Flows", [], body)


@router.get("/flows/{flow}")
async def runs_page(
    request: Request,
    flow: str,
    state: Annotated[list[str], Query()] = [],  # noqa: B006
    tag: Annotated[list[str], Query()] = [],  # noqa: B006
    sort: str = "-created_at",
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> HTMLResponse:
    client = client_of(request)
    tag = [word for text in tag for word in text.split()]  # the form's box: space-separated
    page = await client.runs(
        flow, tags=tag, state=state or None, sort=sort, page_size=page_size, cursor=cursor
    )
    rows = (_run_row(run.view) for run in page.items)
    filters = {"state": state, "tag": tag, "sort": sort, "page_size": page_size}
    more = ""
    if page.next_cursor is not None:
        href = query_link(path_url("/flows/", flow), {**filters, "cursor": page.next_cursor})
        more = f'<p class="pager"><a rel="next" href="{esc(href)}">next page →</a></p>'
    if cursor is not None:
        first = query_link(path_url("/flows/", flow), filters)
        more = f'<p class="pager"><a href="{esc(first)}">← first page</a></p>' + more
    headers = ["run", "state", "created", "started", "finished", "duration", "user", "tags"]
    body = (
        _filter_form(state, tag, sort)
        + table(headers, rows, id="runs", empty="No run matches.")
        + more
        + f"<p>{link(events_url(flow), 'event history of the flow')}</p>"
    )
    page_html = layout(f"Runs of {flow}", [(path_url("/flows/", flow), flow)], body, watch=flow)
    if cursor is None and not state and not tag and sort == "-created_at":
        # the newest runs, unfiltered: a run created while the page is open joins the top
        page_html = page_html.replace("<body ", "<body data-prepend ", 1)
    return HTMLResponse(page_html)


def _run_row(view: RunView) -> str:
    """A run's row; the live script builds the same markup for a run that appears."""
    tags = " ".join(f'<span class="tag">{esc(t)}</span>' for t in sorted(view.tags))
    return (
        f'<tr data-run="{esc(view.pathspec)}"><td>{link(run_url(view.pathspec), view.run_id)}</td>'
        f"<td>{state_badge(view.state)}</td><td>{ago(view.created_at)}</td>"
        f'<td data-field="started_at">{ago(view.started_at)}</td>'
        f'<td data-field="finished_at">{ago(view.finished_at)}</td>'
        f"<td>{duration(view.started_at, view.finished_at)}</td><td>{esc(view.user)}</td>"
        f"<td>{tags}</td></tr>"
    )


def _filter_form(states: list[str], tags: list[str], sort: str) -> str:
    boxes = "".join(
        f'<label><input type="checkbox" name="state" value="{s}"'
        f"{' checked' if s in states else ''}> {s}</label>"
        for s in ("scheduled", "pending", "running", "cancelling", *STATES[2:])
    )
    options = "".join(
        f'<option value="{esc(s)}"{" selected" if s == sort else ""}>{esc(s)}</option>'
        for s in (*SORTS, *([sort] if sort not in SORTS else []))
    )
    tag_text = esc(" ".join(tags))
    return (
        '<form class="filters" method="get">'
        f"<fieldset><legend>state</legend>{boxes}</fieldset>"
        f'<label>tag <input name="tag" value="{tag_text}" placeholder="e.g. team:ml"></label>'
        f'<label>sort <select name="sort">{options}</select></label>'
        '<button type="submit">apply</button></form>'
    )


# -- a run -------------------------------------------------------------------------


@router.get("/runs/{flow}/{run_id}")
async def run_page(
    request: Request, flow: str, run_id: str, after: Annotated[int | None, Query(ge=0)] = None
) -> HTMLResponse:
    client = client_of(request)
    run = await client.run(f"{flow}/{run_id}", after=after)
    view = run.view
    summary = await run.summary()
    head = (
        f'<section class="run" data-run="{esc(view.pathspec)}"><dl class="facts">'
        f"<dt>state</dt><dd>{state_badge(view.state, id='run-state')}</dd>"
        f'<dt>label</dt><dd data-field="label">{esc(view.label)}</dd>'
        f'<dt>message</dt><dd data-field="message">{esc(view.message)}</dd>'
        f"<dt>created</dt><dd>{ago(view.created_at)}</dd>"
        f'<dt>started</dt><dd data-field="started_at">{ago(view.started_at)}</dd>'
        f'<dt>finished</dt><dd data-field="finished_at">{ago(view.finished_at)}</dd>'
        f"<dt>user</dt><dd>{esc(view.user)}</dd>"
        f"<dt>tags</dt><dd>{esc(', '.join(sorted(view.tags)))}</dd>"
        f"<dt>system tags</dt><dd>{esc(', '.join(sorted(view.system_tags)))}</dd>"
        "</dl></section>"
    )
    steps = table(
        ["step", "status", "progress", "tasks by state"],
        (step_row(s) for s in view.steps),
        id="steps",
        empty="No steps yet.",
    )
    body = (
        head
        + f"<h2>Steps</h2>{steps}"
        + f"<h2>Timeline</h2>{await _timeline(client, run)}"
        + f"<h2>Parameters</h2>{pairs_table(view.config or view.parameters)}"
        + f"<h2>Summary</h2>{pairs_table({**summary, **view.summary_overrides})}"
        + f"<p>{link(events_url(view.pathspec), 'event history of the run')}</p>"
    )
    crumbs = [(path_url("/flows/", flow), flow), (run_url(view.pathspec), run_id)]
    return _page(f"Run {view.pathspec}", crumbs, body, watch=view.pathspec)


def step_row(step: StepSummary) -> str:
    """A step's row; the live script builds the same markup from a run view's steps."""
    counts = step.counts()
    total = len(step.task_states)
    done = sum(n for state, n in counts.items() if state not in ("pending", "running"))
    return (
        f'<tr data-step="{esc(step.name)}"><td>{esc(step.name)}</td>'
        f"<td>{state_badge(step.status)}</td>"
        f'<td><progress value="{done}" max="{max(total, 1)}"></progress> {done}/{total}</td>'
        f'<td class="counts">{esc(counts_text(counts))}</td></tr>'
    )


async def _timeline(client: Client, run: Run) -> str:
    """Each step's first tasks as bars along the run's time (a task not started: a tick).

    The bars carry their times (``data-from``, ``data-to``) so the live script can add
    the tasks that come later and lay every bar out again as time passes."""
    view = run.view
    tasks: list[TaskView] = []
    for step in view.steps:
        page = await client.tasks(view.pathspec, step.name, page_size=TIMELINE_TASKS)
        tasks.extend(task.view for task in page.items)
    start = view.started_at or view.created_at
    ends = [t.finished_at or t.started_at or t.created_at for t in tasks]
    # a run still going: up to now, so a running task's bar reaches the present
    end = max([view.finished_at or datetime.now(UTC), *ends])
    span = max((end - start).total_seconds(), 1e-3)

    def at(moment: datetime | None) -> float:
        if moment is None:
            return 0.0
        return min(max((moment - start).total_seconds() / span * 100, 0.0), 100.0)

    rows = []
    for task in tasks:
        began = task.started_at or task.created_at
        left = at(began)
        width = max(at(task.finished_at or end) - left, 0.5) if task.started_at else 0.5
        title = f"{task.pathspec}: {task.state} {duration(task.started_at, task.finished_at)}"
        rows.append(
            f'<div class="lane"><a class="who" href="{esc(task_url(task.pathspec))}">'
            f"{esc(task.step)}/{esc(task.task_id)}</a>"
            f'<div class="track"><div class="bar state-{esc(task.state)}" '
            f'data-task="{esc(task.pathspec)}" title="{esc(title)}" '
            f'data-from="{began.isoformat()}" data-to="{_iso(task.finished_at)}" '
            f'data-started="{"1" if task.started_at else ""}" '
            f'style="left:{left:.2f}%;width:{min(width, 100 - left):.2f}%"></div></div></div>'
        )
    if not rows:
        rows.append('<p class="empty">No tasks yet.</p>')
    scale = f'<div class="scale"><span>{ago(start)}</span><span class="end">{ago(end)}</span></div>'
    return (
        f'<div class="timeline" id="timeline" data-start="{start.isoformat()}" '
        f'data-end="{_iso(view.finished_at)}">{"".join(rows)}{scale}</div>'
    )


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat()


# -- a task ------------------------------------------------------------------------


@router.get("/tasks/{pathspec:path}")
async def task_page(
    request: Request,
    pathspec: str,
    attempt: Annotated[int | None, Query(ge=0)] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> HTMLResponse:
    parse_pathspec(pathspec, min_depth=4, max_depth=4)
    client = client_of(request)
    task = await client.task(pathspec, attempt=attempt, after=after)
    view = task.view
    head = (
        f'<section class="task" data-task-page="{esc(view.pathspec)}"><dl class="facts">'
        f"<dt>state</dt><dd>{state_badge(view.state, id='task-state')}</dd>"
        f"<dt>attempt</dt><dd>{task.attempt}</dd>"
        f"<dt>label</dt><dd>{esc(view.label)}</dd><dt>message</dt><dd>{esc(view.message)}</dd>"
        f"<dt>runtime</dt><dd>{esc(view.runtime_name)}</dd>"
        f"<dt>foreach index</dt><dd>{esc(view.foreach_index)}</dd>"
        "</dl></section>"
    )
    body = head + "<h2>Attempts</h2>" + _attempts(view, task.attempt)
    body += "<h2>Metadata</h2>" + table(
        ["name", "type", "value", "attempt", "recorded"],
        (
            f"<tr><td>{esc(m.name)}</td><td>{esc(m.type)}</td><td><code>{esc(m.value)}</code>"
            f"</td><td>{m.attempt}</td><td>{ago(m.created_at)}</td></tr>"
            for m in task.metadata
        ),
        empty="No metadata.",
    )
    body += "<h2>Artifacts</h2>" + _artifacts(task)
    body += "<h2>Metrics</h2>" + await charts_section(task)
    body += f"<h2>Log (last {LOG_TAIL} lines, then live)</h2>" + await log_section(task)
    body += f"<p>{link(events_url(view.pathspec), 'event history of the task')}</p>"
    run_path = f"{view.flow}/{view.run_id}"
    crumbs = [
        (path_url("/flows/", view.flow), view.flow),
        (run_url(run_path), view.run_id),
        (task_url(view.pathspec), f"{view.step}/{view.task_id}"),
    ]
    return _page(f"Task {view.pathspec}", crumbs, body, watch=view.pathspec)


def _attempts(view: TaskView, shown: int) -> str:
    rows = []
    failures = []
    for a in view.attempts:
        href = query_link(task_url(view.pathspec), {"attempt": a.attempt})
        rows.append(
            f"<tr><td>{link(href, a.attempt)}{' (shown)' if a.attempt == shown else ''}</td>"
            f"<td>{state_badge(a.state)}</td><td>{ago(a.created_at)}</td>"
            f"<td>{ago(a.started_at)}</td><td>{ago(a.finished_at)}</td>"
            f"<td>{duration(a.started_at, a.finished_at)}</td><td>{esc(a.message)}</td></tr>"
        )
        if a.exception is not None:
            failures.append(
                f'<div class="exception"><h3>attempt {a.attempt}: {esc(a.exception.type)}: '
                f"{esc(a.exception.message)}</h3>"
                f"<pre>{esc(a.exception.traceback or '(no traceback)')}</pre></div>"
            )
    headers = ["attempt", "state", "created", "started", "finished", "duration", "message"]
    return table(headers, rows, empty="No attempts.") + "".join(failures)


def _artifacts(task: Task) -> str:
    rows = []
    for artifact in task.artifacts:
        a = artifact.view
        shown = f"<code>{esc(json_text(a.inline, 200))}</code>" if a.inline is not None else ""
        rows.append(
            f'<tr><td>{esc(a.name)}</td><td>{esc(a.codec)}</td><td class="num">{a.size}</td>'
            f"<td><code>{esc(a.sha256[:12])}</code></td><td>{shown}</td>"
            f"<td>{link(_value_url(task.view, a.name, a.attempt), 'value')}</td></tr>"
        )
    return table(
        ["name", "codec", "bytes", "sha256", "inline", "download"], rows, empty="No artifacts."
    )


def _value_url(view: TaskView, name: str, attempt: int) -> str:
    base = path_url(
        "/api/v1/runs/", f"{view.flow}/{view.run_id}/steps/{view.step}/tasks/{view.task_id}"
    )
    return query_link(path_url(base + "/artifacts/", name) + "/value", {"attempt": attempt})


# -- event history -----------------------------------------------------------------


@router.get("/events/{pathspec:path}")
async def events_page(
    request: Request,
    pathspec: str,
    start: Annotated[int, Query(ge=1)] = 1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> HTMLResponse:
    parse_pathspec(pathspec)
    records, next_start = await client_of(request).history(pathspec, start=start, limit=limit)
    rows = []
    for record in records:
        event: Any = record.event
        payload = event.payload.model_dump(mode="json") if hasattr(event, "payload") else {}
        rows.append(
            f'<tr><td class="num">{record.sequence}:{record.index}</td>'
            f"<td>{ago(event.occurred_at)}</td><td>{esc(event.type)}</td>"
            f"<td>{esc(event.pathspec)}</td><td>{esc(event.attempt)}</td>"
            f"<td>{esc(event.actor)}</td><td><code>{esc(json_text(payload, 400))}</code></td></tr>"
        )
    base = path_url("/events/", pathspec)
    more = ""
    if next_start is not None:
        href = query_link(base, {"start": next_start, "limit": limit})
        more = f'<p class="pager"><a rel="next" href="{esc(href)}">next page →</a></p>'
    headers = ["sequence", "occurred", "type", "object", "attempt", "actor", "payload"]
    body = table(headers, rows, id="events", empty="No events.") + more
    return _page(f"Events of {pathspec}", [(base, pathspec)], body)
