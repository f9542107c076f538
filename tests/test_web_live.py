"""Server-sent events over a real socket: the watch and event streams, resumed with
Last-Event-ID with no gap and no repeat, one feed per subject for every browser, and the
gateway over a real nats-server."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from runstate.client import Client, RunState, connect
from runstate.client.testing import in_memory
from runstate.client.web import serve
from runstate.client.web._server import _bind

pytestmark = pytest.mark.anyio


@dataclass
class Message:
    id: int | None
    event: str
    data: Any


@asynccontextmanager
async def served(client: Client) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway over ``client`` on a free loopback port, and an HTTP client of it."""
    async with anyio.create_task_group() as tg:
        url = await tg.start(partial(serve, client, port=0, keepalive=0.2))
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            yield http
        tg.cancel_scope.cancel()


async def messages(response: httpx.Response) -> AsyncIterator[Message]:
    """The SSE messages of a streaming response (comments and retry lines skipped)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "event" in fields:
                raw_id = fields.get("id")
                yield Message(
                    int(raw_id) if raw_id is not None else None,
                    fields["event"],
                    orjson.loads(fields["data"]),
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


async def take(response: httpx.Response, count: int) -> list[Message]:
    got: list[Message] = []
    async for message in messages(response):
        got.append(message)
        if len(got) == count:
            break
    return got


async def test_a_watch_stream_sends_the_snapshot_then_each_commit() -> None:
    """The first message is the snapshot; each later commit of the run is one change whose
    id is its sequence and whose views are the run after it."""
    async with in_memory() as client, served(client) as http:
        run = await client.create_run("Train")
        with anyio.fail_after(20):
            async with http.stream("GET", "/api/v1/watch/Train/1") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                stream = messages(response)
                snapshot = await anext(stream)
                assert snapshot.event == "snapshot" and snapshot.id == 1
                assert snapshot.data["runs"][0]["state"] == "pending"
                started = await run.start()
                task = await run.create_task("train", start=True)
                change = await anext(stream)
                assert change.event == "change" and change.id == started.sequence
                assert change.data["changes"][0]["runs"][0]["state"] == "running"
                change = await anext(stream)
                assert task.receipt is not None and change.id == task.receipt.sequence
                events = [c["event"]["type"] for c in change.data["changes"]]
                assert events == ["task.created", "task.state_changed"]


async def test_browsers_on_one_run_share_one_feed_which_ends_when_they_go() -> None:
    """Twenty streams of one run share one channel, one watch of one feed (as /metrics
    says too); each gets the change; when they disconnect, the feed is closed."""
    async with in_memory() as client, served(client) as http:
        run = await client.create_run("Train")
        feeds: dict[str, Any] = client.__dict__["_feeds"]
        got: list[int | None] = []
        opened = anyio.Event()
        streams = 0

        async def browser() -> None:
            async with http.stream("GET", "/api/v1/watch/Train/1") as response:
                stream = messages(response)
                await anext(stream)  # the snapshot
                nonlocal streams
                streams += 1
                if streams == 20:
                    opened.set()
                got.append((await anext(stream)).id)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(browser)
                await opened.wait()
                assert len(feeds) == 1
                scraped = (await http.get("/metrics")).text
                assert 'runstate_sse_clients{kind="watch"} 20.0' in scraped
                assert "runstate_feeds 1.0" in scraped and "runstate_watchers 1.0" in scraped
                receipt = await run.start()
            assert got == [receipt.sequence] * 20
            for _ in range(1000):  # each disconnect leaves the feed; the last one closes it
                if not feeds:
                    break
                await anyio.sleep(0.02)
            assert not feeds


async def test_an_idle_stream_gets_keep_alive_comments() -> None:
    """With nothing to send, the stream sends a comment that proxies see as traffic."""
    async with in_memory() as client, served(client) as http:
        await client.create_run("Train")
        with anyio.fail_after(20):
            async with http.stream("GET", "/api/v1/watch/Train/1") as response:
                async for line in response.aiter_lines():
                    if line.startswith(": keep-alive"):
                        break


async def test_a_bad_pathspec_is_a_problem_before_any_stream() -> None:
    """A malformed pathspec answers 422 as a problem, not an event stream."""
    async with in_memory() as client, served(client) as http:
        response = await http.get("/api/v1/watch/Train/1/a/b/c/d")
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"


# -- with a real nats-server -----------------------------------------------------------


@asynccontextmanager
async def real(nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[Client, httpx.AsyncClient]]:
    """A client with an in-process replica on a real nats-server, and its gateway."""
    async with connect(nats_url, projector=True, data_dir=tmp_path) as client:
        async with served(client) as http:
            yield client.with_namespace(None), http


async def test_reads_and_writes_over_a_real_nats(nats_url: str, tmp_path: Path) -> None:
    """Writes over HTTP are read by the client and the reads equal its; a stale If-Match
    is 412 and a repeated Idempotency-Key returns the same run."""
    async with real(nats_url, tmp_path) as (client, http):
        body = {"flow": "Train", "parameters": {"lr": 0.1}}
        key = {"Idempotency-Key": "nightly-2026-12-06"}
        created = await http.post("/api/v1/runs", json=body, headers=key)
        assert created.status_code == 201, created.text
        again = await http.post("/api/v1/runs", json=body, headers=key)
        assert again.json()["pathspec"] == created.json()["pathspec"] == "Train/1"
        version = created.headers["etag"]
        started = await http.post(
            "/api/v1/runs/Train/1/transitions",
            json={"state": "running"},
            headers={"If-Match": version},
        )
        assert started.status_code == 200, started.text
        stale = await http.post(
            "/api/v1/runs/Train/1/transitions",
            json={"state": "completed"},
            headers={"If-Match": version},
        )
        assert stale.status_code == 412
        assert stale.json()["current_version"] == started.json()["version"]
        sequence = started.json()["sequence"]
        run = await client.run("Train/1", after=sequence)
        assert run.state is RunState.RUNNING
        read = await http.get("/api/v1/runs/Train/1", params={"after": sequence})
        assert read.json() == orjson.loads(run.view.model_dump_json())
        assert read.headers["etag"] == f'"{started.json()["version"]}"'
        page = await http.get("/api/v1/runs", params={"flow": "Train"})
        assert [r["pathspec"] for r in page.json()["items"]] == ["Train/1"]


async def _commits_of(client: Client, pathspec: str) -> list[int]:
    async with client.events(pathspec, follow=False) as records:
        return sorted({record.sequence async for record in records})


async def test_the_event_stream_resumes_after_a_dropped_connection(
    nats_url: str, tmp_path: Path
) -> None:
    """Dropped after some commits, while more are written, and resumed with Last-Event-ID:
    the two connections together deliver every commit of the run once, in order."""
    async with real(nats_url, tmp_path) as (client, http):
        run = await client.create_run("Train")
        await run.start()
        with anyio.fail_after(30):
            async with http.stream("GET", "/api/v1/events/Train/1") as response:
                before = await take(response, 2)
            # the connection is gone; the run goes on
            for _ in range(5):
                task = await run.create_task("work", start=True)
                await task.complete()
            last = await run.complete()
            resumed_from = before[-1].id
            headers = {"Last-Event-ID": str(resumed_from)}
            after: list[Message] = []
            async with http.stream("GET", "/api/v1/events/Train/1", headers=headers) as response:
                async for message in messages(response):
                    after.append(message)
                    if message.id == last.sequence:
                        break
        ids = [m.id for m in before + after]
        assert all(m.event == "commit" for m in before + after)
        assert ids == await _commits_of(client, "Train/1")
        assert len(set(ids)) == len(ids)


async def test_the_watch_stream_resumes_after_a_dropped_connection(
    nats_url: str, tmp_path: Path
) -> None:
    """A watch dropped and resumed with Last-Event-ID sends no commit twice and misses none:
    ids only grow, every commit after the resumed snapshot comes as a change, and the last
    view is the replica's."""
    async with real(nats_url, tmp_path) as (client, http):
        run = await client.create_run("Train")
        with anyio.fail_after(30):
            async with http.stream("GET", "/api/v1/watch/Train/1") as response:
                stream = messages(response)
                first = [await anext(stream)]
                await run.start()
                first.append(await anext(stream))
            tasks = [await run.create_task("work", start=True) for _ in range(3)]
            headers = {"Last-Event-ID": str(first[-1].id)}
            resumed: list[Message] = []
            async with http.stream("GET", "/api/v1/watch/Train/1", headers=headers) as response:
                stream = messages(response)
                resumed.append(await anext(stream))
                for task in tasks:
                    await task.complete()
                last = await run.complete()
                async for message in stream:
                    resumed.append(message)
                    if message.id == last.sequence:
                        break
        ids = [m.id for m in first + resumed]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        # while it was away the state moved on: one snapshot brings it up to date
        assert resumed[0].event == "snapshot"
        covered = resumed[0].id
        assert covered is not None
        changes = [m.id for m in resumed[1:]]
        commits = await _commits_of(client, "Train/1")
        assert changes == [seq for seq in commits if seq > covered]
        final = resumed[-1].data["changes"][-1]["runs"][0]
        stored = await client.run("Train/1", after=last.sequence)
        assert final == orjson.loads(stored.view.model_dump_json())


def test_the_gateway_listens_on_a_socket_asyncio_sets_nodelay_on() -> None:
    """The listening socket says it is TCP, so asyncio sets TCP_NODELAY on each connection
    (else a keep-alive response waits for the client's delayed ACK)."""
    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
