"""The ``runstate`` command line: each command as a subprocess against a real server.

One ``runstate server`` subprocess (module-scoped) holds a few runs of the
flow ``Cli`` written through the Python API; the read commands run against
it with ``--nats``. The demo and the server's own start/stop run on their
own data directories. The live view is checked by rendering ``LiveBoard``
into rich's recording console.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from rich.console import Console

from runstate.client import connect
from runstate.client._watch import Change
from runstate.client.cli import cli
from runstate.client.cli._board import LiveBoard
from runstate.engine._events import Event
from runstate.engine._server import NatsServer
from runstate.engine._states import RunState, TaskState
from runstate.engine.testing import EventFactory
from runstate.projections._reducers import fold_run
from runstate.projections._views import RunView

pytestmark = pytest.mark.anyio  # for the async tests; the others ignore it

RUNSTATE = [sys.executable, "-m", "runstate.client.cli"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTATE_")}
    if "RUNSTATE_TOKEN" in os.environ:  # the token of the `written` server (issue 17)
        env["RUNSTATE_TOKEN"] = os.environ["RUNSTATE_TOKEN"]
    env.update(COLUMNS="200", RUNSTATE_LOG_LEVEL="warning", PYTHONUNBUFFERED="1")
    return env


def runstate(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``runstate ARGS`` to completion and return its result."""
    return subprocess.run(
        [*RUNSTATE, *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )


class Running:
    """A ``runstate`` subprocess whose stdout lines are read as they come."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*RUNSTATE, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """The first stdout line matching ``pattern``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                match = re.search(pattern, line)
                if match:
                    return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} in {self.lines}")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                stderr = self.process.stderr.read() if self.process.stderr else ""
                raise AssertionError(f"exited before {pattern!r}: {self.lines} {stderr}")
            self.lines.append(line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Send ``sig`` and return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@dataclass
class Written:
    """What the module's server holds: the flow ``Cli`` with two runs."""

    url: str
    flaky_task: str  # Cli/1/train/<id>: attempt 0 failed with ValueError, attempt 1 completed
    end_task: str  # Cli/1/end/<id>: artifacts model (json) and weights (pickle)


async def _write_runs(url: str) -> tuple[str, str]:
    async with connect(url, projector=False, namespace=None) as client:
        run = await client.create_run("Cli", parameters={"lr": 0.1}, tags=["production"])
        async with run.running():
            async with run.task("start") as start:
                await start.save(config={"lr": 0.1})
                await start.record_metadata(host="test-host")
            tasks = await run.foreach("train", 3, parents=[start])
            for task in tasks:
                try:
                    async with task.attempting():
                        await task.record_metadata(worker=f"worker-{task.attempt}")
                        if task.index == 1 and task.attempt == 0:
                            raise ValueError("bad batch 7")
                        await task.save(metrics={"loss": 0.1 * (task.index or 0)})
                except ValueError:
                    await task.retry()
                    async with task.attempting():
                        await task.record_metadata(worker=f"worker-{task.attempt}")
                        await task.save(metrics={"loss": 0.5})
            async with run.task("end", parents=tasks) as end:
                await end.save(model={"layers": [4, 2]}, weights=complex(1, 2))
        failing = await client.create_run("Cli")
        with pytest.raises(RuntimeError):
            async with failing.running():
                raise RuntimeError("out of disk")
        return tasks[1].pathspec, end.pathspec


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Written]:
    """A ``runstate server`` subprocess holding the runs Cli/1 (completed) and Cli/2 (failed)."""
    data_dir = tmp_path_factory.mktemp("cli-server")
    server = Running("server", "--data-dir", str(data_dir))
    try:
        url = server.wait_for(r"ready: (nats://\S+)").group(1)
        # the server asks for its token: the commands given --nats URL take it from here
        with pytest.MonkeyPatch.context() as env:
            env.setenv("RUNSTATE_TOKEN", (data_dir / "server.token").read_text().strip())
            flaky, end = anyio.run(_write_runs, url)
            yield Written(url, flaky, end)
    finally:
        server.stop()


# -- help and usage ------------------------------------------------------------


