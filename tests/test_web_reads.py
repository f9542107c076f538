"""The gateway's REST reads mirror the async client's read API: a route for every read,
answering the same data (an in-memory runstate, httpx's ASGI transport)."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from _web import ok

from runstate.client import Client, DataArtifact, Flow, Run, Step, Task
from runstate.client.testing import in_memory
from runstate.client.web import create_app
from runstate.engine._settings import Settings

pytestmark = pytest.mark.anyio

#: every public read of the client -> the route that answers it
ROUTES = {
    "Client.get": "GET /api/v1/objects/{pathspec}",
    "Client.flow": "GET /api/v1/flows/{flow}",
    "Client.flows": "GET /api/v1/flows",
    "Client.latest_run": "GET /api/v1/flows/{flow}/latest-run",
    "Flow.latest_run": "GET /api/v1/flows/{flow}/latest-run",
    "Flow.latest_successful_run": "GET /api/v1/flows/{flow}/latest-run",
    "Client.runs": "GET /api/v1/runs",
    "Flow.runs": "GET /api/v1/runs",
    "Flow.__aiter__": "GET /api/v1/runs",
    "Client.run": "GET /api/v1/runs/{flow}/{run_id}",
    "Flow.run": "GET /api/v1/runs/{flow}/{run_id}",
    "Run.refresh": "GET /api/v1/runs/{flow}/{run_id}",
    "Run.steps": "GET /api/v1/runs/{flow}/{run_id}/steps",
    "Run.__aiter__": "GET /api/v1/runs/{flow}/{run_id}/steps",
    "Client.step": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}",
    "Run.step": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}",
    "Client.tasks": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks",
    "Step.tasks": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks",
    "Step.task": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks",
    "Step.__aiter__": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks",
    "Client.task": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}",
    "Task.refresh": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}",
    "Client.artifact": (
        "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}/artifacts/{name}"
    ),
    "DataArtifact.load": (
        "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}/artifacts/{name}/value"
    ),
    "Client.runs_frame": "GET /api/v1/runs-frame",
    "Task.logs": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}/logs",
    "Task.log_lines": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}/log-lines",
    "Client.history": "GET /api/v1/history/{pathspec}",
    "Client.status": "GET /api/v1/status",
    "Run.history": "GET /api/v1/metrics/{pathspec}/history",
    "Task.history": "GET /api/v1/metrics/{pathspec}/history",
    "Run.scan_history": "GET /api/v1/metrics/{pathspec}/scan",
    "Task.scan_history": "GET /api/v1/metrics/{pathspec}/scan",
    "Run.history_keys": "GET /api/v1/metrics/{pathspec}/keys",
    "Task.history_keys": "GET /api/v1/metrics/{pathspec}/keys",
    "Run.last_history_step": "GET /api/v1/metrics/{pathspec}/keys",
    "Task.last_history_step": "GET /api/v1/metrics/{pathspec}/keys",
    "Run.summary": "GET /api/v1/metrics/{pathspec}/keys",
    "Task.summary": "GET /api/v1/metrics/{pathspec}/keys",
    "Run.system_metrics": "GET /api/v1/metrics/{pathspec}/keys",
    "Task.system_metrics": "GET /api/v1/metrics/{pathspec}/keys",
    # live: server-sent events (tests/test_web_live.py)
    "Client.watch": "GET /api/v1/watch/{pathspec}",
    "Run.watch": "GET /api/v1/watch/{pathspec}",
    "Task.watch": "GET /api/v1/watch/{pathspec}",
    "Client.events": "GET /api/v1/events/{pathspec}",
    "Task.follow_logs": (
        "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}/log-lines/follow"
    ),
    "Run.follow_history": "GET /api/v1/metrics/{pathspec}/follow",
    "Task.follow_history": "GET /api/v1/metrics/{pathspec}/follow",
    # a write among the reads (tests/test_web_tails.py)
    "Client.update_run": "PATCH /api/v1/runs/{flow}/{run_id}",
    # properties of the snapshot, not coroutines, that have routes of their own
    "Task.artifacts": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}/artifacts",
    "Task.metadata": "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}/metadata",
}

#: the routes of server-sent events, checked over a real socket in tests/test_web_live.py
#: and tests/test_web_tails.py (as is the write)
LIVE = {
    "GET /api/v1/watch/{pathspec}",
    "GET /api/v1/events/{pathspec}",
    "GET /api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}/log-lines/follow",
    "GET /api/v1/metrics/{pathspec}/follow",
    "PATCH /api/v1/runs/{flow}/{run_id}",
}

#: public coroutines of the client with no read route of their own, and why
EXCLUDED = {
    # the query protocol itself; each endpoint of it has its route above
    "Client.request",
    # the client's own life (open_client's); nothing to read
    "Client.aclose",
    # writes: answered by the write routes (tests/test_web_writes.py)
    "Client.create_run",
    "Client.run_handle",
    "Run.add_tag",
    "Run.add_tags",
    "Run.remove_tag",
    "Run.remove_tags",
    "Run.replace_tag",
    "Run.replace_tags",
    # lineage: the views carry the pathspecs (RunView.end_task, TaskView.parent_tasks and
    # child_tasks); each is read with the task route
    "Run.end_task",
    "Run.data",
    "Task.parent_tasks",
    "Task.child_tasks",
    # waiting for the end of a run: the watch stream (GET /api/v1/watch/{pathspec})
    "Run.wait",
}


def _client_reads() -> set[str]:
    """Every public coroutine of the client's objects, and each method returning an async
    iterator or a live subscription."""
    names = set()
    for cls in (Client, Flow, Run, Step, Task, DataArtifact):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") and name != "__aiter__":
                continue
            if not inspect.isfunction(member):
                continue
            returns = str(inspect.signature(member).return_annotation)
            if (
                inspect.iscoroutinefunction(member)
                or inspect.isasyncgenfunction(member)
                or "AsyncIterator" in returns
                or "Subscription" in returns
            ):
                names.add(f"{cls.__name__}.{name}")
    return names


def _app_routes(app: Any) -> set[str]:
    """``METHOD /path`` of every route the app's OpenAPI schema describes."""
    return {
        f"{method.upper()} {path}"
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }


