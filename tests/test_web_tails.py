"""The gateway's routes for the client's newer reads: runs filtered and sorted by summary and
config values, reads as of a sequence or time, the runs table, run edits, task logs (text,
pages and a live follow) and live metric tails, resumed with Last-Event-ID."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from _web import ok, problem_of
from test_web_live import real, served
from test_web_reads import gateway

from runstate.client import Client, RunState
from runstate.client.testing import in_memory
from runstate.client.web._tails import parse_position
from runstate.engine.errors import BadFilter

pytestmark = pytest.mark.anyio

TASK = "/api/v1/runs/Train/1/steps/train/tasks/1"


def _dump(model: Any) -> Any:
    return orjson.loads(model.model_dump_json())


# -- runs by summary and config --------------------------------------------------------


async def _scored(client: Client) -> int:
    """Four runs of Train with summary.acc and config.lr set; the last write's sequence."""
    sequence = 0
    for i, acc in enumerate([0.5, 0.95, None, 0.91]):
        run = await client.create_run("Train", parameters={"lr": 0.1 / (i + 1)})
        summary = {} if acc is None else {"acc": acc}
        receipt = await client.update_run(run.pathspec, summary=summary, notes=f"run {i}")
        sequence = receipt.sequence
    return sequence


async def test_runs_take_where_conditions_and_summary_sorts() -> None:
    """?where= (repeatable, the client's text) and sort=summary.<key> list what client.runs
    lists; a condition that is not one is a 422 problem."""
    async with gateway() as (client, http):
        last = await _scored(client)
        params: dict[str, Any] = {
            "where": ["summary.acc > 0.9", "config.lr < 0.1"],
            "sort": "-summary.acc",
            "after": last,
        }
        got = ok(await http.get("/api/v1/runs", params=params))
        page = await client.runs(
            where=["summary.acc > 0.9", "config.lr < 0.1"], sort="-summary.acc"
        )
        assert got["items"] == [_dump(run.view) for run in page.items]
        assert [r["pathspec"] for r in got["items"]] == ["Train/2", "Train/4"]
        by_lr = ok(await http.get("/api/v1/runs", params={"sort": "config.lr"}))
        assert [r["pathspec"] for r in by_lr["items"]] == [
            "Train/4",
            "Train/3",
            "Train/2",
            "Train/1",
        ]
        problem_of(await http.get("/api/v1/runs?where=summary.acc >> 1"), 422, "bad_filter")
        problem_of(await http.get("/api/v1/runs?sort=summary."), 422, "bad_filter")


async def test_after_points_waits_for_a_flush_and_excludes_after() -> None:
    """after_points (a flush's receipt) makes the listed summaries include those points;
    with after too it is a 422 problem, as the client takes one after."""
    async with gateway() as (client, http):
        run = await client.create_run("Train")
        await run.log({"loss": 0.25})
        points = await run.flush()
        assert points is not None
        got = ok(await http.get("/api/v1/runs", params={"after_points": points.sequence}))
        page = await client.runs(after=points)
        assert got["items"] == [_dump(r.view) for r in page.items]
        frame = ok(await http.get("/api/v1/runs-frame", params={"after_points": points.sequence}))
        assert frame["data"]["summary.loss"] == [0.25]
        both = {"after_points": points.sequence, "after": 1}
        problem_of(await http.get("/api/v1/runs", params=both), 422, "bad_filter")


# -- as_of -----------------------------------------------------------------------------


