"""The ``runstate`` command line.

Infrastructure: ``server`` (the embedded NATS JetStream server with a
projector replica), ``projector`` (one replica). A first look: ``demo``.
Reads: ``runs``, ``show``, ``watch``, ``events``. ``bench`` when installed.

The connection options ``--nats``, ``--data-dir``, ``--prefix`` and
``--user`` may come before or after the command name (``runstate --nats URL
runs`` and ``runstate runs --nats URL`` are the same); ``runs`` keeps
``--user`` for its own filter. Without ``--nats`` or ``RUNSTATE_NATS_URL``
a command uses the embedded server of the data directory, starting it (and
an in-process projector) when none runs.

Errors print one line, ``error: <message>``, on stderr and exit with 2 for
bad input (a malformed pathspec, an object that does not exist, a bad
filter) or 1 for anything else (NATS unreachable, a server that is too old).
Logs are structlog key-value lines on stderr, JSON when stderr is not a
terminal; ``RUNSTATE_LOG_LEVEL`` sets their level.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import click
import nats.errors
import orjson
import structlog
from rich.console import Console
from rich.live import Live
from rich.text import Text

from runstate.client._client import Client, connect
from runstate.client._objects import DataArtifact, Flow, Run, Step, Task
from runstate.client._render import (
    LiveBoard,
    artifact_header,
    counts_text,
    event_line,
    format_duration,
    preview_text,
    run_tree,
    runs_table,
    state_text,
    step_tree,
    task_tree,
    value_preview,
)
from runstate.engine._logging import configure_logging
from runstate.engine._names import parse_pathspec
from runstate.engine._settings import Settings, _default_data_dir
from runstate.engine._states import RunState, TaskState
from runstate.engine.errors import (
    BadFilter,
    ConfigurationError,
    IllegalTransition,
    InvalidEvent,
    InvalidName,
    NotFound,
    NotInNamespace,
    PayloadTooLarge,
    RunstateError,
    Timeout,
)
from runstate.projections._views import RunView

__all__ = ["cli", "main"]

log = structlog.get_logger("runstate.cli")

T = TypeVar("T")

#: errors caused by what the user typed: exit code 2, like a usage error
_BAD_INPUT = (
    InvalidName,
    InvalidEvent,
    PayloadTooLarge,
    IllegalTransition,
    NotFound,
    NotInNamespace,
    BadFilter,
    ConfigurationError,
)

#: seconds a reading command tries to reach NATS before it gives up
_CONNECT_BUDGET = 3.0

#: a step lists every task up to this many (in a run's tree, in a step's own); beyond,
#: only the unfinished and unsuccessful ones
_TASKS_IN_RUN = 30
_TASKS_IN_STEP = 500


# -- errors ------------------------------------------------------------------


class CliError(click.ClickException):
    """An error shown as one line, ``error: <message>``; exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class BadInputError(CliError):
    """What the user typed names nothing or is malformed; exit status 2, as a usage error."""

    exit_code = 2


class InterruptedByUser(CliError):
    """Ctrl-C during a command that is not meant to run until stopped; exit status 130."""

    exit_code = 130


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _as_cli_error(exc: BaseException) -> BaseException:
    """What to raise for ``exc``: a ``CliError``, unless click or the interpreter owns it."""
    leaves = list(_leaves(exc))
    for kinds in (
        (click.exceptions.ClickException, click.exceptions.Exit, SystemExit),
        (RunstateError,),
        (OSError,),
    ):
        for leaf in leaves:
            if isinstance(leaf, kinds):
                if isinstance(leaf, RunstateError):
                    if isinstance(leaf, _BAD_INPUT):
                        return BadInputError(leaf.message)
                    return CliError(leaf.message)
                if isinstance(leaf, OSError):
                    return CliError(str(leaf) or type(leaf).__name__)
                return leaf
    leaf = leaves[0]
    if isinstance(leaf, KeyboardInterrupt):
        return InterruptedByUser("interrupted")
    if isinstance(leaf, nats.errors.Error):
        return CliError(f"NATS: {leaf or type(leaf).__name__}")
    if os.environ.get("RUNSTATE_DEBUG"):
        return exc
    return CliError(
        f"internal error: {type(leaf).__name__}: {leaf} (set RUNSTATE_DEBUG=1 to see the traceback)"
    )


