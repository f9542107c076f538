"""The gateway's hot paths: watch streams fed through outboxes, and reads that pass the
query service's bytes through unchanged."""

from __future__ import annotations

from functools import partial

import anyio
import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runstate.client.testing import in_memory
from runstate.client.web import create_app, serve
from runstate.client.web._live import Channel, Outbox
from runstate.client.web._passthrough import result_bytes, view_bytes
from runstate.client.web._writes import Written
from runstate.engine._names import parse_pathspec
from runstate.projections._views import RunView, TaskView

pytestmark = pytest.mark.anyio

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


# -- passing the query service's bytes through ------------------------------------------


@given(JSON)
def test_a_result_is_cut_out_of_the_reply_as_the_service_frames_it(value: object) -> None:
    raw = orjson.dumps(value)
    assert result_bytes(b'{"result":' + raw + b"}") == raw
    # any other framing is decoded, not cut
    assert orjson.loads(result_bytes(b'{ "result": ' + raw + b" }")) == value


@given(JSON)
def test_a_view_is_cut_out_of_a_get_reply_of_its_kind(value: object) -> None:
    raw = orjson.dumps(value)
    assert view_bytes(b'{"result":{"kind":"run","view":' + raw + b"}}", "run") == raw
    spaced = b'{"result": {"kind": "run", "view": ' + raw + b"}}"
    assert orjson.loads(view_bytes(spaced, "run")) == value


async def test_rest_reads_passed_through_are_the_views_the_client_reads() -> None:
    """A run, a task and a page of runs: valid views, equal to what the client reads."""
    async with in_memory() as client:
        run = await client.create_run("Train", tags=["a"], parameters={"lr": 0.1})
        task = await run.create_task("start", "1", start=True)
        assert task.receipt is not None
        after = {"after": task.receipt.sequence}
        transport = httpx.ASGITransport(app=create_app(client))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            got_run = await http.get(f"/api/v1/runs/{run.pathspec}", params=after)
            got_task = await http.get(
                f"/api/v1/runs/{run.pathspec}/steps/start/tasks/1", params=after
            )
            page = await http.get("/api/v1/runs", params={"flow": "Train", "tag": "a"})
        read_run = await client.run(run.pathspec)
        read_task = await client.task(task.pathspec)
    assert got_run.headers["etag"] == f'"{run.version}"'
    assert got_task.headers["etag"] == f'"{task.version}"'
    assert RunView.model_validate_json(got_run.content) == read_run.view
    assert TaskView.model_validate_json(got_task.content) == read_task.view
    items = orjson.loads(page.content)["items"]
    assert [RunView.model_validate(item) for item in items] == [read_run.view]


# -- outboxes ---------------------------------------------------------------------------


async def test_an_outbox_hands_its_frames_over_in_one_body() -> None:
    outbox = Outbox(3)
    assert outbox.put(b"a") and outbox.put(b"b") and outbox.put(b"c")
    assert not outbox.put(b"d")  # full: the channel drops this client
    await outbox.wait()  # returns at once: there is something to write
    assert outbox.take() == b"abc"
    assert outbox.put(b"e")
    assert outbox.take() == b"e"


async def test_a_waiting_outbox_wakes_for_a_frame_and_for_its_close() -> None:
    outbox = Outbox(10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(outbox.wait)
        await anyio.wait_all_tasks_blocked()
        outbox.put(b"x")
    assert outbox.take() == b"x"
    async with anyio.create_task_group() as tg:
        tg.start_soon(outbox.wait)
        await anyio.wait_all_tasks_blocked()
        outbox.close()
    assert outbox.closed and not outbox.frames


async def test_a_channel_drops_a_client_that_fell_behind_and_serves_the_others() -> None:
    async with in_memory() as client:
        channel = Channel(client, parse_pathspec("Train/1"), {})
        slow, fast = Outbox(2), Outbox(10)
        channel._subscribers.update({slow: 0, fast: 0, Outbox(10): 5})
        for seq in (1, 2, 3):
            channel._broadcast(seq, b"m%d" % seq)
        assert slow.closed and slow not in channel._subscribers
        assert slow.take() == b"m1m2"  # what it had: it resumes after m2
        assert fast.take() == b"m1m2m3" and not fast.closed
        late = [outbox for outbox in channel._subscribers if outbox is not fast]
        assert late[0].take() == b""  # it had up to 5: nothing sent twice


async def test_many_streams_of_one_run_each_get_every_change_once_in_order() -> None:
    """Twenty browsers on one run over a real socket: the snapshot, then each change once."""
    async with in_memory() as client, anyio.create_task_group() as tg:
        run = await client.create_run("Train")
        url = await tg.start(partial(serve, client, port=0, keepalive=5))
        got: dict[int, list[int]] = {}
        opened = anyio.Event()

        async def browser(http: httpx.AsyncClient, me: int) -> None:
            ids = got.setdefault(me, [])
            async with http.stream("GET", f"/api/v1/watch/{run.pathspec}") as response:
                async for line in response.aiter_lines():
                    if line.startswith("id: "):
                        ids.append(int(line[4:]))
                        if sum(map(len, got.values())) == 20:
                            opened.set()
                        if len(ids) == 4:
                            return

        limits = httpx.Limits(max_connections=30)
        async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as http:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as browsers:
                    for me in range(20):
                        browsers.start_soon(browser, http, me)
                    await opened.wait()
                    sequences = [(await run.add_tags(f"t{i}")).sequence for i in range(3)]
        tg.cancel_scope.cancel()
    assert len(got) == 20
    for ids in got.values():
        assert ids[1:] == sequences and ids[0] < sequences[0]


async def test_a_write_answers_its_written_model_as_pydantic_would_encode_it() -> None:
    async with in_memory() as client:
        transport = httpx.ASGITransport(app=create_app(client))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            created = await http.post("/api/v1/runs", json={"flow": "Train"})
            run = created.json()["pathspec"]
            task = await http.post(f"/api/v1/runs/{run}/tasks", json={"step": "start"})
    for answer in (created, task):
        assert answer.status_code == 201, answer.text
        assert (
            answer.content == Written.model_validate_json(answer.content).model_dump_json().encode()
        )
    assert task.json()["attempt"] == 0 and created.json()["attempt"] is None
