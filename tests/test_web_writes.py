"""The gateway's writes: runs and tasks created, transitions under If-Match (412, 428),
Idempotency-Key, tags, metadata, artifacts and heartbeats, each answering its receipt."""

from __future__ import annotations

from typing import Any

import pytest
from _web import ok, problem_of
from test_web_reads import gateway

from runstate.client import RunState, TaskState

pytestmark = pytest.mark.anyio


async def test_a_run_created_over_http_is_read_by_the_client() -> None:
    """POST /runs creates the run (201, Location, ETag, sequence); the client reads it."""
    async with gateway() as (client, http):
        response = await http.post(
            "/api/v1/runs",
            json={"flow": "Train", "parameters": {"lr": 0.1}, "tags": ["nightly"]},
        )
        written = ok(response, 201)
        assert response.headers["location"] == "/api/v1/runs/Train/1"
        assert response.headers["etag"] == f'"{written["version"]}"'
        assert response.headers["x-runstate-sequence"] == str(written["sequence"])
        run = await client.run("Train/1", after=written["sequence"])
    assert run.parameters == {"lr": 0.1} and "nightly" in run.tags
    assert run.state is RunState.PENDING


async def test_a_transition_needs_if_match_and_refuses_a_stale_one() -> None:
    """Without If-Match: 428; with a stale version: 412 with the current one (and nothing
    appended); with the ETag of a read: applied; with *: applied."""
    async with gateway() as (client, http):
        created = ok(await http.post("/api/v1/runs", json={"flow": "Train"}), 201)
        url = "/api/v1/runs/Train/1/transitions"
        problem_of(await http.post(url, json={"state": "running"}), 428, "precondition_required")
        # someone else moves the run on meanwhile
        handle = await client.run_handle("Train/1")
        await handle.start()
        stale = await http.post(
            url, json={"state": "completed"}, headers={"If-Match": f'"{created["version"]}"'}
        )
        problem = problem_of(stale, 412, "conflict")
        assert problem["current_version"] == handle.version
        assert stale.headers["etag"] == f'"{handle.version}"'
        read = await http.get("/api/v1/runs/Train/1", params={"after": handle.version})
        assert read.json()["state"] == "running"
        done = ok(
            await http.post(
                url, json={"state": "completed"}, headers={"If-Match": read.headers["etag"]}
            )
        )
        assert done["state"] == "completed" and done["version"] == done["sequence"]
        run = await client.run("Train/1", after=done["sequence"])
        assert run.state is RunState.COMPLETED
        resumed = await http.post(
            url, json={"state": "running", "resume": True}, headers={"If-Match": "*"}
        )
        problem_of(resumed, 409, "illegal_transition")  # a completed run cannot resume


async def test_an_illegal_transition_is_409_and_a_bad_state_422() -> None:
    """The state machine's refusal is 409; a state that does not exist is a 422 problem."""
    async with gateway() as (_, http):
        ok(await http.post("/api/v1/runs", json={"flow": "Train"}), 201)
        url = "/api/v1/runs/Train/1/transitions"
        refused = await http.post(url, json={"state": "completed"}, headers={"If-Match": "*"})
        problem_of(refused, 409, "illegal_transition")
        bad = await http.post(url, json={"state": "asleep"}, headers={"If-Match": "*"})
        problem = problem_of(bad, 422, "bad_request")
        assert problem["errors"][0]["loc"] == ["body", "state"]


async def test_idempotency_key_gives_one_run_and_refuses_another_body() -> None:
    """The same key and body return the same run; the same key with another body is 422."""
    async with gateway() as (client, http):
        body = {"flow": "Train", "parameters": {"lr": 0.1}, "tags": ["a"]}
        key = {"Idempotency-Key": "job-17"}
        first = ok(await http.post("/api/v1/runs", json=body, headers=key), 201)
        again = ok(await http.post("/api/v1/runs", json=body, headers=key), 201)
        assert again["pathspec"] == first["pathspec"] == "Train/1"
        other_params = {**body, "parameters": {"lr": 0.2}}
        problem_of(
            await http.post("/api/v1/runs", json=other_params, headers=key),
            422,
            "idempotency_key_reused",
        )
        other_tags = {**body, "tags": ["b"]}
        problem = problem_of(
            await http.post("/api/v1/runs", json=other_tags, headers=key),
            422,
            "idempotency_key_reused",
        )
        assert "tags" in problem["detail"]
        page = await client.runs("Train", after=again["sequence"])
    assert [run.pathspec for run in page.items] == ["Train/1"]


async def test_a_worker_drives_a_task_over_http() -> None:
    """Create a task, start it, record metadata and JSON artifacts, fail it, retry and
    complete the next attempt: the client reads each write."""
    async with gateway() as (client, http):
        ok(await http.post("/api/v1/runs", json={"flow": "Train"}), 201)
        ok(
            await http.post(
                "/api/v1/runs/Train/1/transitions",
                json={"state": "running"},
                headers={"If-Match": "*"},
            )
        )
        created = await http.post("/api/v1/runs/Train/1/tasks", json={"step": "train"})
        task = ok(created, 201)
        assert task["pathspec"] == "Train/1/train/1" and task["state"] == "pending"
        base = "/api/v1/runs/Train/1/steps/train/tasks/1"
        assert created.headers["location"] == base
        version = f'"{task["version"]}"'
        started = ok(
            await http.post(
                base + "/transitions", json={"state": "running"}, headers={"If-Match": version}
            )
        )
        ok(await http.post(base + "/metadata", json={"entries": {"host": "n1", "cores": 8}}))
        saved = ok(
            await http.post(base + "/artifacts", json={"artifacts": {"acc": 0.9, "xs": [1, 2]}})
        )
        assert saved["sequence"] > started["sequence"]
        failed = ok(
            await http.post(
                base + "/transitions",
                json={
                    "state": "failed",
                    "exception": {"type": "OSError", "message": "disk", "traceback": "..."},
                },
                headers={"If-Match": f'"{saved["version"]}"'},
            )
        )
        retried = ok(
            await http.post(
                base + "/transitions",
                json={"state": "pending", "attempt": 1},
                headers={"If-Match": f'"{failed["version"]}"'},
            )
        )
        assert retried["attempt"] == 1
        assert (await http.post(base + "/heartbeat")).status_code == 204
        assert (await http.post("/api/v1/runs/Train/1/heartbeat")).status_code == 204
        read = await client.task("Train/1/train/1", after=retried["sequence"])
        first = await client.task("Train/1/train/1", attempt=0)
    assert read.attempt == 1 and read.state is TaskState.PENDING
    assert first.state is TaskState.FAILED and first.exception is not None
    assert first.exception.message == "disk"
    assert first.data.acc == 0.9 and first.data.xs == [1, 2]
    assert first.metadata_dict["host"] == "n1" and first.metadata_dict["cores"] == "8"


