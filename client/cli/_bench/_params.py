"""The standard workload's parameters: every benchmark's, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

FLOW = "Train"


ProjectorMode = Literal["process", "inprocess"]


@dataclass
class BenchParams:
    """Every parameter of every benchmark, with the standard workload's defaults."""

    nats: str | None = None
    #: a ``runstate auth init`` directory: the server runs its roles, clients sign in by role
    auth: Path | None = None
    #: with ``auth``: False runs its TLS alone (no authorization block, every client
    #: anonymous with its role's certificate): the baseline of ``--paired --baseline tls``
    roles: bool = True
    repeat: int = 20
    projector: ProjectorMode = "process"
    # append
    messages: int = 20_000
    batch_events: int = 10
    atomic_batch: int = 500
    in_flight: int = 2048
    # workload (and the write phase of reads)
    runs: int = 20
    tasks: int = 50
    writers: tuple[int, ...] = (1, 8, 64)
    #: ``loss`` points logged by each train task's successful attempt (0: none)
    points: int = 3
    # reads, facade
    calls: int = 200
    scale_runs: int = 100_000
    scale_task_runs: int = 5
    as_of_events: int = 10_000
    # live
    changes: int = 200
    watchers: int = 100
    watch_runs: int = 0
    # projection
    events: int = 1_000_000
    events_per_commit: int = 1
    catchup_repeat: int = 3
    lag_rate: int = 5000
    lag_seconds: float = 10.0
    # http
    sse_clients: int = 1000
    http_writers: int = 16
    # metrics
    metric_rows: int = 1_000_000
    metric_keys: int = 5
    metric_scans: int = 3
    # logs
    log_lines: int = 1_000_000
    log_reads: int = 3
    # frame
    frame_runs: int = 10_000
    frame_repeat: int = 10

    def for_report(self, *names: str) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in names}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
