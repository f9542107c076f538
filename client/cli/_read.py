"""The reading commands: ``runs``, ``show``, ``watch`` and ``events``."""

from __future__ import annotations

import base64
import functools
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import click
import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from runstate.client._client import Client, connect
from runstate.client._data import DataArtifact
from runstate.client._data import _record as artifact_record
from runstate.client._objects import Flow, Run, Step, Task
from runstate.client.cli._app import (
    configure_logs,
    current_options,
    echo_json,
    global_options,
    new_console,
    read_caught_up,
    reading_settings,
    reporting_errors,
    stoppable,
)
from runstate.client.cli._as_of import AS_OF_HELP, object_as_of, parse_as_of, tasks_as_of
from runstate.client.cli._board import LiveBoard
from runstate.client.cli._render import (
    counts_text,
    event_line,
    format_duration,
    pickled_preview,
    preview_text,
    state_text,
    value_preview,
)
from runstate.client.cli._sparklines import MetricTails, metric_tails, tailing, track_running
from runstate.client.cli._trees import artifact_header, run_tree, runs_table, step_tree, task_tree
from runstate.engine._embedded import _read_server_json
from runstate.engine._names import Pathspec, parse_pathspec
from runstate.engine._server import _pid_alive
from runstate.engine._states import RunState, TaskState
from runstate.engine.errors import NotFound, RunstateError, Unavailable
from runstate.projections._views import RunView, TaskView

__all__ = ["events", "runs", "show", "watch"]


#: a step lists every task up to this many (in a run's tree, in a step's own); beyond,
#: only the unfinished and unsuccessful ones
_TASKS_IN_RUN = 30
_TASKS_IN_STEP = 500

# -- runs --------------------------------------------------------------------


@click.command()
@global_options(exclude=("user",))
@click.argument("flow", required=False)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Only runs with this tag (repeat: all of them).",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in RunState]),
    help="Only runs in this state (repeat: any of them).",
)
@click.option("--user", "user", metavar="USER", help="Only runs started by this user.")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="How many runs to list.",
)
@click.option(
    "--namespace", metavar="TAG", help="Only runs in this namespace (a tag such as user:alice)."
)
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace (the default).")
@click.option("--json", "as_json", is_flag=True, help="Print the run views as a JSON array.")
@reporting_errors
def runs(
    flow: str | None,
    tags: tuple[str, ...],
    states: tuple[str, ...],
    user: str | None,
    limit: int,
    namespace: str | None,
    all_namespaces: bool,
    as_json: bool,
) -> None:
    """List runs, newest first: id, state, created, duration, user, tags, progress.

    Lists every namespace unless --namespace is given: unlike the Python
    client, whose reads default to your own runs (Metaflow's user
    namespace), the command line shows everything.

    \b
    Example:
      runstate runs Train --tag production --state completed --limit 10
    """
    configure_logs("warning")
    if namespace and all_namespaces:
        raise click.UsageError("--namespace and --all-namespaces contradict each other")
    if flow is not None:
        parse_pathspec(flow, max_depth=1)
    settings = reading_settings(current_options().settings())

    async def body(client: Client, after: int | None) -> tuple[list[RunView], bool]:
        page = await client.runs(
            flow, tags=tags, state=list(states) or None, user=user, page_size=limit, after=after
        )
        return [run.view for run in page.items], page.has_next

    views, more = anyio.run(functools.partial(read_caught_up, settings, body, namespace=namespace))
    if as_json:
        echo_json([view.model_dump(mode="json") for view in views])
        return
    console = new_console()
    if not views:
        console.print(
            "no runs match" if (flow or tags or states or user) else "no runs yet", style="dim"
        )
        return
    console.print(runs_table(views))
    if more:
        console.print(f"the newest {limit} shown; see more with --limit", style="dim")


# -- show --------------------------------------------------------------------