async def test_reads_as_of_a_sequence_or_a_time() -> None:
    """as_of on the run, step and task reads (and their lists) answers what the client's
    as_of reads answer; with after, or not a sequence or an aware time, it is a 422."""
    async with gateway() as (client, http):
        run = await client.create_run("Train")
        await run.start()
        task = await run.create_task("train", start=True)
        await task.save(accuracy=0.5)
        then = await client.log.last_sequence(client.subjects.run_all("Train", "1"))
        await task.record_metadata(host="node-1")
        await task.complete()
        receipt = await run.complete()
        await client.run("Train/1", after=receipt)

        past = await client.run("Train/1", as_of=then)
        response = await http.get("/api/v1/runs/Train/1", params={"as_of": then})
        assert ok(response) == _dump(past.view)
        assert "etag" not in response.headers
        assert past.state is RunState.RUNNING
        steps = ok(await http.get("/api/v1/runs/Train/1/steps", params={"as_of": then}))
        assert steps == [_dump(s.view) for s in await past.steps()]
        step = await client.step("Train/1/train", as_of=then)
        got = ok(await http.get("/api/v1/runs/Train/1/steps/train", params={"as_of": then}))
        assert got == _dump(step.view)
        tasks = ok(
            await http.get(
                "/api/v1/runs/Train/1/steps/train/tasks",
                params={"as_of": then, "state": "running"},
            )
        )
        assert tasks == {"items": [_dump(t.view) for t in await step.tasks()], "next_cursor": None}
        past_task = await client.task("Train/1/train/1", as_of=then)
        assert ok(await http.get(TASK, params={"as_of": then})) == _dump(past_task.view)
        metadata = ok(await http.get(TASK + "/metadata", params={"as_of": then}))
        assert "host" not in metadata["by_name"]
        assert ok(await http.get(TASK + "/metadata"))["by_name"]["host"] == "node-1"
        artifacts = ok(await http.get(TASK + "/artifacts", params={"as_of": then}))
        assert [a["name"] for a in artifacts] == ["accuracy"]

        # a time: now is after everything
        now = datetime.now(UTC).isoformat()
        assert (
            ok(await http.get("/api/v1/runs/Train/1", params={"as_of": now}))["state"]
            == "completed"
        )
        for bad in ("yesterday", "2026-12-06T09:30:00", "-3"):
            problem_of(
                await http.get("/api/v1/runs/Train/1", params={"as_of": bad}), 422, "bad_filter"
            )
        both = {"as_of": then, "after": 1}
        problem_of(await http.get("/api/v1/runs/Train/1", params=both), 422, "bad_filter")
        problem_of(await http.get("/api/v1/runs/Train/1", params={"as_of": 0}), 404, "not_found")


# -- the runs table ----------------------------------------------------------------------


async def test_runs_frame_is_the_clients_frame_as_json_columns() -> None:
    """/runs-frame has runs_frame's columns and values, times as ISO strings, durations
    in seconds, filtered by where as the list is."""
    async with gateway() as (client, http):
        last = await _scored(client)
        frame = await client.runs_frame(where=["summary.acc > 0.6"], sort="run_number", after=last)
        got = ok(
            await http.get(
                "/api/v1/runs-frame", params={"where": "summary.acc > 0.6", "sort": "run_number"}
            )
        )
    assert got["columns"] == list(frame.columns)
    assert got["data"]["pathspec"] == ["Train/2", "Train/4"]
    for name in ("pathspec", "state", "user", "config.lr", "summary.acc", "duration"):
        want = [None if value != value else value for value in frame[name].tolist()]
        assert got["data"][name] == want, name
    assert got["data"]["created_at"] == [t.isoformat() for t in frame["created_at"]]


# -- run edits -----------------------------------------------------------------------------


async def test_patch_edits_a_run_as_update_run_does() -> None:
    """PATCH edits name, notes, config and summary in one event and answers its receipt; a
    field left out stays, null clears; an empty edit or a bad field is a 422."""
    async with gateway() as (client, http):
        await client.create_run("Train", parameters={"lr": 0.1})
        edit = {"name": "baseline", "notes": "first", "config": {"lr": 0.2}, "summary": {"acc": 1}}
        written = ok(await http.patch("/api/v1/runs/Train/1", json=edit))
        assert written["pathspec"] == "Train/1" and written["sequence"] >= 1
        assert written["version"] == written["sequence"]
        run = await client.run("Train/1", after=written["sequence"])
        assert (run.view.display_name, run.view.notes) == ("baseline", "first")
        assert run.view.config["lr"] == 0.2
        assert await run.summary() == {"acc": 1}
        cleared = ok(await http.patch("/api/v1/runs/Train/1", json={"notes": None}))
        run = await client.run("Train/1", after=cleared["sequence"])
        assert (run.view.display_name, run.view.notes) == ("baseline", None)
        problem_of(await http.patch("/api/v1/runs/Train/1", json={}), 422, "invalid_event")
        problem_of(await http.patch("/api/v1/runs/Train/1", json={"color": 1}), 422, "bad_request")
        problem_of(await http.patch("/api/v1/runs/Train/9", json={"name": "x"}), 404, "not_found")


