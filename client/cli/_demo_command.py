"""``runstate demo``: the command that runs the demo workload (``_demo``) and prints its summary."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import click

from runstate.client.cli._app import (
    command_name,
    configure_logs,
    current_options,
    global_options,
    new_console,
    on_signal,
    reporting_errors,
)
from runstate.client.cli._demo import DemoConfig, run_demo, summary_lines

__all__ = ["demo"]


@click.command()
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
@reporting_errors
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
    console = new_console()
    live = not no_live and console.is_terminal
    configure_logs("error")  # log lines would tear the live view
    options = current_options()
    settings = options.settings()
    config = DemoConfig(duration=duration, workers=workers, runs=runs, tasks=tasks, live=live)

    async def main() -> Any:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(on_signal, stop.set)
            result = await run_demo(settings, config, console, stop=stop)
            tg.cancel_scope.cancel()
        return result

    result = anyio.run(main)
    for line in summary_lines(result, options.hint(), command_name()):
        console.print(line, soft_wrap=True)