@click.command()
@global_options()
@click.argument("pathspec")
@click.option(
    "--attempt",
    type=click.IntRange(min=0),
    help="The attempt of a task or artifact (default: the latest).",
)
@click.option("--as-of", "as_of", metavar="SEQ|TIME", callback=parse_as_of, help=AS_OF_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the object's view as JSON.")
@reporting_errors
def show(pathspec: str, attempt: int | None, as_of: int | datetime | None, as_json: bool) -> None:
    """Show a flow, run, step, task or artifact.

    A flow: its runs. A run: a tree of its steps and tasks with states and
    durations. A step: its tasks. A task: its attempts (with exceptions),
    metadata and artifacts. An artifact: its value.

    \b
    Examples:
      runstate show Train/1
      runstate show Train/1/train/5 --attempt 0
      runstate show Train/1 --as-of 120
      runstate show Train/1 --as-of 2026-11-22T09:30:00+00:00
      runstate show Train/1/end/20/model
    """
    configure_logs("warning")
    path = parse_pathspec(pathspec)
    if attempt is not None and path.task is None:
        raise click.UsageError("--attempt applies to a task or an artifact pathspec")
    if as_of is not None and path.run is None:
        raise click.UsageError("--as-of applies to a run, step, task or artifact pathspec")
    settings = reading_settings(current_options().settings())
    console = new_console()

    async def body(client: Client, after: int | None) -> None:
        if as_of is None:
            obj = await client.get(pathspec, attempt=attempt, after=after)
        else:
            obj, moment = await object_as_of(client, path, attempt, as_of)
            click.echo(moment, err=as_json)  # on stderr with --json: the JSON stays whole
        if as_json:
            if isinstance(obj, Task):
                echo_json(_task_as_of(obj.view, obj.attempt))
                return
            view = obj.info if isinstance(obj, Flow) else obj.view
            click.echo(view.model_dump_json(indent=2))
            return
        if isinstance(obj, Flow):
            page = await client.runs(obj.name, page_size=20, after=after)
            console.print(Text(f"{obj.name}: {obj.run_count} runs", style="bold"))
            console.print(runs_table([run.view for run in page.items]))
        elif isinstance(obj, Run):
            console.print(await _run_tree(client, obj, after))
        elif isinstance(obj, Step):
            tasks, hidden = await _tasks_to_show(client, obj, after, _TASKS_IN_STEP)
            console.print(step_tree(obj.view, tasks, hidden=hidden))
        elif isinstance(obj, Task):
            previews = {a.id: _artifact_preview(a) for a in obj.artifacts}
            console.print(task_tree(obj.view, obj.attempt, previews))
        elif isinstance(obj, DataArtifact):
            console.print(artifact_header(obj.view))
            if obj.codec == "json":
                console.print(value_preview(await _load(obj)))
            else:
                console.print(pickled_preview(obj.size, await _load_bytes(client, obj)))

    anyio.run(functools.partial(read_caught_up, settings, body))


def _task_as_of(view: TaskView, attempt: int) -> dict[str, Any]:
    """A task's view as JSON, as of one attempt: its state, times, metadata and artifacts.

    ``attempts`` still lists every attempt; ``metadata_dict`` is Metaflow's for this one.
    """
    data = view.model_dump(mode="json")
    chosen = view.attempt_view(attempt)
    if chosen is not None and attempt != view.attempt:
        data.update(
            attempt=attempt,
            state=chosen.state.value,
            label=chosen.label,
            message=chosen.message,
            started_at=chosen.model_dump(mode="json")["started_at"],
            finished_at=chosen.model_dump(mode="json")["finished_at"],
        )
    data["metadata"] = [m for m in data["metadata"] if m["attempt"] == attempt]
    data["artifacts"] = [a for a in data["artifacts"] if a["attempt"] == attempt]
    data["metadata_dict"] = view.metadata_of(attempt)
    return data


async def _tasks_to_show(
    client: Client, step: Step, after: int | None, limit: int
) -> tuple[list[Any], int]:
    """Up to ``limit`` tasks of a step: all when that many, else the unsuccessful and unfinished."""
    if step.as_of is not None:
        return await tasks_as_of(step, limit)
    if step.tasks_total <= limit:
        page = await client.tasks(step.run_pathspec, step.id, page_size=limit, after=after)
    else:
        notable = [s for s in TaskState if s is not TaskState.COMPLETED]
        page = await client.tasks(
            step.run_pathspec, step.id, state=notable, page_size=limit, after=after
        )
    views = [task.view for task in page.items]
    return views, max(0, step.tasks_total - len(views))


async def _run_tree(client: Client, run: Run, after: int | None) -> Any:
    steps = await run.steps()
    tasks: dict[str, list[Any]] = {}
    hidden: dict[str, int] = {}
    for step in steps:
        tasks[step.id], hidden[step.id] = await _tasks_to_show(client, step, after, _TASKS_IN_RUN)
    return run_tree(run.view, [s.view for s in steps], tasks, hidden=hidden)


def _artifact_preview(artifact: DataArtifact) -> str:
    if artifact.codec != "json":  # never unpickled to display: see pickled_preview
        inline = base64.b64decode(str(artifact.view.inline)) if artifact.is_inline else None
        return pickled_preview(artifact.size, inline)
    if not artifact.is_inline:
        return f"(in the object store: runstate show {artifact.pathspec})"
    try:
        return preview_text(artifact.data)
    except Exception as exc:  # an unpicklable value must not hide the rest of the task
        return f"(cannot load: {type(exc).__name__}: {exc})"


async def _load_bytes(client: Client, artifact: DataArtifact) -> bytes:
    """A pickled artifact's bytes (from the event or the object store), not unpickled."""
    return await client.writer.artifacts.load_bytes(artifact_record(artifact.view))


async def _load(artifact: DataArtifact) -> Any:
    try:
        return await artifact.load()
    except RunstateError:
        raise
    except Exception as exc:
        raise RunstateError(
            f"cannot load {artifact.pathspec} ({artifact.codec}): {type(exc).__name__}: {exc}"
        ) from None


# -- watch -------------------------------------------------------------------


_WAIT_OPTION = click.option(
    "--wait",
    is_flag=True,
    help="Wait for the object if it does not exist yet (default: exit 2, as for a typo).",
)


async def _exists(client: Client, path: Pathspec) -> bool:
    """Whether the log holds any event of ``path`` (a step exists once it has a task)."""
    async for _ in client.log.read(client.subjects.for_pathspec(path), limit=1):
        return True
    return False


async def _require(client: Client, pathspec: str, path: Pathspec, *, wait: bool) -> None:
    """Raise ``NotFound`` unless ``path`` exists, or ``wait`` says to wait for it (say so)."""
    if await _exists(client, path):
        return
    if not wait:
        raise NotFound(f"{pathspec} does not exist (add --wait to wait for it)")
    click.echo(f"{pathspec} does not exist yet; waiting for it (Ctrl-C to stop)", err=True)


def _follower(client: Client) -> Client:
    """A client on ``client``'s connection that rides out any outage (``watch``, ``-f``).

    The reading commands give up connecting after a few seconds; once
    following, an outage is reported as it comes and goes
    (``_reporting_connection``), and the follow resumes whenever NATS is back.
    """
    assert client.nc is not None
    settings = client.settings.replace(retry_budget=math.inf)
    return Client.over_nats(client.nc, settings, namespace=None)


#: seconds a follower goes on after its embedded server's process has gone, then gives up
_GONE_SERVER_GRACE = 5.0


@asynccontextmanager
async def _reporting_connection(client: Client, *, embedded: bool) -> AsyncIterator[None]:
    """Say on stderr when the connection is lost and regained, while the block runs.

    On the embedded server (``embedded``), once its process has gone for
    ``_GONE_SERVER_GRACE`` seconds nobody will bring it back on that port:
    raise ``Unavailable`` then, instead of waiting for ever.
    """
    server_pid = _embedded_pid(client.settings.data_dir) if embedded else None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_report_connection, client, server_pid)
        yield
        tg.cancel_scope.cancel()