def _reporting_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn any error a command raises into one line on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except BaseException as exc:
            if any(isinstance(leaf, BrokenPipeError) for leaf in _leaves(exc)):
                # the reader went away (``runstate events X | head``): stop quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise click.exceptions.Exit(1) from None
            error = _as_cli_error(exc)
            if error is exc:
                raise
            raise error from None

    return wrapper


# -- options -----------------------------------------------------------------


@dataclass
class GlobalOptions:
    """The connection options, from the group and the command (the command's win)."""

    nats: str | None = None
    data_dir: Path | None = None
    prefix: str | None = None
    user: str | None = None

    def settings(self, **overrides: Any) -> Settings:
        return Settings.from_env(
            nats_url=self.nats,
            data_dir=self.data_dir,
            prefix=self.prefix,
            user=self.user,
            **overrides,
        )

    def hint(self) -> str:
        """These options as a command line, for the commands the CLI suggests."""
        parts = []
        if self.nats:
            parts.append(f" --nats {self.nats}")
        if self.data_dir:
            parts.append(f" --data-dir {self.data_dir}")
        if self.prefix:
            parts.append(f" --prefix {self.prefix}")
        return "".join(parts)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and param.name is not None:
        setattr(ctx.ensure_object(GlobalOptions), param.name, value)
    return value


_GLOBAL_OPTIONS = {
    "nats": click.option(
        "--nats",
        metavar="URL",
        expose_value=False,
        callback=_remember,
        help="NATS URL (several separated by commas). Default: $RUNSTATE_NATS_URL, "
        "else the embedded server of --data-dir.",
    ),
    "data_dir": click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        expose_value=False,
        callback=_remember,
        help="Where the embedded server and local read store live. "
        f"Default: $RUNSTATE_DATA_DIR, else {_default_data_dir()}.",
    ),
    "prefix": click.option(
        "--prefix",
        expose_value=False,
        callback=_remember,
        help="Subject and stream prefix. Default: $RUNSTATE_PREFIX, else rs.",
    ),
    "user": click.option(
        "--user",
        expose_value=False,
        callback=_remember,
        help="Who is acting (event actor). Default: $RUNSTATE_USER, else the login name.",
    ),
}


def global_options(
    *, exclude: Sequence[str] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the connection options to a command (they are on the group too)."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        for name, option in reversed(_GLOBAL_OPTIONS.items()):
            if name not in exclude:
                function = option(function)
        return function

    return decorate


def _options() -> GlobalOptions:
    return click.get_current_context().ensure_object(GlobalOptions)


def _configure_logs(default: str) -> None:
    configure_logging(os.environ.get("RUNSTATE_LOG_LEVEL") or default, force=True)


def _console() -> Console:
    return Console(highlight=False)


def _echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=_json_default).decode())