def test_every_command_explains_itself_with_an_example() -> None:
    """``--help`` of the group lists every command; each command's help has an example."""
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("server", "projector", "demo", "runs", "show", "watch", "events"):
        assert command in result.output
        help_text = runner.invoke(cli, [command, "--help"]).output
        assert "Example" in help_text, command


def test_a_bad_option_value_is_a_usage_error() -> None:
    """An unknown state is refused by click with exit status 2, before connecting."""
    result = runstate("runs", "--state", "sleeping", "--nats", "nats://127.0.0.1:1")
    assert result.returncode == 2
    assert "sleeping" in result.stderr
    assert "Traceback" not in result.stderr


# -- errors --------------------------------------------------------------------


def test_a_malformed_pathspec_exits_2_with_one_line() -> None:
    """A bad pathspec is one ``error:`` line on stderr and exit status 2, no traceback."""
    result = runstate("show", "Cli/1/../x", "--nats", "nats://127.0.0.1:1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: invalid step name '..'")
    assert result.stdout == ""


def test_an_unreachable_nats_exits_1_quickly() -> None:
    """A NATS nobody listens on: one clear line, exit status 1, within a few seconds."""
    started = time.monotonic()
    result = runstate("runs", "--nats", "nats://127.0.0.1:1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot connect to NATS at nats://127.0.0.1:1")
    assert time.monotonic() - started < 10


def test_connection_options_that_cannot_work_say_why_in_one_line(tmp_path: Path) -> None:
    """``--nats http://``, ``--nats ""`` and a missing ``--data-dir``: exit 2, one clear line."""
    http = runstate("runs", "--nats", "http://127.0.0.1:4222")
    assert http.returncode == 2, http
    assert "the scheme http:// is not one NATS speaks" in http.stderr
    empty = runstate("runs", "--nats", "")
    assert empty.returncode == 2, empty
    assert (
        "Invalid value for '--nats': is empty; give a NATS URL" in empty.stderr
        and "Traceback" not in empty.stderr
    )
    missing = tmp_path / "nonexistent" / "x"
    for args in (("runs",), ("show", "Train/1"), ("events", "Train"), ("watch", "Train/1")):
        result = runstate(*args, "--data-dir", str(missing))
        assert result.returncode == 2, result
        assert result.stderr.strip().splitlines() == [
            f"error: there is no runstate data directory {missing}; start one with runstate "
            f"server --data-dir {missing} (or runstate demo), or give --nats URL"
        ]
    assert not missing.parent.exists()


def test_an_unknown_run_exits_2(written: Written) -> None:
    """A well-formed pathspec naming nothing is NotFound: exit status 2, one line."""
    result = runstate("show", "Cli/99", "--nats", written.url)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: run Cli/99 does not exist"


@pytest.mark.parametrize(
    "args",
    [
        ("show", "Cli/99"),
        ("events", "Cli/99"),
        ("events", "Cli/99", "--follow"),
        ("events", "Nowhere"),
        ("watch", "Cli/99"),
        ("watch", "Cli/1/nostep"),
        ("watch", "Nowhere"),
    ],
    ids=" ".join,
)
def test_every_command_says_not_found_in_one_line_with_exit_2(
    written: Written, args: tuple[str, ...]
) -> None:
    """``show``, ``events`` (also ``--follow``) and ``watch`` of nothing: one line, exit 2."""
    result = runstate(*args, "--nats", written.url, timeout=30)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert args[1] in lines[0]
    assert result.stdout == ""


async def test_watch_wait_waits_for_a_run_that_does_not_exist_yet(written: Written) -> None:
    """``watch --wait`` of a run not created yet says it waits, then follows it to its end."""
    watcher = Running("watch", "Later/1", "--wait", "--nats", written.url)
    try:
        assert watcher.process.stderr is not None
        line = await anyio.to_thread.run_sync(watcher.process.stderr.readline)
        assert "Later/1 does not exist yet; waiting for it" in line
        async with connect(written.url, projector=False) as client:
            run = await client.create_run("Later")
            async with run.running():
                pass
        assert await anyio.to_thread.run_sync(watcher.process.wait, 20) == 0
        await anyio.to_thread.run_sync(watcher.wait_for, r"^Later/1  completed")
    finally:
        watcher.close()


# -- reads -----------------------------------------------------------------------


