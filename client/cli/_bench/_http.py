"""The ``http`` benchmark: the HTTP gateway's reads, live streams and writes.

The gateway runs in this process on a loopback port, over the benchmark's
client; requests go through httpx with keep-alive connections. Figures: one
run read, the first page of runs by tag at scale, the web view's runs and
run pages, an append until one SSE
client has it, the same for every one of many SSE clients on one run, and
transitions per second from writers that speak only HTTP.
"""

from __future__ import annotations

import random
import time
from functools import partial
from typing import Any

import anyio

from runstate.client.cli._bench._harness import (
    _client,
    _Place,
    _replica,
    _say,
    _server_version,
    _wait_applied,
)
from runstate.client.cli._bench._params import FLOW, BenchParams
from runstate.client.cli._bench._reads import _time_calls, _write_scale
from runstate.client.cli._bench._report import Figure, Report, Target, _ms, quantile
from runstate.client.cli._bench._workload import write_workload

NOTE = (
    "the gateway and the HTTP clients share this process and its event loop (and the "
    "machine with NATS and the replica), so each figure includes both ends"
)


async def bench_http(place: _Place, p: BenchParams, report: Report) -> None:
    """Reads, SSE latency and fan-out, and HTTP writes, through one gateway."""
    import httpx  # the web extra and httpx: loaded only for this benchmark

    from runstate.client.web import serve

    report.notes.append(NOTE)
    async with _replica(place, p.projector), _client(place) as client:
        report.server_version = _server_version(client.nc)
        _say(f"http: writing {p.runs} workload runs")
        result = await write_workload(client.writer, p.runs, p.tasks, max(p.writers))
        runs = result.run_pathspecs
        last = result.last_sequence
        if p.scale_runs > 0:
            _say(f"http: writing {p.scale_runs:,} runs with pipelined appends")
            scale_runs, _, last = await _write_scale(client, p, first_id=1_000_000)
            random.seed(7)
            runs = random.sample(scale_runs, min(len(scale_runs), 5000))
        await _wait_applied(client, last)
        total = p.runs + max(p.scale_runs, 0)
        limits = httpx.Limits(max_connections=p.sse_clients + p.http_writers + 16)
        async with anyio.create_task_group() as tg:
            url = await tg.start(partial(serve, client, port=0))
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
                await _reads(http, p, report, runs, total)
                await _sse_latency(client, http, p, report)
                await _sse_fanout(client, http, p, report)
                await _writes(http, p, report)
            tg.cancel_scope.cancel()


def _figure(report: Report, key: str, label: str, samples: list[float], target: float) -> None:
    report.add(Figure(key, label, "ms", _ms(samples), target=Target("median", "<", target)))
    _say(f"http: {label}: p50 {quantile(_ms(samples), 0.5):.2f} ms")


async def _reads(http: Any, p: BenchParams, report: Report, runs: list[str], total: int) -> None:
    async def get_run(i: int) -> None:
        response = await http.get(f"/api/v1/runs/{runs[i % len(runs)]}")
        assert response.status_code == 200, response.text

    async def by_tag(i: int) -> None:
        response = await http.get(
            "/api/v1/runs", params={"flow": FLOW, "tag": "production", "page_size": 10}
        )
        assert response.status_code == 200 and response.json()["items"], response.text

    _figure(
        report, "get_run_ms", f"GET one run (R={total:,})", await _time_calls(p.calls, get_run), 2.0
    )
    _figure(
        report,
        "runs_by_tag_ms",
        f"GET the first page of runs tagged production (R={total:,})",
        await _time_calls(p.calls, by_tag),
        3.0,
    )

    # The web view's pages: HTML rendered from the same reads (no target of the issue's).
    async def runs_page(i: int) -> None:
        response = await http.get(f"/flows/{FLOW}", params={"tag": "production"})
        assert response.status_code == 200 and "data-run=" in response.text, response.text

    async def run_page(i: int) -> None:
        response = await http.get(f"/runs/{runs[i % len(runs)]}")
        assert response.status_code == 200, response.text

    for key, label, call in [
        ("page_runs_ms", f"GET the runs page of a tag, 50 rows (R={total:,})", runs_page),
        ("page_run_ms", f"GET a run's page (R={total:,})", run_page),
    ]:
        samples = await _time_calls(p.calls, call)
        report.add(Figure(key, label, "ms", _ms(samples)))
        _say(f"http: {label}: p50 {quantile(_ms(samples), 0.5):.2f} ms")


async def _messages(response: Any, arrived: Any) -> None:
    """Hand each SSE message's id to ``arrived`` with the time it came."""
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            arrived(int(line[4:]), time.perf_counter())