def test_every_read_of_the_client_has_a_route() -> None:
    """Each public coroutine of Client, Flow, Run, Step, Task and DataArtifact maps to a route
    of the gateway, or is excluded with a reason."""
    reads = _client_reads()
    assert "Client.runs" in reads and "Run.history" in reads
    unmapped = sorted(reads - set(ROUTES) - EXCLUDED)
    assert not unmapped, f"client reads with no REST route (add one, or exclude it): {unmapped}"
    stale = sorted((set(ROUTES) | EXCLUDED) - reads - {"Task.artifacts", "Task.metadata"})
    assert not stale, f"mapped reads the client no longer has: {stale}"


async def test_every_mapped_route_exists() -> None:
    """Every route named in the mapping is served by the app."""
    async with in_memory() as client:
        served = _app_routes(create_app(client))
    missing = sorted(set(ROUTES.values()) - served)
    assert not missing, f"routes missing from the app: {missing}"


@asynccontextmanager
async def gateway(
    settings: Settings | None = None,
) -> AsyncIterator[tuple[Client, httpx.AsyncClient]]:
    """An in-memory runstate (its client reading every namespace) and an HTTP client of its
    gateway."""
    async with in_memory(settings) as client:
        transport = httpx.ASGITransport(app=create_app(client))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield client.with_namespace(None), http


async def _populate(client: Client) -> int:
    """Two flows, runs with tags, parameters, a task with two attempts, artifacts of each
    codec and place, metadata and metrics; the last write's sequence."""
    for i in range(3):
        other = await client.create_run("Other", parameters={"i": i}, tags=[f"t{i}"])
        await other.start()
        await other.complete()
    run = await client.create_run("Train", parameters={"lr": 0.1}, tags=["nightly", "gpu"])
    await run.start()
    task = await run.create_task("start", start=True)
    await task.fail("first try")
    await task.retry()
    await task.start()
    await task.record_metadata(host="node-1", cores=8)
    await task.write_log("hello\nworld\n")
    await task.write_log("careful\n", stream="stderr")
    await task.save(accuracy=0.93, labels=["a", "b"], shape={1, 2}, big="x" * 40_000)
    for step in range(20):
        await task.log({"loss": 1 / (step + 1), "acc": step / 20})
    await run.log({"epoch_loss": 0.5})
    points = await task.flush()
    await run.flush()
    await task.complete()
    end = await run.create_task("end", parents=[task], start=True)
    await end.save(result="ok")
    await end.complete()
    receipt = await run.complete()
    assert points is not None
    return max(receipt.sequence, points.sequence)


def _dump(model: Any) -> Any:
    return orjson.loads(model.model_dump_json())