def test_runs_lists_newest_first(written: Written) -> None:
    """``runs FLOW`` is a table of runs, newest first, with states and tags."""
    result = runstate("--nats", written.url, "runs", "Cli")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["run", "state", "created", "duration", "user", "tags", "progress"]
    assert lines[1].startswith("Cli/2") and "failed" in lines[1]
    assert lines[2].startswith("Cli/1") and "completed" in lines[2] and "production" in lines[2]
    assert "5/5 tasks" in lines[2]


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
def test_runs_to_a_closed_pipe_exits_0_quietly(written: Written, buffered: bool) -> None:
    """``runstate runs | head`` whose reader has gone: exit 0, nothing on stderr."""
    env = _env()
    if buffered:  # then the write fails only when the interpreter flushes on exit
        del env["PYTHONUNBUFFERED"]
    process = subprocess.Popen(
        [*RUNSTATE, "runs", "--nats", written.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the command writes anything
    status = process.wait(30)
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert (status, stderr) == (0, "")


def test_runs_to_a_file_keeps_every_tag_whole(written: Written, tmp_path: Path) -> None:
    """Off a terminal ``runs`` is not cut at 80 columns: a long tag is printed whole."""
    long_tag = "a-rather-long-tag-" * 6

    async def create() -> None:
        async with connect(written.url, projector=False) as client:
            await client.create_run("Wide", tags=[long_tag])

    anyio.run(create)
    env = {k: v for k, v in _env().items() if k != "COLUMNS"}
    out = tmp_path / "runs.txt"
    with open(out, "w") as f:
        status = subprocess.run(
            [*RUNSTATE, "runs", "Wide", "--nats", written.url], stdout=f, env=env, timeout=30
        ).returncode
    assert status == 0
    assert long_tag in out.read_text()


def test_runs_filters_and_prints_json(written: Written) -> None:
    """``--tag``, ``--state`` and ``--json`` select runs and print their views."""
    tagged = runstate("runs", "Cli", "--tag", "production", "--json", "--nats", written.url)
    assert tagged.returncode == 0, tagged.stderr
    assert [run["pathspec"] for run in json.loads(tagged.stdout)] == ["Cli/1"]
    failed = runstate("runs", "--state", "failed", "--json", "--nats", written.url)
    views = json.loads(failed.stdout)
    assert [(run["pathspec"], run["state"]) for run in views] == [("Cli/2", "failed")]
    none = runstate("runs", "Cli", "--user", "nobody", "--nats", written.url)
    assert none.returncode == 0 and "no runs match" in none.stdout


def test_show_run_is_a_tree_of_steps_and_tasks(written: Written) -> None:
    """``show RUN`` lists each step with its tasks, states and retries."""
    result = runstate("show", "Cli/1", "--nats", written.url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0].startswith("Cli/1  completed")
    for step in ("start", "train", "end"):
        assert re.search(rf"── {step}  completed", out), out
    assert "attempt 1 (earlier: 0 failed)" in out
    assert "parameters: lr=0.1" in out


def test_show_task_has_attempts_exception_metadata_and_artifacts(written: Written) -> None:
    """``show TASK --attempt 0`` shows the failed attempt's exception and traceback."""
    failed = runstate("show", written.flaky_task, "--attempt", "0", "--nats", written.url)
    assert failed.returncode == 0, failed.stderr
    assert "attempt 0 of 2" in failed.stdout
    assert "0  failed" in failed.stdout and "ValueError: bad batch 7" in failed.stdout
    assert "Traceback (most recent call last)" in failed.stdout
    latest = runstate("show", written.end_task, "--nats", written.url)
    assert "model  json" in latest.stdout and "{'layers': [4, 2]}" in latest.stdout
    # a pickle is never unpickled to display (issue 17): its type and size only
    assert "weights  pickle" in latest.stdout and "not unpickled" in latest.stdout
    assert "builtins.complex" in latest.stdout
    assert "(1+2j)" not in latest.stdout
    assert "parents: Cli/1/train/" in latest.stdout


def test_show_attempt_shows_that_attempts_metadata_in_text_and_json(written: Written) -> None:
    """``show TASK --attempt 0`` (text and ``--json``) is attempt 0's state and metadata."""
    text = runstate("show", written.flaky_task, "--attempt", "0", "--nats", written.url)
    assert text.returncode == 0, text.stderr
    assert "worker = worker-0" in text.stdout and "worker-1" not in text.stdout
    assert "attempt_ok = False" in text.stdout
    shown = runstate("show", written.flaky_task, "--attempt", "0", "--json", "--nats", written.url)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert (view["attempt"], view["state"]) == (0, "failed")
    assert [(m["name"], m["value"]) for m in view["metadata"]] == [("worker", "worker-0")]
    assert view["metadata_dict"]["worker"] == "worker-0"
    assert view["metadata_dict"]["attempt"] == "0"
    latest = json.loads(
        runstate("show", written.flaky_task, "--json", "--nats", written.url).stdout
    )
    assert (latest["attempt"], latest["state"]) == (1, "completed")
    assert latest["metadata_dict"]["worker"] == "worker-1"


def test_show_artifact_prints_its_value_and_json_prints_the_view(written: Written) -> None:
    """``show ARTIFACT`` prints the value; ``--json`` prints the object's view."""
    value = runstate("show", f"{written.end_task}/model", "--nats", written.url)
    assert value.returncode == 0, value.stderr
    assert "{'layers': [4, 2]}" in value.stdout
    view = runstate("show", "Cli/1", "--json", "--nats", written.url)
    data = json.loads(view.stdout)
    assert data["pathspec"] == "Cli/1" and data["state"] == "completed"


def test_show_as_of_shows_the_run_as_it_was_at_a_sequence_or_time(written: Written) -> None:
    """``show --as-of SEQ|TIME`` renders the run as it was then, with a line naming the moment."""
    records = [
        json.loads(line)
        for line in runstate("events", "Cli/1", "--json", "--nats", written.url).stdout.splitlines()
    ]
    failed = next(
        r["sequence"]
        for r in records
        if r["event"]["pathspec"] == written.flaky_task
        and r["event"]["payload"].get("state") == "failed"
    )
    result = runstate("show", "Cli/1", "--as-of", str(failed), "--nats", written.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"as of sequence {failed}"
    assert lines[1].startswith("Cli/1  running")
    assert "failed" in result.stdout and "── end" not in result.stdout  # no end step yet
    task = runstate(
        "show", written.flaky_task, "--as-of", str(failed), "--json", "--nats", written.url
    )
    assert task.returncode == 0, task.stderr
    assert (json.loads(task.stdout)["state"], task.stderr.strip()) == (
        "failed",
        f"as of sequence {failed}",
    )
    later = runstate("show", "Cli/1", "--as-of", "2100-01-01T00:00:00", "--nats", written.url)
    assert later.returncode == 0, later.stderr
    assert later.stdout.startswith("as of 2100-01-01T00:00:00+00:00 (the events up to sequence")
    assert "Cli/1  completed" in later.stdout
    before = runstate("show", "Cli/1", "--as-of", "2000-01-01T00:00:00Z", "--nats", written.url)
    assert before.returncode == 2 and "did not exist yet" in before.stderr
    bad = runstate("show", "Cli/1", "--as-of", "yesterday", "--nats", written.url)
    assert bad.returncode == 2 and "neither a stream sequence" in bad.stderr


def test_events_prints_the_history_with_sequences(written: Written) -> None:
    """``events RUN`` prints every event in order; ``--json`` one object a line; ``--since``."""
    result = runstate("events", "Cli/1", "--nats", written.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "run.created" in lines[0] and "Cli/1" in lines[0]
    assert "→ failed (" not in result.stdout  # only the task failed, not the run
    assert any("ValueError: bad batch 7" in line for line in lines)
    assert "→ completed" in lines[-1]
    records = [
        json.loads(line)
        for line in runstate("events", "Cli/1", "--json", "--nats", written.url).stdout.splitlines()
    ]
    sequences = [r["sequence"] for r in records]
    assert sequences == sorted(sequences) and records[0]["event"]["type"] == "run.created"
    later = runstate(
        "events", "Cli/1", "--json", "--since", str(sequences[-1]), "--nats", written.url
    )
    assert [json.loads(line)["sequence"] for line in later.stdout.splitlines()] == [sequences[-1]]


async def test_events_follow_prints_new_events_until_interrupted(written: Written) -> None:
    """``events --follow`` prints new events as they are written; Ctrl-C exits 0."""
    follow = Running("events", "Follow", "--follow", "--wait", "--nats", written.url)
    try:
        async with connect(written.url, projector=False) as client:
            await client.create_run("Follow", tags=["followed"])
        await anyio.to_thread.run_sync(follow.wait_for, r"run\.created\s+Follow/1 .*tags followed")
    finally:
        assert await anyio.to_thread.run_sync(follow.stop, signal.SIGINT) == 0


def test_watch_of_a_finished_run_prints_it_and_exits(written: Written) -> None:
    """``watch`` of a run already finished shows its final state and exits 0 (not a tty)."""
    result = runstate("watch", "Cli/1", "--nats", written.url, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        line for line in result.stdout.splitlines() if line.startswith("Cli/1  completed")
    ]
    assert "train: 3 completed" in result.stdout


async def test_watch_follows_a_run_until_it_finishes(written: Written) -> None:
    """``watch RUN`` prints each event as it happens and exits 0 when the run ends."""
    async with connect(written.url, projector=False) as client:
        run = await client.create_run("Watched")
        watcher = Running("watch", run.pathspec, "--nats", written.url)
        try:
            await anyio.to_thread.run_sync(watcher.wait_for, r"^Watched/1  pending")
            async with run.running():
                async with run.task("only"):
                    pass
            status = await anyio.to_thread.run_sync(watcher.process.wait, 20)
            await anyio.to_thread.run_sync(watcher.wait_for, r"^Watched/1  completed")
            assert status == 0
            assert any("→ running" in line for line in watcher.lines)
            assert any("Watched/1/only/1" in line for line in watcher.lines)
        finally:
            watcher.close()


async def test_watch_with_metric_prints_each_row_a_running_task_logs(written: Written) -> None:
    """``watch RUN --metric loss`` prints each row of a running task: value and sparkline."""
    async with connect(written.url, projector=False) as client:
        run = await client.create_run("Metered")
        watcher = Running("watch", run.pathspec, "--metric", "loss", "--nats", written.url)
        try:
            await anyio.to_thread.run_sync(watcher.wait_for, r"^Metered/1  pending")
            async with run.running():
                async with run.task("train") as task:
                    for loss in (1.0, 0.5, 0.25):
                        await task.log({"loss": loss, "acc": 1 - loss})
            status = await anyio.to_thread.run_sync(watcher.process.wait, 20)
            assert status == 0
            line = await anyio.to_thread.run_sync(watcher.wait_for, r"^Metered/1/train/1  step 2")
            assert line.string.split("loss", 1)[1].split() == ["0.25", "█▃▁"]
            steps = [re.search(r"step (\d+)", ln) for ln in watcher.lines if "/train/1 " in ln]
            assert [int(m.group(1)) for m in steps if m] == [0, 1, 2]
            assert not any("acc" in ln for ln in watcher.lines)
        finally:
            watcher.close()


def _stderr_line(process: subprocess.Popen[str], pattern: str) -> str:
    """Read stderr lines until one matches ``pattern`` (the test's timeout bounds the wait)."""
    assert process.stderr is not None
    seen = []
    while True:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"stderr ended before {pattern!r}: {seen}")
        seen.append(line)
        if re.search(pattern, line):
            return line


@pytest.mark.parametrize("command", ["watch", "events"])
async def test_a_follower_says_it_lost_its_embedded_server_and_gives_up(
    tmp_path: Path, command: str
) -> None:
    """When the owner stops the server, ``watch`` and ``events -f`` say so, then exit 1."""
    server = Running("server", "--data-dir", str(tmp_path))
    try:
        url = (await anyio.to_thread.run_sync(server.wait_for, r"ready: (nats://\S+)")).group(1)
        async with connect(url, projector=False, data_dir=tmp_path) as client:
            run = await client.create_run("Gone")
        args = ("watch", run.pathspec) if command == "watch" else ("events", run.pathspec, "-f")
        follower = Running(*args, "--data-dir", str(tmp_path))
        try:
            await anyio.to_thread.run_sync(follower.wait_for, r"Gone/1")
            await anyio.to_thread.run_sync(server.stop)
            await anyio.to_thread.run_sync(
                _stderr_line, follower.process, r"^lost the connection to NATS at nats://"
            )
            last = await anyio.to_thread.run_sync(_stderr_line, follower.process, r"^error: ")
            assert f"the embedded NATS server of {tmp_path}" in last
            assert await anyio.to_thread.run_sync(follower.process.wait, 30) == 1
        finally:
            follower.close()
    finally:
        server.close()


async def test_a_follower_says_when_it_lost_and_regained_the_connection(
    nats_server: NatsServer,
) -> None:
    """``events --follow`` on a URL says when NATS goes away and when it is back, and goes on."""
    follower = Running("events", "Back", "--follow", "--wait", "--nats", nats_server.url)
    try:
        await anyio.to_thread.run_sync(_stderr_line, follower.process, r"does not exist yet")
        await anyio.to_thread.run_sync(nats_server.stop)
        await anyio.to_thread.run_sync(_stderr_line, follower.process, r"^lost the connection")
        await anyio.to_thread.run_sync(nats_server.start)
        await anyio.to_thread.run_sync(_stderr_line, follower.process, r"^reconnected to NATS")
        async with connect(nats_server.url, projector=False) as client:
            await client.create_run("Back")
        await anyio.to_thread.run_sync(follower.wait_for, r"run\.created\s+Back/1")
    finally:
        assert await anyio.to_thread.run_sync(follower.stop, signal.SIGINT) == 0


# -- the live view ----------------------------------------------------------------


def _changes() -> list[Change]:
    """A run going running, fanning out three train tasks: two complete, one fails."""
    factory = EventFactory()
    events: list[Event] = [factory.run_created("1"), factory.run_state("1", RunState.RUNNING)]
    for i in range(3):
        pathspec = f"Train/1/train/{i + 1}"
        events.append(factory.task_created("1", "train", str(i + 1), index=i, num_splits=3))
        events.append(factory.task_state(pathspec, 0, TaskState.RUNNING))
    for i, state in enumerate([TaskState.COMPLETED, TaskState.COMPLETED, TaskState.FAILED]):
        message = "boom" if i == 2 else None
        events.append(factory.task_state(f"Train/1/train/{i + 1}", 0, state, message))
    view: RunView | None = None
    changes = []
    for sequence, event in enumerate(events, start=1):
        view = fold_run(view, event, (sequence, 0))
        assert view is not None
        key = ("run", "Train/1")
        changes.append(Change(event, (sequence, 0), {key: view}, (key,)))
    return changes


def _render(board: LiveBoard) -> str:
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(board)
    return console.export_text()


def test_live_board_shows_run_state_steps_counts_and_events() -> None:
    """The live view shows the run's state, its step with counts by state, and the latest events."""
    board = LiveBoard("watching Train/1")
    changes = _changes()
    for change in changes[:5]:
        board.apply(change)
    early = _render(board)
    assert re.search(r"Train/1\s+running", early)
    assert re.search(r"└ train\s+running .* 1 running · 1 pending", early), early
    for change in changes[5:]:
        board.apply(change)
    text = _render(board)
    assert re.search(r"└ train\s+failed .* 2 completed · 1 failed", text), text
    assert "latest events" in text and "→ failed: boom" in text
    assert f"{len(changes)} updates" in text


def test_the_demo_board_counts_events_written_as_its_summary_does() -> None:
    """The demo's header counts events written (not changes shown), as events and events/s."""
    from runstate.client.cli._demo import DemoResult, summary_lines

    board = LiveBoard("demo", counts_events=True)
    for change in _changes():
        board.apply(change)
    assert board.updates == 0  # changes shown are not events written
    board.updates = 411
    header = _render(board).splitlines()[0]
    assert re.search(r"· 411 events · \d+ events/s", header), header
    result = DemoResult()
    result.events, result.commits, result.elapsed = 411, 300, 10.0
    summary = " ".join(line.plain for line in summary_lines(result, ""))
    assert "events written: 411 in 300 commits, 41 events/s" in summary


def test_the_demo_names_runstate_as_the_shell_will_find_it(tmp_path: Path) -> None:
    """Outside the venv (``runstate`` not on PATH) the next commands say the script's path."""
    script = Path(sys.executable).parent / "runstate"
    code = "from runstate.client.cli._app import command_name; print(command_name())"
    outside = {**_env(), "PATH": "/usr/bin:/bin"}
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=outside, cwd=tmp_path
    )
    assert found.stdout.strip() == str(script)
    inside = {**_env(), "PATH": f"{script.parent}:/usr/bin:/bin"}
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=inside, cwd=tmp_path
    )
    assert found.stdout.strip() == "runstate"


def test_live_board_hides_runs_from_before_it_started() -> None:
    """With ``since``, runs created earlier are not shown (the demo shows only its own)."""
    changes = _changes()
    created = changes[0].views[("run", "Train/1")].created_at  # type: ignore[union-attr]
    board = LiveBoard("demo", since=created.replace(year=created.year + 1))
    for change in changes:
        board.apply(change)
    assert "no runs yet" in _render(board)


# -- server, projector, demo ------------------------------------------------------


async def test_server_answers_queries_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """``server`` prints its URL, answers, refuses a twin, and on SIGTERM exits 0 cleaning up."""
    server = Running("server", "--data-dir", str(tmp_path))
    try:
        ready = await anyio.to_thread.run_sync(server.wait_for, r"ready: (nats://\S+)")
        url = ready.group(1)
        assert (tmp_path / "server.json").exists()
        async with connect(url, projector=False, data_dir=tmp_path) as client:
            run = await client.create_run("Served", tags=["x"])
            read = await client.run(run.pathspec, after=run.receipt)
            assert (read.pathspec, read.state) == ("Served/1", RunState.PENDING)
        second = await anyio.to_thread.run_sync(runstate, "server", "--data-dir", str(tmp_path))
        assert second.returncode == 1
        assert f"error: a runstate server already runs on {tmp_path} at {url}" in second.stderr
    finally:
        status = await anyio.to_thread.run_sync(server.stop, signal.SIGTERM)
    assert status == 0
    assert not (tmp_path / "server.json").exists()
    assert (tmp_path / "views.sqlite3").exists()


async def test_projector_serves_queries_against_a_given_nats(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """``projector --nats URL --store PATH`` answers until SIGTERM; a twin on its store fails."""
    store = tmp_path / "replica.sqlite3"
    replica = Running("projector", "--nats", nats_server.url, "--store", str(store), "--name", "r1")
    try:
        await anyio.to_thread.run_sync(replica.wait_for, r"replica ready")
        async with connect(nats_server.url, projector=False) as client:
            assert (await client.status())["name"] == "r1"
        twin = await anyio.to_thread.run_sync(
            runstate, "projector", "--nats", nats_server.url, "--store", str(store)
        )
        assert twin.returncode == 1
        assert f"error: the read store {store} is in use by another replica" in twin.stderr
    finally:
        assert await anyio.to_thread.run_sync(replica.stop) == 0
    assert store.exists()


def test_demo_finishes_by_itself_and_what_it_wrote_is_readable(tmp_path: Path) -> None:
    """``demo --no-live`` on its own embedded server ends by itself; runs/show read its runs."""
    data_dir = str(tmp_path / "demo")
    result = runstate(
        "demo",
        "--data-dir",
        data_dir,
        "--duration",
        "40",
        "--runs",
        "2",
        "--tasks",
        "3",
        "--workers",
        "3",
        "--no-live",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "all runs finished" in out, out
    assert re.search(r"runs: 2\s+1 completed · 1 failed", out), out
    assert "the reaper marked Train/1/train/3 crashed" in out
    assert f"runstate --data-dir {data_dir} show Train/1" in out
    listed = runstate("runs", "--json", "--data-dir", data_dir)
    assert listed.returncode == 0, listed.stderr
    states = {run["pathspec"]: run["state"] for run in json.loads(listed.stdout)}
    assert states == {"Train/1": "completed", "Evaluate/1": "failed"}
    shown = runstate("show", "Train/1/train/3", "--data-dir", data_dir)
    assert "crashed (Crashed)" in shown.stdout and "worker = " in shown.stdout