def _embedded_pid(data_dir: Path) -> int | None:
    recorded = _read_server_json(data_dir)
    pid = recorded.get("pid") if recorded is not None else None
    return pid if isinstance(pid, int) else None


async def _report_connection(client: Client, server_pid: int | None) -> None:
    nc = client.nc
    assert nc is not None
    url = client.settings.nats_url
    lost_at: float | None = None
    gone_at: float | None = None
    while True:
        await anyio.sleep(0.2)
        if nc.is_connected:
            if lost_at is not None:
                click.echo(f"reconnected to NATS at {url}", err=True)
            lost_at = gone_at = None
            continue
        now = time.monotonic()
        if lost_at is None:
            lost_at = now
            click.echo(
                f"lost the connection to NATS at {url}; reconnecting (Ctrl-C to stop)", err=True
            )
        if server_pid is not None and gone_at is None and not _pid_alive(server_pid):
            gone_at = now
        if nc.is_closed:
            raise Unavailable(f"the connection to NATS at {url} was closed; follow again")
        if gone_at is not None and now - gone_at >= _GONE_SERVER_GRACE:
            raise Unavailable(
                f"the embedded NATS server of {client.settings.data_dir} (pid {server_pid}) "
                "has stopped, with the process that ran it; start it again with "
                f"runstate server --data-dir {client.settings.data_dir}, then follow again"
            )