async def test_each_read_answers_what_the_client_reads() -> None:
    """Every mapped route, on a populated runstate, answers the data of the client's read."""
    checked: set[str] = set()

    def check(route: str, got: Any, want: Any) -> None:
        assert got == want, route
        checked.add(route)

    async with gateway() as (client, http):
        last = await _populate(client)
        await client.run("Train/1", after=last)
        base = "/api/v1/runs/Train/1/steps/start/tasks/1"

        flows = await client.flows()
        check(
            ROUTES["Client.flows"],
            ok(await http.get("/api/v1/flows")),
            [_dump(f.info) for f in flows],
        )
        check(
            ROUTES["Client.flow"],
            ok(await http.get("/api/v1/flows/Other")),
            _dump((await client.flow("Other")).info),
        )
        latest = await client.latest_run("Other", successful=True)
        assert latest is not None
        check(
            ROUTES["Client.latest_run"],
            ok(await http.get("/api/v1/flows/Other/latest-run?successful=true")),
            _dump(latest.view),
        )

        page = await client.runs(
            tags=["t1"],
            any_tags=["t1", "t2"],
            state="completed",
            parameters={"i": 1},
            sort="run_number",
        )
        got = ok(
            await http.get(
                "/api/v1/runs",
                params={
                    "tag": "t1",
                    "any_tag": ["t1", "t2"],
                    "state": "completed",
                    "parameters": '{"i": 1}',
                    "sort": "run_number",
                },
            )
        )
        check(ROUTES["Client.runs"], got["items"], [_dump(r.view) for r in page.items])
        assert [r["pathspec"] for r in got["items"]] == ["Other/2"]
        # the cursor walks the same pages
        first = ok(await http.get("/api/v1/runs?flow=Other&page_size=2"))
        second = ok(
            await http.get(
                "/api/v1/runs",
                params={"flow": "Other", "page_size": 2, "cursor": first["next_cursor"]},
            )
        )
        client_first = await client.runs("Other", page_size=2)
        client_second = await client_first.next_page()
        assert client_second is not None
        assert [r["pathspec"] for r in first["items"] + second["items"]] == [
            r.pathspec for r in [*client_first.items, *client_second.items]
        ]

        response = await http.get("/api/v1/runs/Train/1")
        check(ROUTES["Client.run"], ok(response), _dump((await client.run("Train/1")).view))
        assert (
            response.headers["etag"]
            == f'"{await client.log.last_sequence(client.subjects.run("Train", "1"))}"'
        )
        run = await client.run("Train/1")
        check(
            ROUTES["Run.steps"],
            ok(await http.get("/api/v1/runs/Train/1/steps")),
            [_dump(s.view) for s in await run.steps()],
        )
        check(
            ROUTES["Client.step"],
            ok(await http.get("/api/v1/runs/Train/1/steps/start")),
            _dump((await client.step("Train/1/start")).view),
        )
        tasks = await client.tasks("Train/1", "start", state="completed")
        check(
            ROUTES["Client.tasks"],
            ok(await http.get("/api/v1/runs/Train/1/steps/start/tasks?state=completed"))["items"],
            [_dump(t.view) for t in tasks.items],
        )

        task = await client.task("Train/1/start/1")
        check(ROUTES["Client.task"], ok(await http.get(base)), _dump(task.view))
        assert (await http.get(base + "?attempt=0")).status_code == 200
        assert (await http.get(base + "?attempt=7")).status_code == 404

        first_attempt = await client.task("Train/1/start/1", attempt=0)
        check(
            ROUTES["Task.metadata"],
            ok(await http.get(base + "/metadata")),
            {
                "attempt": 1,
                "entries": [_dump(m) for m in task.metadata],
                "by_name": task.metadata_dict,
            },
        )
        assert ok(await http.get(base + "/metadata?attempt=0"))["by_name"] == (
            first_attempt.metadata_dict
        )
        check(
            ROUTES["Task.artifacts"],
            ok(await http.get(base + "/artifacts")),
            [_dump(a.view) for a in task.artifacts],
        )
        assert ok(await http.get(base + "/artifacts?attempt=0")) == []
        artifact = await client.artifact("Train/1/start/1/accuracy")
        check(
            ROUTES["Client.artifact"],
            ok(await http.get(base + "/artifacts/accuracy")),
            _dump(artifact.view),
        )

        value_route = ROUTES["DataArtifact.load"]
        for name in ("accuracy", "labels", "big"):
            want = await (await client.artifact(f"Train/1/start/1/{name}")).load()
            check(value_route, ok(await http.get(f"{base}/artifacts/{name}/value")), want)
        # a pickle travels as its bytes, never unpickled by the gateway
        response = await http.get(f"{base}/artifacts/shape/value")
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["x-runstate-codec"] == "pickle"
        assert pickle.loads(response.content) == {1, 2}

        obj = await client.get("Train/1/start/1/labels")
        check(
            ROUTES["Client.get"],
            ok(await http.get("/api/v1/objects/Train/1/start/1/labels")),
            {"kind": "artifact", "view": _dump(obj.view)},
        )  # type: ignore[union-attr]
        assert ok(await http.get("/api/v1/objects/Other"))["kind"] == "flow"

        records, next_start = await client.history("Train/1", limit=3)
        got = ok(await http.get("/api/v1/history/Train/1?limit=3"))
        check(
            ROUTES["Client.history"],
            [(r["sequence"], r["index"], r["event"]["type"]) for r in got["items"]],
            [(r.sequence, r.index, r.event.type) for r in records],
        )
        assert got["next_start"] == next_start
        check(
            ROUTES["Client.status"],
            ok(await http.get("/api/v1/status"))["applied"],
            (await client.status())["applied"],
        )

        task_path = "/api/v1/metrics/Train/1/start/1"
        check(
            ROUTES["Task.history"],
            ok(await http.get(f"{task_path}/history?samples=8")),
            await task.history(samples=8),
        )
        rows = [row async for row in task.scan_history(page_size=5, min_step=3)]
        scanned = []
        start = None
        while True:
            params: dict[str, Any] = {"page_size": 5, "min_step": 3}
            if start is not None:
                params["start"] = start
            page_json = ok(await http.get(f"{task_path}/scan", params=params))
            scanned += page_json["rows"]
            start = page_json["next_start"]
            if start is None:
                break
        check(ROUTES["Task.scan_history"], scanned, rows)
        keys = ok(await http.get(f"{task_path}/keys"))
        check(ROUTES["Task.history_keys"], keys["keys"], await task.history_keys())
        assert keys["last_step"] == await task.last_history_step() == 19
        assert keys["summary"] == await task.summary()
        assert ok(await http.get("/api/v1/metrics/Train/1/keys"))["summary"] == (
            await run.summary()
        )

        check(ROUTES["Task.logs"], (await http.get(base + "/logs")).text, await task.logs())
        assert (await http.get(base + "/logs?stream=stderr")).text == "careful\n"
        lines = [line async for line in task.log_lines()]
        check(
            ROUTES["Task.log_lines"],
            [
                (line["position"], line["stream"], line["text"], line["time"])
                for line in ok(await http.get(base + "/log-lines"))["items"]
            ],
            [(f"{x.sequence}:{x.index}", x.stream, x.text, x.time) for x in lines],
        )

        frame = await client.runs_frame(sort="run_number")
        got = ok(await http.get("/api/v1/runs-frame?sort=run_number"))
        assert got["columns"] == list(frame.columns)
        check(
            ROUTES["Client.runs_frame"],
            {name: got["data"][name] for name in ("pathspec", "state", "tags", "config.lr")},
            {
                name: [None if v != v else v for v in frame[name].tolist()]
                for name in ("pathspec", "state", "tags", "config.lr")
            },
        )
        assert got["data"]["created_at"] == [t.isoformat() for t in frame["created_at"]]

    assert checked == set(ROUTES.values()) - LIVE


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/v1/runs/Nope/1", 404, "not_found"),
        ("/api/v1/runs/bad flow/1", 422, "invalid_name"),
        ("/api/v1/runs?sort=color", 422, "bad_filter"),
        ("/api/v1/runs?state=asleep", 422, "bad_filter"),
        ("/api/v1/runs?parameters=[1]", 422, "bad_filter"),
        ("/api/v1/runs?page_size=many", 422, "bad_request"),
        ("/api/v1/flows/Nope/latest-run", 404, "not_found"),
        ("/api/v1/no/such/route", 404, "no_route"),
    ],
)
async def test_read_errors_are_problem_details(path: str, status: int, code: str) -> None:
    """A bad read is an RFC 9457 problem: its status, type, title, detail and runstate code."""
    async with gateway() as (_, http):
        response = await http.get(path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["code"] == code
    assert problem["type"] == f"urn:runstate:problem:{code}"
    assert problem["title"] and problem["detail"]


async def test_a_read_after_a_write_sees_it() -> None:
    """A read with after=<a write's sequence> answers with that write applied."""
    async with gateway() as (_, http):
        created = await http.post("/api/v1/runs", json={"flow": "Train"})
        sequence = int(created.headers["x-runstate-sequence"])
        assert created.json()["sequence"] == sequence
        run = ok(await http.get("/api/v1/runs/Train/1", params={"after": sequence}))
        assert run["state"] == "pending"


async def test_namespace_limits_runs_to_a_tag() -> None:
    """?namespace= lists only runs carrying that tag; without it every run is listed."""
    async with gateway() as (client, http):
        await client.create_run("Train", tags=["team:a"])
        last = await client.create_run("Train", tags=["team:b"])
        assert last.receipt is not None
        after = last.receipt.sequence
        everything = ok(await http.get("/api/v1/runs", params={"after": after}))
        only_a = ok(await http.get("/api/v1/runs", params={"after": after, "namespace": "team:a"}))
    assert len(everything["items"]) == 2
    assert [r["tags"] for r in only_a["items"]] == [["team:a"]]


async def test_probes_answer() -> None:
    """/healthz says the process is alive; /readyz that a query service answers."""
    async with gateway() as (_, http):
        assert ok(await http.get("/healthz")) == {"status": "alive"}
        assert ok(await http.get("/readyz"))["status"] == "ready"


async def test_the_docs_page_works_offline() -> None:
    """/docs references only the gateway's own files, which it serves, and the schema."""
    async with gateway() as (_, http):
        page = await http.get("/docs")
        assert page.status_code == 200
        assert "http://" not in page.text and "https://" not in page.text
        assert "//" not in page.text.replace("<!--", "").split("<script>")[-1].split("url:")[0]
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
            assert f"/docs-assets/{asset}" in page.text
            served = await http.get(f"/docs-assets/{asset}")
            assert served.status_code == 200 and len(served.content) > 1000
        assert '"validatorUrl": null' in page.text


async def test_openapi_is_built_from_the_view_models() -> None:
    """/openapi.json describes the reads with the query service's view models."""
    async with gateway() as (_, http):
        schema = ok(await http.get("/openapi.json"))
    schemas = schema["components"]["schemas"]
    for model in ("RunView", "TaskView", "StepView", "ArtifactView", "FlowSummary", "Written"):
        assert model in schemas
    run = schema["paths"]["/api/v1/runs/{flow}/{run_id}"]["get"]
    assert run["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunView"
    }


async def test_runs_and_runs_frame_take_the_same_filters() -> None:
    """GET /runs and GET /runs-frame document the same filter parameters (names, types,
    descriptions, defaults), in the same order; /runs adds only its page's."""
    async with gateway() as (_, http):
        schema = ok(await http.get("/openapi.json"))
    runs = schema["paths"]["/api/v1/runs"]["get"]["parameters"]
    frame = schema["paths"]["/api/v1/runs-frame"]["get"]["parameters"]
    page = {"page_size", "cursor"}
    assert [p for p in runs if p["name"] not in page] == frame
    assert {p["name"] for p in runs} - {p["name"] for p in frame} == page
    names = [p["name"] for p in frame]
    assert names[:3] == ["flow", "tag", "any_tag"] and names[-3:] == [
        "after",
        "after_points",
        "namespace",
    ]
    where = next(p for p in frame if p["name"] == "where")
    assert where["schema"]["default"] == [] and "summary.acc > 0.9" in where["description"]


async def test_metrics_count_requests_queries_and_the_replica() -> None:
    """/metrics counts requests by route template and status, times queries by endpoint, and
    reports the replica's applied sequence, lag and events applied."""
    async with gateway() as (client, http):
        last = await _populate(client)
        await client.run("Train/1", after=last)
        assert (await http.get("/api/v1/runs/Train/1")).status_code == 200
        assert (await http.get("/api/v1/runs/Nope/1")).status_code == 404
        text = (await http.get("/metrics")).text
        status = await client.status()
    route = 'route="/api/v1/runs/{flow}/{run_id}"'
    assert f'runstate_http_requests_total{{method="GET",{route},status="200"}} 1.0' in text
    assert f'runstate_http_requests_total{{method="GET",{route},status="404"}} 1.0' in text
    assert 'runstate_query_duration_seconds_count{endpoint="get"} 2.0' in text
    assert f"runstate_projector_applied_sequence {float(status['applied'])}" in text
    assert f"runstate_projector_events_applied_total {float(status['events_applied'])}" in text
    assert "runstate_projector_lag_events 0.0" in text
    assert "runstate_query_service_up 1.0" in text
    assert "runstate_feeds 0.0" in text
