"""The ``http`` benchmark: the HTTP gateway's reads, live streams and writes.

The gateway runs in a process of its own, as ``runstate web --nats URL``
runs it, over the benchmark's NATS and replica; its clients run in other
processes (``_http_load``): the reads in the benchmark's process, the SSE
clients and the writers in client processes holding many keep-alive
connections each. Figures: one run read, the first page of runs by tag at
scale, the web view's runs and run pages, an append until one SSE client has
it, the same for every one of many SSE clients on one run, and transitions
per second from writers that speak only HTTP.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from runstate.client.cli._bench._harness import (
    _child,
    _client,
    _Place,
    _replica,
    _say,
    _server_version,
    _wait_applied,
    child_credentials,
)
from runstate.client.cli._bench._http_load import Connection
from runstate.client.cli._bench._params import FLOW, BenchParams
from runstate.client.cli._bench._reads import _time_calls, _write_scale
from runstate.client.cli._bench._report import Figure, Report, Target, _ms, quantile
from runstate.client.cli._bench._turns import take_turn
from runstate.client.cli._bench._workload import write_workload
from runstate.engine.errors import ConfigurationError

#: SSE streams held by one client process
_STREAMS_PER_PROCESS = 250
#: writers (connections) driven by one client process
_WRITERS_PER_PROCESS = 8
#: the longest line a client process prints (its arrival times)
_LONGEST_LINE = 256 * 1024 * 1024

_Child = tuple[Process, BufferedByteReceiveStream]


def _note(p: BenchParams) -> str:
    sse = math.ceil(p.sse_clients / _STREAMS_PER_PROCESS)
    writers = math.ceil(p.http_writers / _WRITERS_PER_PROCESS)
    return (
        "the gateway runs in its own process (as runstate web); the reads come from the "
        f"benchmark's process, the {p.sse_clients:,} SSE clients from {sse} client processes "
        f"and the {p.http_writers} writers from {writers}, plain asyncio over keep-alive "
        "connections; all share the machine with NATS and the replica"
    )


async def bench_http(place: _Place, p: BenchParams, report: Report) -> None:
    """Reads, SSE latency and fan-out, and HTTP writes, through one gateway process."""
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise ConfigurationError("bench http needs the web extra: pip install 'runstate[web]'")
    report.notes.append(_note(p))
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
        async with _gateway(place) as url:
            http = await Connection.open(url)
            try:
                await _reads(http, p, report, runs, total)
            finally:
                await http.aclose()
            samples = await _sse_samples(client, place, url, 1, p.changes, "sse")
            _figure(report, "sse_append_ms", "append until one SSE client has it", samples, 5.0)
            await _sse_fanout(client, place, url, p, report)
            await _writes(place, url, p, report)


@contextlib.asynccontextmanager
async def _gateway(place: _Place) -> AsyncIterator[str]:
    """The gateway in a process of its own; its URL."""
    data = place.tmp / "gateway"
    credentials = child_credentials(place, "writer")  # the writer's, on a server with roles
    args = [place.url, place.prefix, str(data), credentials or ""]
    async with _child(place, "_gateway", args, "gateway", 60, 10) as (_, lines):
        with anyio.fail_after(10):
            url = (await lines.receive_until(b"\n", 1000)).decode().strip()
        _say(f"http: the gateway listens on {url}")
        yield url


def _figure(report: Report, key: str, label: str, samples: list[float], target: float) -> None:
    report.add(Figure(key, label, "ms", _ms(samples), target=Target("median", "<", target)))
    _say(f"http: {label}: p50 {quantile(_ms(samples), 0.5):.2f} ms")


async def _reads(
    http: Connection, p: BenchParams, report: Report, runs: list[str], total: int
) -> None:
    async def get_run(i: int) -> None:
        answer = await http.request("GET", f"/api/v1/runs/{runs[i % len(runs)]}")
        assert answer.status == 200 and "etag" in answer.headers, answer.body

    async def by_tag(i: int) -> None:
        answer = await http.request("GET", f"/api/v1/runs?flow={FLOW}&tag=production&page_size=10")
        assert answer.status == 200 and answer.json()["items"], answer.body  # type: ignore[index]

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
        answer = await http.request("GET", f"/flows/{FLOW}?tag=production")
        assert answer.status == 200 and b"data-run=" in answer.body, answer.body

    async def run_page(i: int) -> None:
        answer = await http.request("GET", f"/runs/{runs[i % len(runs)]}")
        assert answer.status == 200, answer.body

    for key, label, call in [
        ("page_runs_ms", f"GET the runs page of a tag, 50 rows (R={total:,})", runs_page),
        ("page_run_ms", f"GET a run's page (R={total:,})", run_page),
    ]:
        samples = await _time_calls(p.calls, call)
        report.add(Figure(key, label, "ms", _ms(samples)))
        _say(f"http: {label}: p50 {quantile(_ms(samples), 0.5):.2f} ms")


def _shares(total: int, per: int) -> list[int]:
    """``total`` split into about equal shares of at most ``per``."""
    parts = math.ceil(total / per)
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def _line(lines: BufferedByteReceiveStream) -> str:
    with anyio.fail_after(120):
        return (await lines.receive_until(b"\n", _LONGEST_LINE)).decode()


async def _sse_samples(
    client: Any, place: _Place, url: str, streams: int, changes: int, tag: str
) -> list[float]:
    """``streams`` SSE clients of one run: from before each of ``changes`` appends (tag
    changes) until each client has its message, in seconds (each client's a sample)."""
    run = await client.create_run(FLOW, tags=[tag])
    started: dict[int, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        children: list[_Child] = []
        for i, share in enumerate(_shares(streams, _STREAMS_PER_PROCESS)):
            name = f"{tag}-clients-{i}"
            child = _child(place, "_sse", [url, run.pathspec, str(share)], name, 300, 10)
            children.append(await stack.enter_async_context(child))
        for i in range(changes):
            await take_turn()
            at = time.monotonic()  # the clients' clock
            receipt = await run.add_tags(f"{tag}{i}")
            started[receipt.sequence] = at
            for _, lines in children:
                while int((await _line(lines)).split()[1]) < receipt.sequence:
                    pass
        samples: list[float] = []
        for process, lines in children:
            assert process.stdin is not None
            await process.stdin.send(b"report\n")
            arrivals: dict[str, list[float]] = orjson.loads(await _line(lines))
            for seq, times in arrivals.items():
                if int(seq) in started:
                    samples += [at - started[int(seq)] for at in times]
    return samples


async def _sse_fanout(client: Any, place: _Place, url: str, p: BenchParams, report: Report) -> None:
    """``sse_clients`` SSE clients of one run: from before each append until each has it."""
    clients = p.sse_clients
    _say(f"http: opening {clients} SSE clients on one run")
    samples = await _sse_samples(client, place, url, clients, max(1, min(p.changes, 20)), "fan")
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


async def _writes(place: _Place, url: str, p: BenchParams, report: Report) -> None:
    """``http_writers`` connections drive tasks running then completed, over HTTP only;
    in each of three rounds every writer moves ``calls`` tasks, in runs of ``tasks``."""
    samples: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        children: list[_Child] = []
        for i, share in enumerate(_shares(p.http_writers, _WRITERS_PER_PROCESS)):
            args = [url, str(share), str(p.calls), str(p.tasks)]
            child = _child(place, "_writers", args, f"writers-{i}", 60, 10)
            children.append(await stack.enter_async_context(child))
        for round_ in range(3):
            for process, _ in children:
                assert process.stdin is not None
                await process.stdin.send(f"round s{round_}\n".encode())
            for _, lines in children:
                assert (await _line(lines)).strip() == "prepared"
            await take_turn()
            for process, _ in children:
                assert process.stdin is not None
                await process.stdin.send(b"go\n")
            done = [(await _line(lines)).split() for _, lines in children]
            first = min(float(words[1]) for words in done)
            last = max(float(words[2]) for words in done)
            samples.append(sum(int(words[3]) for words in done) / (last - first))
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