async def _sse_latency(client: Any, http: Any, p: BenchParams, report: Report) -> None:
    """One SSE client of a run: from before each append until its change arrives."""
    run = await client.create_run(FLOW, tags=["sse"])
    send, receive = anyio.create_memory_object_stream[tuple[int, float]](p.changes + 10)
    samples: list[float] = []
    with send, receive:
        await _measure_one(run, http, p, send, receive, samples)
    _figure(report, "sse_append_ms", "append until one SSE client has it", samples, 5.0)


async def _measure_one(
    run: Any, http: Any, p: BenchParams, send: Any, receive: Any, samples: list[float]
) -> None:
    async with (
        anyio.create_task_group() as tg,
        http.stream("GET", f"/api/v1/watch/{run.pathspec}") as response,
    ):
        tg.start_soon(_messages, response, lambda seq, at: send.send_nowait((seq, at)))
        await receive.receive()  # the snapshot
        for i in range(p.changes):
            started = time.perf_counter()
            receipt = await run.add_tags(f"c{i}")
            while True:
                seq, at = await receive.receive()
                if seq >= receipt.sequence:
                    break
            samples.append(at - started)
        tg.cancel_scope.cancel()


async def _sse_fanout(client: Any, http: Any, p: BenchParams, report: Report) -> None:
    """``sse_clients`` SSE clients of one run: from before each append until each has it."""
    run = await client.create_run(FLOW, tags=["fanout"])
    clients = p.sse_clients
    arrivals: dict[int, list[float]] = {}
    ready = anyio.Event()
    opened = 0
    changes = max(1, min(p.changes, 20))

    everyone = anyio.Event()
    awaited = -1

    def arrived(seq: int, at: float) -> None:
        nonlocal everyone
        times = arrivals.setdefault(seq, [])
        times.append(at)
        if seq == awaited and len(times) == clients:
            everyone.set()

    async def browser() -> None:
        nonlocal opened
        async with http.stream("GET", f"/api/v1/watch/{run.pathspec}") as response:
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("id: "):
                    break  # the snapshot
            opened += 1
            if opened == clients:
                ready.set()
            async for line in lines:
                if line.startswith("id: "):
                    arrived(int(line[4:]), time.perf_counter())

    samples: list[float] = []
    _say(f"http: opening {clients} SSE clients on one run")
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(browser)
        with anyio.fail_after(300):
            await ready.wait()
            for i in range(changes):
                everyone = anyio.Event()
                started = time.perf_counter()
                receipt = await run.add_tags(f"f{i}")
                awaited = receipt.sequence
                if len(arrivals.get(awaited, ())) < clients:
                    await everyone.wait()
                samples += [at - started for at in arrivals[awaited]]
        tg.cancel_scope.cancel()
    report.add(
        Figure(
            "sse_fanout_ms",
            f"append until each of {clients:,} SSE clients on one run has it",
            "ms",
            _ms(samples),
            target=Target("p95", "<", 50.0),
        )
    )
    _say(f"http: {clients} SSE clients: p95 {quantile(_ms(samples), 0.95):.2f} ms")


async def _writes(http: Any, p: BenchParams, report: Report) -> None:
    """``http_writers`` connections drive tasks running then completed, over HTTP only."""
    created = await http.post("/api/v1/runs", json={"flow": FLOW, "tags": ["http-writers"]})
    run = created.json()["pathspec"]
    await http.post(
        f"/api/v1/runs/{run}/transitions", json={"state": "running"}, headers={"If-Match": "*"}
    )
    per_writer = max(1, p.calls // p.http_writers)
    samples: list[float] = []
    for round_ in range(3):
        tasks: list[list[tuple[str, str]]] = []
        for w in range(p.http_writers):
            mine = []
            for i in range(per_writer):
                response = await http.post(
                    f"/api/v1/runs/{run}/tasks", json={"step": f"s{round_}", "task_id": f"{w}-{i}"}
                )
                written = response.json()
                mine.append((written["pathspec"], f'"{written["version"]}"'))
            tasks.append(mine)

        async def writer(mine: list[tuple[str, str]]) -> None:
            for pathspec, version in mine:
                flow, run_id, step, task_id = pathspec.split("/")
                url = f"/api/v1/runs/{flow}/{run_id}/steps/{step}/tasks/{task_id}/transitions"
                for state in ("running", "completed"):
                    response = await http.post(
                        url, json={"state": state}, headers={"If-Match": version}
                    )
                    assert response.status_code == 200, response.text
                    version = response.headers["etag"]

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for mine in tasks:
                tg.start_soon(writer, mine)
        elapsed = time.perf_counter() - started
        samples.append(2 * per_writer * p.http_writers / elapsed)
    report.add(
        Figure(
            "http_transitions_per_s",
            f"task transitions/s over HTTP ({p.http_writers} keep-alive connections, If-Match)",
            "/s",
            samples,
            higher_is_better=True,
            target=Target("median", ">=", 2000.0),
        )
    )
    _say(f"http: writers: p50 {quantile(samples, 0.5):,.0f} transitions/s")