def _json_default(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# -- running -----------------------------------------------------------------


async def _on_signal(
    action: Callable[[], None], *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            action()
            return


async def _stoppable(body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` until it returns or SIGINT/SIGTERM arrives (a clean stop, not an error)."""
    async with anyio.create_task_group() as tg:
        await tg.start(_on_signal, tg.cancel_scope.cancel)
        await body()
        tg.cancel_scope.cancel()


async def _read(
    settings: Settings,
    body: Callable[[Client, int | None], Awaitable[T]],
    *,
    namespace: str | None = None,
) -> T:
    """Connect, then run ``body(client, after)`` so it sees every event written before now.

    ``after`` is the events stream's last sequence; if the projector cannot
    catch up to it in time, say so and show what it has.
    """
    async with connect(settings=settings, namespace=namespace) as client:
        after = await client.log.stream_last_sequence()
        try:
            return await body(client, after or None)
        except Timeout:
            if not after:
                raise
        status = await client.status()
        click.echo(
            f"warning: the projector has applied {status['applied']} of {after} events; "
            "showing what it has",
            err=True,
        )
        return await body(client, None)


def _reading(settings: Settings) -> Settings:
    return settings.replace(retry_budget=min(settings.retry_budget, _CONNECT_BUDGET))


# -- the group ---------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@global_options()
@click.version_option(package_name="runstate", prog_name="runstate")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """runstate: an event-sourced run-state engine for workflow and ML runs, on NATS JetStream.

    Start with the demo, which needs nothing else running:

    \b
      runstate demo
      runstate runs Train
      runstate show Train/1

    Without --nats (or RUNSTATE_NATS_URL) every command uses the embedded
    server of --data-dir, starting it when none runs.
    """
    ctx.ensure_object(GlobalOptions)


# -- server and projector ----------------------------------------------------


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold ``<store>.lock`` so two replicas never fold into one store file."""
    store.parent.mkdir(parents=True, exist_ok=True)
    with open(store.with_name(store.name + ".lock"), "a+b") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CliError(
                f"the read store {store} is in use by another replica; give this one its own "
                "with --store PATH (or --data-dir)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


async def _serve(
    settings: Settings,
    *,
    port: int | None,
    replica: bool,
    store: Path | None,
    name: str,
    rebuild: bool,
    own_server: bool,
) -> None:
    """Run the embedded server (without a URL) and a replica, until cancelled."""
    from runstate.engine._connection import open_nats, provision
    from runstate.engine._server import EmbeddedHandle, ensure_embedded
    from runstate.projections._runner import serve_replica

    embedded: EmbeddedHandle | None = None
    if settings.nats_url is None:
        with anyio.CancelScope(shield=True):
            handle = await anyio.to_thread.run_sync(
                functools.partial(ensure_embedded, settings.data_dir, port=port)
            )
        if own_server and not handle.owned:
            raise CliError(
                f"a runstate server already runs on {settings.data_dir} at {handle.url} "
                f"(pid {handle.pid}); use it, or stop it first"
            )
        embedded = handle
        settings = settings.replace(nats_url=handle.url)
    if store is None:
        # a second replica beside an embedded server's own gets its own file
        attached = embedded is not None and not embedded.owned
        store = settings.data_dir / (f"views-{name}.sqlite3" if attached else "views.sqlite3")
    try:
        with store_lock(store) if replica else contextlib.nullcontext():
            nc = await open_nats(settings, name=f"runstate-{name}")
            try:
                await provision(nc, settings)
                async with anyio.create_task_group() as tg:
                    if replica:
                        await tg.start(
                            functools.partial(
                                serve_replica,
                                nc,
                                settings,
                                store,
                                name=name,
                                rebuild=rebuild,
                                dedicated=True,  # this process exists for the replica
                            )
                        )
                    _announce(settings, embedded, store if replica else None)
                    await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await nc.close()
    finally:
        if embedded is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(embedded.stop)


def _announce(settings: Settings, embedded: Any, store: Path | None) -> None:
    url = settings.nats_url
    if embedded is not None and embedded.owned:
        click.echo(f"runstate server ready: {url}")
        click.echo(f"  data dir: {settings.data_dir}")
        click.echo(f"  connect:  export RUNSTATE_NATS_URL={url}")
    else:
        click.echo(f"runstate replica ready on {url}")
    if store is not None:
        click.echo(f"  projector store: {store}")
    else:
        click.echo("  no projector: run `runstate projector` to answer queries")
    click.echo("  stop with Ctrl-C")


@cli.command()
@global_options()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Client port of the embedded server (default: a free one).",
)
@click.option(
    "--no-projector", is_flag=True, help="Run only the NATS server, no projector replica."
)
@_reporting_errors
def server(port: int | None, no_projector: bool) -> None:
    """Run the embedded NATS JetStream server and a projector replica, in the foreground.

    Starts nats-server with JetStream on --data-dir, creates the streams,
    and runs a projector replica (read store: <data-dir>/views.sqlite3)
    with its query service and heartbeat reaper. It prints the NATS URL and
    runs until Ctrl-C or SIGTERM, then stops the server. The data directory
    survives restarts: events are kept and the replica resumes from its
    checkpoint. With --nats URL it runs only the replica, against that NATS.

    \b
    Example:
      runstate server --data-dir /var/lib/runstate --port 4222
    """
    _configure_logs("info")
    settings = _options().settings()
    if settings.nats_url is not None:
        if port is not None:
            raise click.UsageError(
                "--port is the embedded server's port; it does not apply with --nats"
            )
        if no_projector:
            raise click.UsageError(
                "with --nats the server command runs only a replica; --no-projector leaves nothing"
            )
    anyio.run(
        _stoppable,
        functools.partial(
            _serve,
            settings,
            port=port,
            replica=not no_projector,
            store=None,
            name="server",
            rebuild=False,
            own_server=True,
        ),
    )


@cli.command()
@global_options()
@click.option(
    "--rebuild", is_flag=True, help="Drop the read store and fold the log again from sequence 1."
)
@click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The replica's SQLite read store. Default: <data-dir>/views.sqlite3 "
    "(views-<name>.sqlite3 beside an embedded server another process runs).",
)
@click.option(
    "--name", default="projector", show_default=True, help="The replica's name in logs and status."
)
@_reporting_errors
def projector(rebuild: bool, store: Path | None, name: str) -> None:
    """Run one projector replica until stopped: fold events into a read store and answer queries.

    Connects to --nats (or RUNSTATE_NATS_URL, or the embedded server of
    --data-dir, starting it if none runs), folds the events stream into its
    store from its checkpoint, and serves the query service and the
    heartbeat reaper. Run several for availability: they share the queries.

    \b
    Example:
      runstate projector --nats nats://nats:4222 --store /var/lib/runstate/views.sqlite3
    """
    _configure_logs("info")
    settings = _options().settings()
    anyio.run(
        _stoppable,
        functools.partial(
            _serve,
            settings,
            port=None,
            replica=True,
            store=store,
            name=name,
            rebuild=rebuild,
            own_server=False,
        ),
    )


# -- demo --------------------------------------------------------------------


@cli.command()
@global_options()
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=20.0,
    show_default=True,
    help="Stop after this many seconds at most.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Concurrent workers processing the foreach tasks.",
)
@click.option(
    "--runs",
    type=click.IntRange(1, 50),
    default=5,
    show_default=True,
    help="How many runs (Train and Evaluate, alternating).",
)
@click.option(
    "--tasks",
    type=click.IntRange(1, 500),
    default=12,
    show_default=True,
    help="Foreach width of a Train run (Evaluate runs use two thirds).",
)
@click.option(
    "--no-live", is_flag=True, help="Print plain progress lines instead of the live view."
)
@_reporting_errors
def demo(duration: float, workers: int, runs: int, tasks: int, no_live: bool) -> None:
    """Run a simulated ML workload and show it live: the quickest way to see runstate work.

    Runs of two flows, Train and Evaluate, each start -> a foreach fan-out
    processed by concurrent workers -> join -> end. Some tasks fail and are
    retried, one worker crashes (the reaper marks its task crashed), one run
    fails; tasks save metrics and a small model, and record metadata; some
    runs are tagged production. Without --nats it uses the embedded server
    (starting it and a projector when none runs). It ends when every run has
    finished or after --duration, prints a summary and the commands to look
    at what it wrote.

    \b
    Example:
      runstate demo --duration 30 --workers 8
    """
    from runstate.client._demo import DemoConfig, run_demo, summary_lines

    console = _console()
    live = not no_live and console.is_terminal
    _configure_logs("error")  # log lines would tear the live view
    options = _options()
    settings = options.settings()
    config = DemoConfig(duration=duration, workers=workers, runs=runs, tasks=tasks, live=live)

    async def main() -> Any:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(_on_signal, stop.set)
            result = await run_demo(settings, config, console, stop=stop)
            tg.cancel_scope.cancel()
        return result

    result = anyio.run(main)
    for line in summary_lines(result, options.hint()):
        console.print(line, soft_wrap=True)


# -- runs --------------------------------------------------------------------


@cli.command()
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
@_reporting_errors
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
    _configure_logs("warning")
    if namespace and all_namespaces:
        raise click.UsageError("--namespace and --all-namespaces contradict each other")
    if flow is not None:
        parse_pathspec(flow, max_depth=1)
    settings = _reading(_options().settings())

    async def body(client: Client, after: int | None) -> tuple[list[RunView], bool]:
        page = await client.runs(
            flow, tags=tags, state=list(states) or None, user=user, page_size=limit, after=after
        )
        return [run.view for run in page.items], page.has_next

    views, more = anyio.run(functools.partial(_read, settings, body, namespace=namespace))
    if as_json:
        _echo_json([view.model_dump(mode="json") for view in views])
        return
    console = _console()
    if not views:
        console.print(
            "no runs match" if (flow or tags or states or user) else "no runs yet", style="dim"
        )
        return
    console.print(runs_table(views))
    if more:
        console.print(f"the newest {limit} shown; see more with --limit", style="dim")


# -- show --------------------------------------------------------------------


@cli.command()
@global_options()
@click.argument("pathspec")
@click.option(
    "--attempt",
    type=click.IntRange(min=0),
    help="The attempt of a task or artifact (default: the latest).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the object's view as JSON.")
@_reporting_errors
def show(pathspec: str, attempt: int | None, as_json: bool) -> None:
    """Show a flow, run, step, task or artifact.

    A flow: its runs. A run: a tree of its steps and tasks with states and
    durations. A step: its tasks. A task: its attempts (with exceptions),
    metadata and artifacts. An artifact: its value.

    \b
    Examples:
      runstate show Train/1
      runstate show Train/1/train/5 --attempt 0
      runstate show Train/1/end/20/model
    """
    _configure_logs("warning")
    path = parse_pathspec(pathspec)
    if attempt is not None and path.task is None:
        raise click.UsageError("--attempt applies to a task or an artifact pathspec")
    settings = _reading(_options().settings())
    console = _console()

    async def body(client: Client, after: int | None) -> None:
        obj = await client.get(pathspec, attempt=attempt, after=after)
        if as_json:
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
            console.print(value_preview(await _load(obj)))

    anyio.run(functools.partial(_read, settings, body))


async def _tasks_to_show(
    client: Client, step: Step, after: int | None, limit: int
) -> tuple[list[Any], int]:
    """Up to ``limit`` tasks of a step: all when that many, else the unsuccessful and unfinished."""
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
    if not artifact.is_inline:
        return f"(in the object store: runstate show {artifact.pathspec})"
    try:
        return preview_text(artifact.data)
    except Exception as exc:  # an unpicklable value must not hide the rest of the task
        return f"(cannot load: {type(exc).__name__}: {exc})"


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


@cli.command()
@global_options()
@click.argument("pathspec")
@_reporting_errors
def watch(pathspec: str) -> None:
    """Watch a run (or a flow, step or task) live until it finishes.

    Shows the run's state, each step's progress and task counts by state,
    and the latest events, updated as events arrive. A run, step or task
    watch ends when its run finishes; a flow watch runs until Ctrl-C.
    Ctrl-C exits with status 0. When stdout is not a terminal it prints
    one line per event instead.

    \b
    Example:
      runstate watch Train/42
    """
    _configure_logs("warning")
    path = parse_pathspec(pathspec, max_depth=4)
    settings = _reading(_options().settings())
    console = _console()
    live = console.is_terminal
    run_pathspec = path.run_pathspec if path.run is not None else None

    async def body() -> None:
        async with connect(settings=settings, namespace=None) as client:
            board = LiveBoard(f"watching {pathspec}")
            async with client.watch(pathspec) as changes:
                if live:
                    await _watch_live(changes, board, console, run_pathspec)
                else:
                    await _watch_plain(changes, board, console, run_pathspec)

    anyio.run(_stoppable, body)


def _run_finished(board: LiveBoard, run_pathspec: str | None) -> bool:
    run = board.runs.get(run_pathspec) if run_pathspec is not None else None
    return run is not None and run.finished


async def _watch_live(
    changes: Any, board: LiveBoard, console: Console, run_pathspec: str | None
) -> None:
    with Live(board, console=console, auto_refresh=False) as live:
        async with anyio.create_task_group() as tg:

            async def refresh() -> None:
                while True:
                    live.refresh()
                    await anyio.sleep(0.15)

            tg.start_soon(refresh)
            async for change in changes:
                board.apply(change)
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
    changes: Any, board: LiveBoard, console: Console, run_pathspec: str | None
) -> None:
    async for change in changes:
        board.apply(change)
        if change.event is None:
            if not board.runs and run_pathspec is not None:
                click.echo(
                    f"{run_pathspec} does not exist yet; waiting for it (Ctrl-C to stop)", err=True
                )
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


@cli.command()
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
@_reporting_errors
def events(pathspec: str, follow: bool, since: int, as_json: bool) -> None:
    """Print the event history of a flow, run, step or task, oldest first.

    Each line: stream sequence, time, type, pathspec, attempt, summary.
    Read straight from the event stream (no projector needed).

    \b
    Examples:
      runstate events Train/42
      runstate events Train/42/train/7 --json
      runstate events Train --follow
    """
    _configure_logs("warning")
    parse_pathspec(pathspec, max_depth=4)
    settings = _reading(_options().settings())
    console = _console()

    async def body() -> None:
        count = 0
        async with connect(settings=settings, namespace=None, projector=False) as client:
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
        anyio.run(_stoppable, body)
    else:
        anyio.run(body)


# -- bench (another module; optional) ----------------------------------------

try:
    from runstate.client._bench import bench
except ModuleNotFoundError as exc:  # not written yet, or left out of this build
    if exc.name != "runstate.client._bench":
        raise
else:
    cli.add_command(bench)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``runstate`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="runstate")


if __name__ == "__main__":
    main()
