"""The ``logs`` command: a task's stdout or stderr, read from the log lines stream."""

from __future__ import annotations

import sys

import anyio
import click

from runstate.client._client import connect
from runstate.client._logs import follow_log_lines, read_log_text
from runstate.client.cli._app import (
    configure_logs,
    current_options,
    global_options,
    reading_settings,
    reporting_errors,
    stoppable,
)
from runstate.client.cli._read import _follower, _reporting_connection
from runstate.engine._names import parse_pathspec
from runstate.engine.errors import NotFound

__all__ = ["logs"]


@click.command()
@global_options()
@click.argument("pathspec")
@click.option("--stderr", "stderr", is_flag=True, help="Print the task's stderr, not its stdout.")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing lines as they are written (Ctrl-C to stop).",
)
@click.option(
    "--attempt",
    type=click.IntRange(min=0),
    help="The task's attempt (default: the latest).",
)
@reporting_errors
def logs(pathspec: str, stderr: bool, follow: bool, attempt: int | None) -> None:
    """Print what a task wrote to stdout (or stderr), as it wrote it.

    Read straight from the log lines stream (no projector needed). With
    --follow, the lines written so far and then each new one, until Ctrl-C
    (exit status 0); a lost connection is reported and the follow resumes
    where it was once NATS is back.

    \b
    Examples:
      runstate logs Train/42/train/7
      runstate logs Train/42/train/7 --stderr --attempt 0
      runstate logs Train/42/train/7 --follow
    """
    configure_logs("warning")
    parse_pathspec(pathspec, min_depth=4, max_depth=4)
    stream = "stderr" if stderr else "stdout"
    settings = reading_settings(current_options().settings())

    async def body() -> None:
        async with (
            connect(settings=settings, namespace=None, projector=False) as connected,
            _reporting_connection(connected, embedded=settings.nats_url is None),
        ):
            client = _follower(connected) if follow else connected
            latest = (await client.writer.task(pathspec)).attempt  # NotFound: no such task
            if attempt is not None and attempt > latest:
                raise NotFound(f"task {pathspec} has no attempt {attempt} (its latest is {latest})")
            number = latest if attempt is None else attempt
            out = sys.stdout
            if not follow:
                out.write(await read_log_text(client.log, pathspec, number, stream))
                return
            async with follow_log_lines(client.log, pathspec, number, stream=stream) as lines:
                async for line in lines:
                    out.write(line.text)
                    out.flush()

    if follow:
        anyio.run(stoppable, body)
    else:
        anyio.run(body)