@click.command()
@global_options()
@click.argument("pathspec")
@_WAIT_OPTION
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    metavar="KEY",
    help="Show this metric of each running task: latest value and sparkline (repeatable).",
)
@reporting_errors
def watch(pathspec: str, wait: bool, metrics: tuple[str, ...]) -> None:
    """Watch a run (or a flow, step or task) live until it finishes.

    Shows the run's state, each step's progress and task counts by state,
    and the latest events, updated as events arrive. A run, step or task
    watch ends when its run finishes; a flow watch runs until Ctrl-C.
    Ctrl-C exits with status 0. When stdout is not a terminal it prints
    one line per event instead. An object that does not exist is an error
    (exit 2) unless --wait says to wait for it.

    With --metric, running tasks (up to 12) show the metric's latest value
    and a sparkline of its recent points, followed live from the metric
    points stream; not on a terminal, one line per row logged.

    \b
    Examples:
      runstate watch Train/42
      runstate watch Train/43 --wait
      runstate watch Train/42 --metric loss --metric acc
    """
    configure_logs("warning")
    path = parse_pathspec(pathspec, max_depth=4)
    settings = reading_settings(current_options().settings())
    console = new_console()
    live = console.is_terminal
    run_pathspec = path.run_pathspec if path.run is not None else None

    async def body() -> None:
        async with connect(settings=settings, namespace=None) as connected:
            client = _follower(connected)
            board = LiveBoard(f"watching {pathspec}")
            tails = metric_tails(client.log, metrics, console, live=live)
            async with _reporting_connection(client, embedded=settings.nats_url is None):
                await _require(client, pathspec, path, wait=wait)
                async with client.watch(pathspec) as changes:
                    if live:
                        await _watch_live(changes, board, console, run_pathspec, tails)
                    else:
                        await _watch_plain(changes, board, console, run_pathspec, tails)

    anyio.run(stoppable, body)


def _run_finished(board: LiveBoard, run_pathspec: str | None) -> bool:
    run = board.runs.get(run_pathspec) if run_pathspec is not None else None
    return run is not None and run.finished