# -- logs ----------------------------------------------------------------------------------


async def _logged(client: Client, count: int) -> None:
    """Train/1's task train/1 with ``count`` stdout lines and one stderr line, stored."""
    run = await client.create_run("Train")
    task = await run.create_task("train", start=True)
    await task.write_log("".join(f"line {i}\n" for i in range(count)))
    await task.write_log("oops\n", stream="stderr")
    receipt = await task.flush_logs()
    assert receipt is not None


async def test_log_text_and_pages_of_lines() -> None:
    """/logs is task.logs(); /log-lines pages (next_after) walk task.log_lines() exactly;
    a bad stream or position is a 422."""
    async with gateway() as (client, http):
        await _logged(client, 5)
        task = await client.task("Train/1/train/1")
        response = await http.get(TASK + "/logs")
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text == await task.logs() == "".join(f"line {i}\n" for i in range(5))
        assert (await http.get(TASK + "/logs?stream=stderr")).text == "oops\n"
        lines = [line async for line in task.log_lines()]
        got: list[dict[str, Any]] = []
        after = "0"
        pages = 0
        while after is not None:
            page = ok(await http.get(TASK + "/log-lines", params={"after": after, "limit": 2}))
            got += page["items"]
            after = page["next_after"]
            pages += 1
        assert pages == 3
        assert got == [
            {
                "sequence": x.sequence,
                "index": x.index,
                "time": x.time,
                "stream": x.stream,
                "text": x.text,
                "position": f"{x.sequence}:{x.index}",
            }
            for x in lines
        ]
        only_err = ok(await http.get(TASK + "/log-lines", params={"stream": "stderr"}))
        assert [line["text"] for line in only_err["items"]] == ["oops\n"]
        after_second = ok(await http.get(TASK + "/log-lines", params={"after": got[1]["position"]}))
        assert after_second["items"] == got[2:]
        problem_of(await http.get(TASK + "/logs?stream=stdin"), 422, "bad_filter")
        problem_of(await http.get(TASK + "/log-lines?after=1:x"), 422, "bad_filter")
        problem_of(await http.get(TASK + "/log-lines/follow?stream=both"), 422, "bad_filter")
        problem_of(
            await http.get("/api/v1/runs/Train/1/steps/train/tasks/7/logs"), 404, "not_found"
        )


def test_positions_parse_back() -> None:
    """A position string is sequence:index, or a batch's sequence; nothing else."""
    assert parse_position("12:3") == (12, 3)
    assert parse_position("12") == 12
    for bad in ("", ":", "1:", "a:1", "1:2:3", "-1:0"):
        with pytest.raises(BadFilter):
            parse_position(bad)


