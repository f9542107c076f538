"""The ``runstate`` command group: global options, error reporting, running until stopped.

Infrastructure: ``server`` (the embedded NATS JetStream server with a
projector replica), ``projector`` (one replica). A first look: ``demo``.
Reads: ``runs``, ``show``, ``watch``, ``events``. Measurements: ``bench``.
(``_main`` puts the commands, each in its own module, on this group.)

The connection options ``--nats``, ``--data-dir``, ``--prefix`` and
``--user`` may come before or after the command name (``runstate --nats URL
runs`` and ``runstate runs --nats URL`` are the same); ``runs`` keeps
``--user`` for its own filter. Without ``--nats`` or ``RUNSTATE_NATS_URL``
a command uses the local runstate of the data directory (``runstate server``
in the background), starting it when none runs.

Errors print one line, ``error: <message>``, on stderr and exit with 2 for
bad input (a malformed pathspec, an object that does not exist, a bad
filter) or 1 for anything else (NATS unreachable, a server that is too old).
Each command configures logging (the library never does): structlog
key-value lines on stderr, JSON when stderr is not a terminal;
``RUNSTATE_LOG_LEVEL`` sets their level.
"""

from __future__ import annotations

import functools
import os
import shutil
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
from rich.console import Console

from runstate.client._client import Client, connect
from runstate.engine._logging import configure_logging, get_logger
from runstate.engine._settings import Settings, _default_data_dir
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

__all__ = [
    "BadInputError",
    "CliError",
    "GlobalOptions",
    "InterruptedByUser",
    "cli",
    "command_name",
    "configure_logs",
    "current_options",
    "echo_json",
    "global_options",
    "new_console",
    "on_signal",
    "read_caught_up",
    "reading_settings",
    "reporting_errors",
    "stoppable",
]

log = get_logger("runstate.cli")

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


def reporting_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn any error a command raises into one line on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except BaseException as exc:
            if any(isinstance(leaf, BrokenPipeError) for leaf in _leaves(exc)):
                # the reader went away (``runstate events X | head``): stop quietly
                _silence_stdout()
                raise click.exceptions.Exit(0) from None
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


def command_name() -> str:
    """How to type ``runstate`` here: its name if the shell finds this one, else its path.

    After ``python3 -m venv .venv && .venv/bin/pip install ...`` without
    activating the venv, ``runstate`` is not on ``PATH``: the demo's next
    commands then say ``.venv/bin/runstate``.
    """
    script = Path(sys.executable).parent / "runstate"
    found = shutil.which("runstate")
    if not script.exists() or (found is not None and Path(found).resolve() == script.resolve()):
        return "runstate"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if param.name == "nats" and value is not None and not value.strip():
        raise click.BadParameter(
            "is empty; give a NATS URL such as nats://127.0.0.1:4222, or leave --nats out "
            "to use the embedded server of --data-dir",
            ctx=ctx,
            param=param,
        )
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


def current_options() -> GlobalOptions:
    return click.get_current_context().ensure_object(GlobalOptions)


def configure_logs(default: str) -> None:
    """Configure logging for this command: ``RUNSTATE_LOG_LEVEL``, else ``default``."""
    configure_logging(os.environ.get("RUNSTATE_LOG_LEVEL") or default, force=True)


#: the width of output to a file or pipe: wide enough that no table cell is cut
_UNBOUNDED_WIDTH = 10_000


def new_console() -> Console:
    """The console a command prints to: the terminal's width, or no limit off a terminal.

    rich gives a file or pipe 80 columns, which would cut a table's cells
    (tags, messages); ``COLUMNS`` still sets the width when given.
    """
    console = _Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = _Console(highlight=False, width=_UNBOUNDED_WIDTH)
    return console


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # the reader went away (``runstate runs | head``): stop quietly, as it asked
        # (rich's own handler exits with status 1)
        _silence_stdout()
        raise click.exceptions.Exit(0)


def _silence_stdout() -> None:
    """Send what is left for stdout nowhere: its reader has gone."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=_json_default).decode())


def _json_default(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# -- running -----------------------------------------------------------------


async def on_signal(action: Callable[[], None], *, task_status: anyio.abc.TaskStatus[None]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            action()
            return


async def stoppable(body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` until it returns or SIGINT/SIGTERM arrives (a clean stop, not an error)."""
    async with anyio.create_task_group() as tg:
        await tg.start(on_signal, tg.cancel_scope.cancel)
        await body()
        tg.cancel_scope.cancel()


async def read_caught_up(
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


def reading_settings(settings: Settings) -> Settings:
    """Settings for a command that only reads: it gives up sooner, and creates no data directory.

    Raises ``BadInputError`` when, without a NATS URL, the data directory does not
    exist: only the commands that create a store (``server``, ``projector``,
    ``demo``) make one.
    """
    if settings.nats_url is None and not settings.data_dir.is_dir():
        raise BadInputError(
            f"there is no runstate data directory {settings.data_dir}; start one with "
            f"runstate server --data-dir {settings.data_dir} (or runstate demo), "
            "or give --nats URL"
        )
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

    Without --nats (or RUNSTATE_NATS_URL) every command uses the local runstate
    of --data-dir (a runstate server in the background), starting it when none
    runs; see runstate server status and runstate server stop.
    """
    ctx.ensure_object(GlobalOptions)