async def test_tags_are_added_removed_and_replaced() -> None:
    """POST /tags adds and removes, or replaces the user tags; system tags are refused."""
    async with gateway() as (client, http):
        ok(await http.post("/api/v1/runs", json={"flow": "Train", "tags": ["a"]}), 201)
        url = "/api/v1/runs/Train/1/tags"
        changed = ok(await http.post(url, json={"add": ["b", "c"], "remove": ["a"]}))
        run = await client.run("Train/1", after=changed["sequence"])
        assert run.user_tags == {"b", "c"}
        replaced = ok(await http.post(url, json={"replace": ["z"]}))
        run = await client.run("Train/1", after=replaced["sequence"])
        assert run.user_tags == {"z"}
        system = next(iter(run.system_tags))
        problem_of(await http.post(url, json={"remove": [system]}), 422, "invalid_name")
        problem_of(await http.post(url, json={}), 422, "invalid_event")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"flow": "bad flow"}, 422, "invalid_name"),
        ({"flow": "Train", "parameters": {"x": 1}, "colour": "red"}, 422, "bad_request"),
        ({"flow": "Train", "tags": [""]}, 422, "invalid_name"),
        ({"flow": "Train", "scheduled_at": "2026-01-01T00:00:00"}, 422, "invalid_event"),
    ],
)
async def test_bad_writes_are_problem_details(body: dict[str, Any], status: int, code: str) -> None:
    """A write the engine refuses is a problem naming what was wrong, and nothing is created."""
    async with gateway() as (client, http):
        problem_of(await http.post("/api/v1/runs", json=body), status, code)
        assert (await client.runs()).items == []


async def test_writes_to_what_does_not_exist_are_404() -> None:
    """Transitions, tags and tasks of a run that does not exist are 404 problems."""
    async with gateway() as (_, http):
        star = {"If-Match": "*"}
        for url, body, headers in [
            ("/api/v1/runs/Train/9/transitions", {"state": "running"}, star),
            ("/api/v1/runs/Train/9/tags", {"add": ["a"]}, {}),
            ("/api/v1/runs/Train/9/tasks", {"step": "start"}, {}),
            ("/api/v1/runs/Train/9/steps/s/tasks/1/transitions", {"state": "running"}, star),
        ]:
            problem_of(await http.post(url, json=body, headers=headers), 404, "not_found")


async def test_a_conflict_on_an_explicit_run_id_is_409() -> None:
    """Creating a run whose id exists is a 409 conflict."""
    async with gateway() as (_, http):
        ok(await http.post("/api/v1/runs", json={"flow": "Train", "run_id": "x"}), 201)
        again = await http.post("/api/v1/runs", json={"flow": "Train", "run_id": "x"})
        problem_of(again, 409, "conflict")


async def test_a_too_large_write_is_413() -> None:
    """A commit over the log's limit is a 413 problem."""
    async with gateway() as (client, http):
        ok(await http.post("/api/v1/runs", json={"flow": "Train"}), 201)
        task = ok(await http.post("/api/v1/runs/Train/1/tasks", json={"step": "s"}), 201)
        big = "x" * (client.log.max_payload + 1)
        response = await http.post(
            "/api/v1/runs/Train/1/steps/s/tasks/1/metadata", json={"entries": {"blob": big}}
        )
        problem_of(response, 413, "payload_too_large")
        assert task["version"] > 0


async def test_a_kept_handle_never_hides_another_writer() -> None:
    """The gateway keeps the handle of a task it wrote; a transition naming that version
    after another writer moved the task is still 412, and naming one version twice
    succeeds once."""
    async with gateway() as (client, http):
        ok(await http.post("/api/v1/runs", json={"flow": "Train"}), 201)
        task = ok(await http.post("/api/v1/runs/Train/1/tasks", json={"step": "s"}), 201)
        url = "/api/v1/runs/Train/1/steps/s/tasks/1/transitions"
        version = f'"{task["version"]}"'
        running = {"state": "running"}
        first = await http.post(url, json=running, headers={"If-Match": version})
        again = await http.post(url, json=running, headers={"If-Match": version})
        assert first.status_code == 200 and again.status_code == 412
        kept = f'"{first.json()["version"]}"'
        handle = await client.writer.task("Train/1/s/1")
        await handle.complete()  # another writer, behind the gateway's back
        stale = await http.post(url, json={"state": "failed"}, headers={"If-Match": kept})
        problem = problem_of(stale, 412, "conflict")
        assert problem["current_version"] == handle.version
        read = await client.task("Train/1/s/1", after=handle.version)
    assert read.state is TaskState.COMPLETED