# -- server-sent events ------------------------------------------------------------------


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str | None, str, Any]]:
    """(id, event, data) of each SSE message of a response (comments skipped)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "event" in fields:
                yield fields.get("id"), fields["event"], orjson.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


async def _take(
    http: httpx.AsyncClient, path: str, count: int, headers: dict[str, str] | None = None
) -> list[tuple[str | None, str, Any]]:
    got: list[tuple[str | None, str, Any]] = []
    with anyio.fail_after(20):
        async with http.stream("GET", path, headers=headers) as response:
            assert response.status_code == 200
            async for message in _events(response):
                got.append(message)
                if len(got) == count:
                    break
    return got


async def _follow_and_resume(client: Client, http: httpx.AsyncClient) -> None:
    """Follow the lines, drop the connection after three, write more, resume with the
    third's id: the rest and the new ones, once each, in order."""
    await _logged(client, 5)
    path = TASK + "/log-lines/follow?stream=stdout"
    first = await _take(http, path, 3)
    task = await client.task("Train/1/train/1")
    lines = [line async for line in task.log_lines("stdout")]
    assert [(i, e, d["text"]) for i, e, d in first] == [
        (f"{x.sequence}:{x.index}", "line", x.text) for x in lines[:3]
    ]
    handle = await client.writer.task("Train/1/train/1")
    await handle.write_log("late 0\nlate 1\n")
    assert await handle.flush_logs() is not None
    rest = await _take(http, path, 4, {"Last-Event-ID": first[-1][0] or ""})
    assert [d["text"] for _, _, d in rest] == ["line 3\n", "line 4\n", "late 0\n", "late 1\n"]
    assert [i for i, _, _ in rest] == [d["position"] for _, _, d in rest]


async def test_a_log_follow_resumes_after_the_last_event_id() -> None:
    """The follow's ids are line positions; Last-Event-ID resumes right after one."""
    async with in_memory() as client, served(client) as http:
        await _follow_and_resume(client.with_namespace(None), http)


async def test_a_log_follow_resumes_over_a_real_nats(nats_url: str, tmp_path: Path) -> None:
    """The same resume, the lines stored in a real nats-server's log lines stream."""
    async with real(nats_url, tmp_path) as (client, http):
        await _follow_and_resume(client, http)


async def test_metric_tails_of_runs_and_tasks_resume() -> None:
    """/metrics/{pathspec}/follow sends follow_history's rows (NaN tagged), ids their
    positions; Last-Event-ID resumes after one; live rows follow the stored ones."""
    async with in_memory() as client, served(client) as http:
        run = await client.create_run("Train")
        task = await run.create_task("train", start=True)
        for step in range(3):
            await run.log({"loss": 1 / (step + 1)})
            await task.log({"acc": step / 3, "bad": float("nan")})
        await run.flush()
        await task.flush()
        expected = []
        async with (await client.run("Train/1")).follow_history() as rows:
            async for row in rows:
                expected.append(row)
                if len(expected) == 3:
                    break
        first = await _take(http, "/api/v1/metrics/Train/1/follow", 2)
        assert [(i, e) for i, e, _ in first] == [
            (f"{r.sequence}:{r.index}", "row") for r in expected[:2]
        ]
        assert first[0][2]["row"]["loss"] == 1.0 and first[0][2]["attempt"] is None
        await run.log({"loss": 0.1})
        await run.flush()
        rest = await _take(
            http, "/api/v1/metrics/Train/1/follow", 2, {"Last-Event-ID": first[-1][0] or ""}
        )
        assert [d["row"]["loss"] for _, _, d in rest] == [expected[2]["loss"], 0.1]

        task_rows = await _take(http, "/api/v1/metrics/Train/1/train/1/follow?keys=bad", 3)
        assert [d["row"]["bad"] for _, _, d in task_rows] == [{"$f": "nan"}] * 3
        assert "acc" not in task_rows[0][2]["row"] and task_rows[0][2]["attempt"] == 0
        resumed = await _take(
            http, f"/api/v1/metrics/Train/1/train/1/follow?resume={task_rows[1][0]}", 1
        )
        assert resumed[0][0] == task_rows[2][0]
    async with gateway() as (client, http):
        created = await client.create_run("Train")
        await client.run("Train/1", after=created.receipt)
        path = "/api/v1/metrics/Train/1/follow"
        problem_of(await http.get(path, params={"stream": "gpu"}), 422, "bad_filter")
        problem_of(await http.get(path, params={"resume": "x"}), 422, "bad_filter")
        problem_of(await http.get("/api/v1/metrics/Train/follow"), 422, "invalid_name")
        problem_of(await http.get("/api/v1/metrics/Train/1/train/follow"), 422, "bad_filter")
