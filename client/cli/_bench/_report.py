"""Figures, targets and reports: the statistics, the machine, and their rendering."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated between ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Target:
    """A figure's goal: ``stat op value``, e.g. median >= 10,000."""

    stat: Literal["median", "p95", "p99"]
    op: Literal["<", ">="]
    value: float

    def met(self, figure: Figure) -> bool:
        actual = getattr(figure, self.stat)
        return bool(actual < self.value if self.op == "<" else actual >= self.value)

    def __str__(self) -> str:
        stat = "p50" if self.stat == "median" else self.stat
        return f"{stat} {self.op} {_number(self.value)}"


@dataclass
class Figure:
    """One measured quantity: its samples and how to read them."""

    key: str
    label: str
    unit: str
    samples: list[float]
    higher_is_better: bool = False
    #: one goal, or several that must all be met (``(p50 < 1, p95 < 3)``)
    target: Target | tuple[Target, ...] | None = None
    #: print p99 beside p95 (lag figures)
    show_p99: bool = False

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return quantile(self.samples, 0.5)

    @property
    def p95(self) -> float:
        """The 95th percentile of the bad tail: high for latencies, low (5th) for rates."""
        return quantile(self.samples, 0.05 if self.higher_is_better else 0.95)

    @property
    def p99(self) -> float:
        return quantile(self.samples, 0.01 if self.higher_is_better else 0.99)

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else math.nan

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else math.nan

    @property
    def met(self) -> bool | None:
        targets = self.targets
        return all(t.met(self) for t in targets) if targets else None

    @property
    def targets(self) -> tuple[Target, ...]:
        if self.target is None:
            return ()
        return self.target if isinstance(self.target, tuple) else (self.target,)

    @property
    def target_text(self) -> str:
        return ", ".join(str(t) for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        def clean(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "label": self.label,
            "unit": self.unit,
            "n": self.n,
            "median": clean(self.median),
            "p95": clean(self.p95),
            "p99": clean(self.p99),
            "min": clean(self.min),
            "max": clean(self.max),
            "higher_is_better": self.higher_is_better,
            "target": self.target_text or None,
            "met": self.met,
        }


@dataclass
class Report:
    """The figures of one benchmark, its parameters, notes and conditions."""

    benchmark: str
    parameters: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    server_version: str = "?"
    started_at: str = ""
    duration_s: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def figure(self, key: str) -> Figure:
        for figure in self.figures:
            if figure.key == key:
                return figure
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "figures": {f.key: f.to_dict() for f in self.figures},
            "notes": self.notes,
            "nats_server": self.server_version,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 1),
            "load_before": list(self.load_before),
            "load_after": list(self.load_after),
        }


def _ms(seconds: Sequence[float]) -> list[float]:
    return [s * 1000.0 for s in seconds]


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, Python and library versions of this machine."""
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "nats_py": _version("nats-py"),
        "runstate": _version("runstate"),
    }


def _load() -> tuple[float, float, float]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return (math.nan, math.nan, math.nan)
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def _as_json(result: dict[str, Any]) -> str:
    body = {**result, "benchmarks": {r.benchmark: r.to_dict() for r in result["reports"]}}
    del body["reports"]
    return json.dumps(body, indent=2, default=str)


def _machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    return (
        f"{m['cores']} cores, {m['cpu']}; {m['python']}; nats-server {m['nats_server']}; "
        f"nats-py {m['nats_py']}; runstate {m['runstate']}; {m['platform']}; {result['date']}"
    )


def _met(figure: Figure) -> str:
    return "" if figure.met is None else ("yes" if figure.met else "MISSED")


def _rows(report: Report) -> Iterator[list[str]]:
    for f in report.figures:
        p95 = _number(f.p95) + (f" / p99 {_number(f.p99)}" if f.show_p99 else "")
        yield [
            f.key,
            f.label,
            f.unit,
            _number(f.median),
            p95,
            _number(f.min),
            _number(f.max),
            str(f.n),
            f.target_text,
            _met(f),
        ]


_HEADER = ["figure", "what", "unit", "p50", "p95", "min", "max", "n", "target", "met"]


def _print_rich(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    # a pipe or file gets full rows rather than 80 wrapped columns
    console = Console() if sys.stdout.isatty() else Console(width=220)
    console.print(f"[bold]runstate bench[/bold]  {_machine_line(result)}")
    for report in result["reports"]:
        table = Table(
            title=f"{report.benchmark}  (load {report.load_before[0]} -> {report.load_after[0]}, "
            f"{report.duration_s:.0f}s)",
            title_justify="left",
        )
        for column in _HEADER:
            table.add_column(
                column, justify="right" if column in ("p50", "p95", "min", "max", "n") else "left"
            )
        for row in _rows(report):
            style = "red" if row[-1] == "MISSED" else None
            table.add_row(*row, style=style)
        console.print(table)
        params = ", ".join(f"{k}={v}" for k, v in report.parameters.items())
        console.print(f"  parameters: {params}")
        for note in report.notes:
            console.print(f"  note: {note}")


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown tables, ready to paste into docs/benchmarks.md."""
    lines = [f"Machine: {_machine_line(result)}", ""]
    for report in result["reports"]:
        params = ", ".join(f"{k}={v}" for k, v in report.parameters.items())
        lines += [
            f"### {report.benchmark}",
            "",
            f"Parameters: {params}. Load average (1 min) {report.load_before[0]} before, "
            f"{report.load_after[0]} after; {report.duration_s:.0f}s.",
            "",
            "| " + " | ".join(_HEADER) + " |",
            "|" + "|".join("---" for _ in _HEADER) + "|",
        ]
        lines += ["| " + " | ".join([f"`{row[0]}`", *row[1:]]) + " |" for row in _rows(report)]
        lines += [""] + [f"- {note}" for note in report.notes] + [""]
    return "\n".join(lines)