async def _watch_live(
    changes: Any,
    board: LiveBoard,
    console: Console,
    run_pathspec: str | None,
    tails: MetricTails | None = None,
) -> None:
    shown = board if tails is None else Group(board, tails)
    with Live(shown, console=console, auto_refresh=False) as live:
        async with tailing(tails), anyio.create_task_group() as tg:

            async def refresh() -> None:
                while True:
                    live.refresh()
                    await anyio.sleep(0.15)

            tg.start_soon(refresh)
            async for change in changes:
                board.apply(change)
                await track_running(tails, board, change)
                if change.event is not None and board.notes and board.runs:
                    board.notes.clear()  # the run it waited for exists now
                if change.event is None and not board.runs and run_pathspec is not None:
                    board.note(
                        f"{run_pathspec} does not exist yet; waiting for it (Ctrl-C to stop)"
                    )
                if _run_finished(board, run_pathspec):
                    break
            tg.cancel_scope.cancel()
        live.refresh()


async def _watch_plain(
    changes: Any,
    board: LiveBoard,
    console: Console,
    run_pathspec: str | None,
    tails: MetricTails | None = None,
) -> None:
    async with tailing(tails):
        await _print_changes(changes, board, console, run_pathspec, tails)


async def _print_changes(
    changes: Any,
    board: LiveBoard,
    console: Console,
    run_pathspec: str | None,
    tails: MetricTails | None,
) -> None:
    async for change in changes:
        board.apply(change)
        await track_running(tails, board, change)
        if change.event is None:
            for run in board.shown_runs():
                console.print(_run_line(run), soft_wrap=True)
            if _run_finished(board, run_pathspec):
                return
            continue
        console.print(
            event_line(change.sequence, change.event, index=change.position[1]), soft_wrap=True
        )
        if _run_finished(board, run_pathspec):
            assert run_pathspec is not None
            console.print(_run_line(board.runs[run_pathspec]), soft_wrap=True)
            return


def _run_line(run: RunView) -> Text:
    text = Text(f"{run.pathspec}  ", style="bold")
    text.append_text(state_text(run.state.value, run.label))
    if run.duration is not None:
        text.append(f"  {format_duration(run.duration)}")
    text.append(f"  {run.tasks_done}/{run.tasks_total} tasks  ")
    for step in run.steps:
        text.append(f"  {step.name}: ")
        text.append_text(counts_text(step.counts()))
    if run.message:
        text.append(f"  {run.message}")
    return text


# -- events ------------------------------------------------------------------


@click.command()
@global_options()
@click.argument("pathspec")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing new events as they are written (Ctrl-C to stop).",
)
@click.option(
    "--since",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="SEQ",
    help="Start at this stream sequence.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line: sequence, index, subject, event.",
)
@_WAIT_OPTION
@reporting_errors
def events(pathspec: str, follow: bool, since: int, as_json: bool, wait: bool) -> None:
    """Print the event history of a flow, run, step or task, oldest first.

    Each line: stream sequence, time, type, pathspec, attempt, summary.
    Read straight from the event stream (no projector needed). An object
    with no events is an error (exit 2) unless --follow --wait says to wait
    for it.

    \b
    Examples:
      runstate events Train/42
      runstate events Train/42/train/7 --json
      runstate events Train --follow
    """
    configure_logs("warning")
    path = parse_pathspec(pathspec, max_depth=4)
    if wait and not follow:
        raise click.UsageError("--wait applies with --follow")
    settings = reading_settings(current_options().settings())
    console = new_console()

    async def body() -> None:
        count = 0
        async with (
            connect(settings=settings, namespace=None, projector=False) as connected,
            _reporting_connection(connected, embedded=settings.nats_url is None),
        ):
            client = _follower(connected) if follow else connected
            await _require(client, pathspec, path, wait=wait)
            async with client.events(pathspec, since=since, follow=follow) as records:
                async for record in records:
                    count += 1
                    if as_json:
                        line = {
                            "sequence": record.sequence,
                            "index": record.index,
                            "subject": record.subject,
                            "event": record.event.model_dump(mode="json"),
                        }
                        click.echo(orjson.dumps(line).decode())
                    else:
                        console.print(
                            event_line(record.sequence, record.event, index=record.index),
                            soft_wrap=True,
                        )
        if not count:
            click.echo(f"no events for {pathspec} from sequence {since}", err=True)

    if follow:
        anyio.run(stoppable, body)
    else:
        anyio.run(body)
