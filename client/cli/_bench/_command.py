"""The ``runstate bench`` command: run the chosen benchmarks and print their report."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import click

from runstate.client.cli._bench._append import bench_append
from runstate.client.cli._bench._facade import bench_facade
from runstate.client.cli._bench._frame import bench_frame
from runstate.client.cli._bench._harness import _Place, _place, has_tls
from runstate.client.cli._bench._http import bench_http
from runstate.client.cli._bench._interleave import run_interleaved
from runstate.client.cli._bench._live import bench_live
from runstate.client.cli._bench._local import bench_local
from runstate.client.cli._bench._logs import bench_logs
from runstate.client.cli._bench._metrics import bench_metrics
from runstate.client.cli._bench._paired import (
    paired_json,
    paired_markdown,
    print_paired,
    run_paired,
)
from runstate.client.cli._bench._params import BenchParams
from runstate.client.cli._bench._projection import bench_projection
from runstate.client.cli._bench._reads import bench_reads
from runstate.client.cli._bench._report import (
    Report,
    _as_json,
    _load,
    _print_rich,
    machine_info,
    markdown,
)
from runstate.client.cli._bench._workload import bench_workload
from runstate.engine._logging import configure_logging

BENCHMARKS = (
    "append",
    "workload",
    "reads",
    "facade",
    "live",
    "projection",
    "metrics",
    "logs",
    "frame",
    "http",
    "local",
)


_PARAMETERS = {
    "append": ("repeat", "messages", "batch_events", "atomic_batch", "in_flight"),
    "workload": ("repeat", "runs", "tasks", "writers", "points", "projector"),
    "reads": (
        "runs",
        "tasks",
        "writers",
        "points",
        "calls",
        "scale_runs",
        "scale_task_runs",
        "as_of_events",
        "projector",
    ),
    "facade": ("calls",),
    "live": ("changes", "watchers", "watch_runs", "projector"),
    "projection": (
        "events",
        "events_per_commit",
        "tasks",
        "catchup_repeat",
        "lag_rate",
        "lag_seconds",
        "projector",
    ),
    "metrics": ("metric_rows", "metric_keys", "metric_scans", "calls", "projector"),
    "http": (
        "runs",
        "tasks",
        "writers",
        "calls",
        "scale_runs",
        "changes",
        "sse_clients",
        "http_writers",
        "projector",
    ),
    "logs": ("log_lines", "log_reads", "changes"),
    "frame": ("frame_runs", "frame_repeat", "calls", "projector"),
    "local": ("repeat", "calls"),
}


_ASYNC: dict[str, Callable[[_Place, BenchParams, Report], Awaitable[None]]] = {
    "append": bench_append,
    "workload": bench_workload,
    "reads": bench_reads,
    "live": bench_live,
    "projection": bench_projection,
    "metrics": bench_metrics,
    "http": bench_http,
    "logs": bench_logs,
    "frame": bench_frame,
}


def run_benchmark(name: str, params: BenchParams) -> Report:
    """Run one benchmark on its own server (or prefix) and return its report."""
    report = Report(name, params.for_report(*_PARAMETERS[name]))
    report.started_at = datetime.now(UTC).isoformat(timespec="seconds")
    report.load_before = _load()
    click.echo(f"{name}: starting (load {report.load_before[0]})", err=True)
    started = time.perf_counter()
    if name == "local":  # the local runstate of fresh data directories: no server to share
        if params.auth is not None:
            report.notes.append(
                "--auth does not apply: a local runstate asks for its data directory's token"
            )
        bench_local(params, report)
        report.duration_s = time.perf_counter() - started
        report.load_after = _load()
        return report
    if params.auth is not None and params.roles:
        report.notes.append(
            f"the roles' authorization of {params.auth}: admin provisions, the replica signs in "
            "as the projector, the benchmark's clients as the writer (`reads` times its reads as "
            "the reader)" + (", each with its client certificate" if has_tls(params.auth) else "")
        )
    elif params.auth is not None:
        report.notes.append(
            f"the TLS of {params.auth} alone: no authorization block, every client anonymous, "
            "each with its role's client certificate"
        )
    with _place(params.nats, params.auth, params.roles) as place:
        report.notes.append(f"server: {place.security}")
        if name == "facade":
            bench_facade(place, params, report)
        else:
            anyio.run(_ASYNC[name], place, params, report)
    report.duration_s = time.perf_counter() - started
    report.load_after = _load()
    return report


def run_benchmarks(names: Sequence[str], params: BenchParams) -> dict[str, Any]:
    """Run benchmarks in order; return the whole report as a JSON-ready dict."""
    machine = machine_info()
    reports = [run_benchmark(name, params) for name in names]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "nats_server": reports[0].server_version if reports else "?"},
        "reports": reports,
    }


def _writers(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        result = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter("give writer counts separated by commas, e.g. 1,8,64") from None
    if not result or min(result) < 1:
        raise click.BadParameter("writer counts must be at least 1")
    return result


_QUICK = {
    "repeat": 5,
    "messages": 5000,
    "scale_runs": 10_000,
    "calls": 200,
    "events": 100_000,
    "catchup_repeat": 1,
    "lag_seconds": 5.0,
    "metric_rows": 100_000,
    "metric_scans": 1,
    "log_lines": 100_000,
    "log_reads": 1,
}


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("benchmarks", nargs=-1, type=click.Choice([*BENCHMARKS, "all"]))
@click.option(
    "--nats",
    "nats_url",
    metavar="URL",
    help="Use this NATS server (a fresh prefix) instead of starting one.",
)
@click.option(
    "--auth",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="A `runstate auth init` directory: the server runs its authorization block (and TLS "
    "verifying client certificates, if made with --tls) and each client signs in as its role "
    "(to compare with a run without it: --paired).",
)
@click.option(
    "--paired",
    is_flag=True,
    help="With --auth: run each benchmark twice in this one invocation, plain and with "
    "DIR's authorization (and TLS if DIR has certificates), both at once on two servers "
    "taking turns before each timed sample, and report each figure's cost of the roles "
    "(local is skipped).",
)
@click.option(
    "--baseline",
    type=click.Choice(["plain", "tls"]),
    default="plain",
    show_default=True,
    help="With --paired: what the secured run is compared with: a plain server, or (a --tls "
    "DIR) a server running DIR's TLS alone, no roles: the cost of the roles under TLS.",
)
@click.option(
    "--sequential",
    is_flag=True,
    help="With --paired: run the halves one after the other instead of at once taking turns "
    "before each timed sample.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="With --paired: run each half this many times, alternating (plain, secured, "
    "secured, plain, ...), and pool each half's samples; the report shows each round's cost.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--markdown", "as_markdown", is_flag=True, help="Print the report as Markdown tables."
)
@click.option(
    "--quick",
    is_flag=True,
    help="Smaller defaults: 5 repetitions, 10,000-run scale, 100,000-event log.",
)
@click.option(
    "--repeat", type=click.IntRange(1), help="Repetitions of each throughput figure [20]."
)
@click.option(
    "--projector",
    type=click.Choice(["process", "inprocess"]),
    help="Where the replica runs [process].",
)
@click.option("--messages", type=click.IntRange(1), help="append: messages per sample [20000].")
@click.option(
    "--batch-events", type=click.IntRange(1), help="append: events per batched commit [10]."
)
@click.option(
    "--atomic-batch", type=click.IntRange(1, 1000), help="append: commits per atomic batch [500]."
)
@click.option(
    "--in-flight", type=click.IntRange(1), help="append: publishes in flight, both sides [2048]."
)
@click.option("--runs", "-R", type=click.IntRange(1), help="workload/reads: runs R [20].")
@click.option("--tasks", "-T", type=click.IntRange(1), help="train foreach tasks T [50].")
@click.option(
    "--writers", "-W", callback=_writers, help="workload: writer counts, e.g. 1,8,64 [1,8,64]."
)
@click.option(
    "--points",
    type=click.IntRange(0),
    help="workload/reads: loss points per successful train task, 0 for none [3].",
)
@click.option(
    "--calls",
    type=click.IntRange(1),
    help="reads/facade/http/local: calls per figure; http writers: tasks per round [200].",
)
@click.option(
    "--scale-runs",
    type=click.IntRange(0),
    help="reads: runs of the scale phase, 0 to skip [100000].",
)
@click.option(
    "--scale-task-runs",
    type=click.IntRange(1),
    help="reads: runs of the scale phase with the full task set [5].",
)
@click.option(
    "--as-of-events",
    type=click.IntRange(1),
    help="reads: events of the run read as_of (time travel) [10000].",
)
@click.option("--changes", type=click.IntRange(1), help="live: changes per figure [200].")
@click.option("--watchers", type=click.IntRange(0), help="live: watchers on one run [100].")
@click.option(
    "--watch-runs",
    type=click.IntRange(0),
    help="live: runs watched at once, 0 to skip [0; WORKLOAD: 1000].",
)
@click.option(
    "--events", type=click.IntRange(1), help="projection: events in the catch-up log [1000000]."
)
@click.option(
    "--events-per-commit",
    type=click.IntRange(1),
    help="projection: events per commit of that log [1].",
)
@click.option("--catchup-repeat", type=click.IntRange(1), help="projection: catch-ups timed [3].")
@click.option(
    "--lag-rate", type=click.IntRange(1), help="projection: steady append rate, events/s [5000]."
)
@click.option(
    "--lag-seconds",
    type=click.FloatRange(0),
    help="projection: seconds of steady load, 0 to skip [10].",
)
@click.option(
    "--metric-rows", type=click.IntRange(1), help="metrics: rows logged by one run [1000000]."
)
@click.option("--metric-keys", type=click.IntRange(1), help="metrics: keys per row [5].")
@click.option("--metric-scans", type=click.IntRange(1), help="metrics: full scans timed [3].")
@click.option("--sse-clients", type=click.IntRange(1), help="http: SSE clients on one run [1000].")
@click.option(
    "--http-writers",
    type=click.IntRange(1),
    help="http: writers, each on its own keep-alive connection [16].",
)
@click.option(
    "--log-lines", type=click.IntRange(1), help="logs: lines printed by one task [1000000]."
)
@click.option("--log-reads", type=click.IntRange(1), help="logs: read-backs timed [3].")
@click.option(
    "--frame-runs", type=click.IntRange(1), help="frame: runs exported to a DataFrame [10000]."
)
@click.option("--frame-repeat", type=click.IntRange(1), help="frame: exports timed [10].")
def bench(
    benchmarks: tuple[str, ...],
    nats_url: str | None,
    paired: bool,
    baseline: str,
    sequential: bool,
    rounds: int,
    as_json: bool,
    as_markdown: bool,
    quick: bool,
    **options: Any,
) -> None:
    """Measure runstate on the standard workload (see docs/benchmarks.md).

    BENCHMARKS: append, workload, reads, facade, live, projection, metrics, logs, frame,
    http (needs the web extra), local (the local runstate: start, join, a fresh
    process's first facade call), or all (the default).

    \b
    The roles' cost (issue 17), both runs in one invocation:
      runstate auth init --out auth --tls
      runstate bench workload reads --quick --auth auth --paired
      runstate bench reads --auth auth --paired --rounds 3
      runstate bench reads --auth auth --paired --baseline tls
    """
    configure_logging("warning", force=True)
    params = BenchParams(nats=nats_url)
    if quick:
        for key, value in _QUICK.items():
            setattr(params, key, value)
    for key, value in options.items():
        if value is not None:
            setattr(params, key, value)
    names = (
        list(BENCHMARKS)
        if not benchmarks or "all" in benchmarks
        else list(dict.fromkeys(benchmarks))
    )
    if (rounds > 1 or sequential or baseline != "plain") and not paired:
        raise click.UsageError("--rounds, --sequential and --baseline go with --paired")
    if paired:
        if params.auth is None:
            raise click.UsageError("--paired compares runs with and without --auth DIR: give it")
        if baseline == "tls" and not has_tls(params.auth):
            raise click.UsageError(
                f"--baseline tls runs the TLS of {params.auth} alone: it has none "
                "(runstate auth init --tls)"
            )
        both = run_paired(
            names,
            params,
            run_benchmark,
            rounds=rounds,
            run_both=None if sequential else run_interleaved,
            baseline="tls" if baseline == "tls" else "plain",
        )
        if as_json:
            click.echo(paired_json(both))
        elif as_markdown:
            click.echo(paired_markdown(both))
        else:
            print_paired(both)
        if both["failed"]:
            raise click.ClickException(f"failed: {', '.join(both['failed'])} (above)")
        return
    result = run_benchmarks(names, params)
    if as_json:
        click.echo(_as_json(result))
    elif as_markdown:
        click.echo(markdown(result))
    else:
        _print_rich(result)
