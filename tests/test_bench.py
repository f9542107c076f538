"""``runstate bench``: every benchmark runs with tiny parameters and reports every figure.

These are smoke tests of the report's shape, not of timings: the figures
only have to be there, counted, and plausible (positive, finite).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runstate.client.cli._bench import (
    BenchParams,
    Figure,
    Report,
    Target,
    bench,
    markdown,
    quantile,
    transitions_per_run,
)
from runstate.engine._events import (
    RunCreated,
    RunStateChanged,
    TaskAttemptStateChanged,
    TaskCreated,
)
from runstate.engine._server import NatsServer
from runstate.engine.testing import EventFactory

TINY: dict[str, list[str]] = {
    "append": [
        "--repeat",
        "2",
        "--messages",
        "300",
        "--batch-events",
        "5",
        "--atomic-batch",
        "100",
    ],
    "workload": ["--repeat", "1", "-R", "2", "-T", "3", "-W", "1,64"],
    "reads": [
        "-R",
        "2",
        "-T",
        "3",
        "-W",
        "4",
        "--calls",
        "5",
        "--scale-runs",
        "200",
        "--as-of-events",
        "300",
    ],
    "facade": ["--calls", "5"],
    "live": ["--changes", "5", "--watchers", "3", "--watch-runs", "3"],
    "projection": [
        "--events",
        "1500",
        "-T",
        "5",
        "--catchup-repeat",
        "1",
        "--lag-seconds",
        "1",
        "--lag-rate",
        "500",
    ],
    "metrics": ["--metric-rows", "300", "--metric-scans", "1", "--calls", "5"],
    "http": [
        *("-R", "2", "-T", "3", "-W", "2", "--calls", "5", "--scale-runs", "200"),
        *("--changes", "3", "--sse-clients", "3", "--http-writers", "2"),
    ],
    "logs": ["--log-lines", "300", "--log-reads", "1", "--changes", "5"],
    "frame": ["--frame-runs", "200", "--frame-repeat", "2", "--calls", "5"],
    "local": ["--repeat", "2", "--calls", "3"],
}

READS = {"get_run", "latest_successful", "runs_by_tag", "tasks_of_step"}
FIGURES: dict[str, set[str]] = {
    "append": {
        "raw_msgs_per_s",
        "raw_with_ids_msgs_per_s",
        "append_events_per_s",
        "append_ratio",
        "batched_events_per_s",
        "batched_ratio",
        "atomic_events_per_s",
    },
    "workload": {
        "transitions_per_s_w1",
        "raw_acked_per_s_w1",
        "projector_drain_ms_w1",
        "transitions_per_s_w64_no_projector",
        "transitions_per_s_w64_points_no_projector",
        "transitions_per_s_w64",
        "transitions_per_s_w64_points",
        "raw_acked_per_s_w64",
        "projector_drain_ms_w64",
    },
    "reads": {f"r_{key}_ms" for key in READS}
    | {f"scale_{key}_ms" for key in READS}
    | {"r_task_history_ms", "as_of_ms", "as_of_first_ms"},
    "facade": {"async_get_run_ms", "facade_get_run_ms", "facade_added_ms"},
    "live": {"watch_ms", "watchers_ms", "watched_runs_ms", "raw_ordered_ms"},
    "projection": {
        "catchup_events_per_s",
        "catchup_window_events_per_s",
        "lag_ms",
        "lag_rate_events_per_s",
    },
    "http": {
        "get_run_ms",
        "runs_by_tag_ms",
        "page_runs_ms",
        "page_run_ms",
        "sse_append_ms",
        "sse_fanout_ms",
        "http_transitions_per_s",
    },
    "metrics": {
        "ingest_points_per_s",
        "history_ms",
        "scan_s",
        "scan_frame_s",
        "read_e_ms",
        "tail_ms",
    },
    "logs": {"ingest_lines_per_s", "read_mb_per_s", "tail_ms"},
    "frame": {"runs_frame_s", "runs_by_summary_ms"},
    "local": {"local_start_ms", "local_join_ms", "facade_first_call_ms", "facade_import_ms"},
}
# differences of two timings may be zero or negative on a single call
SIGNED = {"facade_added_ms", "projector_drain_ms_w1", "projector_drain_ms_w64"}


def run_bench(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(bench, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def check_figures(name: str, report: dict[str, Any]) -> None:
    figures = report["benchmarks"][name]["figures"]
    assert set(figures) == FIGURES[name]
    for key, figure in figures.items():
        assert figure["n"] >= 1, key
        for stat in ("median", "p95", "p99", "min", "max"):
            assert figure[stat] is not None and math.isfinite(figure[stat]), (key, stat)
        if key not in SIGNED:
            assert figure["min"] > 0, key
        assert figure["unit"]
        assert (figure["target"] is None) == (figure["met"] is None), key


@pytest.mark.parametrize("name", list(TINY))
def test_benchmark_reports_every_figure(name: str) -> None:
    """Each benchmark, run tiny through the click command, reports all its figures as JSON."""
    report = run_bench(name, *TINY[name])
    check_figures(name, report)
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["nats_py"]
    assert machine["nats_server"].count(".") >= 2
    parameters = report["benchmarks"][name]["parameters"]
    assert parameters and all(value is not None for value in parameters.values())


def test_bench_on_a_given_server_leaves_no_streams(nats_server: NatsServer) -> None:
    """With --nats the benchmark works under its own prefix and deletes its streams after."""
    import anyio
    import nats

    from runstate.engine._roles import stream_names

    report = run_bench("append", "--nats", nats_server.url, *TINY["append"])
    check_figures("append", report)

    async def streams() -> list[str]:
        nc = await nats.connect(nats_server.url)
        try:
            return [info.config.name or "" for info in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    # what is left is the fixture's own provisioning (prefix rs), none of the benchmark's
    assert sorted(anyio.run(streams)) == sorted(stream_names().values())


def test_workload_run_has_the_standard_transitions() -> None:
    """A workload run holds 177 state transitions at T=50, and run 7 ends failed."""
    factory = EventFactory("bench")
    transitions = (RunCreated, RunStateChanged, TaskCreated, TaskAttemptStateChanged)
    events = list(factory.workload_run(3, "3", 50))
    assert sum(isinstance(e, transitions) for e in events) == transitions_per_run(50) == 177
    seventh = list(factory.workload_run(7, "7", 50))
    assert sum(isinstance(e, transitions) for e in seventh) == 177
    last = seventh[-1]
    assert isinstance(last, RunStateChanged) and last.payload.state == "failed"
    assert events[0].payload.tags == [] and next(factory.workload_run(2, "2", 1)).payload.tags == [
        "production"
    ]


def test_quantile_interpolates_and_rates_take_the_low_tail() -> None:
    """p95 of a latency is its high tail; p95 of a rate is the rate 95% of samples reach."""
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == pytest.approx(50.5)
    latency = Figure("l", "latency", "ms", values, target=Target("p95", "<", 96.0))
    rate = Figure(
        "r", "rate", "x/s", values, higher_is_better=True, target=Target("median", ">=", 60)
    )
    assert latency.p95 == pytest.approx(95.05) and latency.met is True
    assert rate.p95 == pytest.approx(5.95) and rate.met is False


def test_markdown_shows_every_figure_and_marks_misses() -> None:
    """The Markdown report has one row per figure and says MISSED where a target is missed."""
    report = Report("append", BenchParams().for_report("messages", "writers"))
    report.add(Figure("ok_ms", "fast", "ms", [0.5, 0.6], target=Target("median", "<", 1.0)))
    report.add(Figure("slow_ms", "slow", "ms", [5.0], target=Target("median", "<", 1.0)))
    text = markdown(
        {
            "date": "2026-01-01T00:00:00+00:00",
            "machine": {
                "cores": 2,
                "cpu": "cpu",
                "platform": "linux",
                "python": "CPython 3.11",
                "nats_py": "2.16",
                "runstate": "0.1",
                "nats_server": "2.15.1",
            },
            "reports": [report],
        }
    )
    assert "| `ok_ms` | fast | ms |" in text and "| yes |" in text
    assert "| `slow_ms` | slow | ms |" in text and "MISSED" in text
    assert "writers=[1, 8, 64]" in text


def test_lag_load_and_probe_write_runs_of_their_own() -> None:
    """The lag test's load and probe write new runs, never the catch-up log's.

    A load that wrote the log's runs again would have every event rejected
    by the reducers (the run exists already), which is not the workload.
    """
    import itertools

    from runstate.client.cli._bench._events import _log_commits
    from runstate.client.cli._bench._projection import (
        _LOAD_FIRST_RUN,
        _PROBE_FIRST_RUN,
        _load_commits,
    )

    def runs(commits: Any) -> set[str]:
        return {commit[0].pathspec.split("/")[1] for commit in commits}

    # the default catch-up log: 1,000,000 events of workload runs numbered from 1
    factory = EventFactory("bench")
    shortest = min(len(list(factory.workload_run(n, str(n), 50))) for n in range(1, 11))
    log = {str(n) for n in range(1, 1_000_000 // shortest + 2)}
    load = runs(_load_commits("bench", 5_000, 10.0, 50))
    probe = runs(
        itertools.islice(_log_commits(EventFactory("bench"), 50, 1, _PROBE_FIRST_RUN), 600)
    )
    assert min(map(int, load)) == _LOAD_FIRST_RUN
    assert not log & load and not log & probe and not load & probe
    assert max(map(int, log)) < _PROBE_FIRST_RUN < _LOAD_FIRST_RUN


@pytest.mark.parametrize("name", [name for name in TINY if name != "local"])
def test_bench_runs_with_the_roles(name: str, tmp_path: Path) -> None:
    """With --auth the benchmark's server runs the roles' block and each client signs in
    as its role (a role short of a permission would fail the run): every figure is there."""
    from runstate.engine._credentials import write_authorization

    write_authorization(tmp_path / "auth")
    report = run_bench(name, "--auth", str(tmp_path / "auth"), *TINY[name])
    check_figures(name, report)
    assert any("roles" in note for note in report["benchmarks"][name]["notes"])
