"""``runstate bench --auth DIR --paired``: each benchmark plain and secured, side by side.

Issue 17 asks that the roles cost nothing measurable: a benchmark against a
server running the roles' authorization (and TLS with client certificates,
when ``DIR`` has them) within 10% of the same benchmark without it, measured
in one run. Two separate runs cannot tell that apart from the machine's
drift, so each benchmark runs twice in one invocation, once plain and once
secured, the order alternating from one benchmark to the next (the first
plain then secured, the second secured then plain, ...), and the report
puts each figure's two medians side by side.

One run of each half moves by up to ±25% on a small VM, more than the 10%
to be told apart. ``rounds`` runs each half that many times, alternating
within the benchmark too (plain, secured, secured, plain, ... for the first
benchmark; the reverse for the next), and pools each half's samples: each
figure's medians are of all its rounds' samples, and the report shows the
cost each round measured on its own beside the pooled one, so the spread
between rounds is in sight.

With ``baseline="tls"`` (``--baseline tls``, a ``--tls`` directory) the plain
half runs the directory's TLS alone: no authorization block, every client
anonymous with its role's certificate. The cost is then the roles' own, with
the encryption on both sides; the default baseline measures roles and TLS
together.

The cost of a figure is how much worse the secured run is, in percent of the
plain one: ``secured / plain - 1`` for a time, ``plain / secured - 1`` for a
rate. Positive: the secured run is slower; negative: it happened to be
faster (noise). A figure whose cost is beyond ``LIMIT_PERCENT`` either way
is flagged: over it, the roles cost too much, or the noise is as large as
the limit and the figure says nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import click

from runstate.client.cli._bench._params import BenchParams
from runstate.client.cli._bench._report import Figure, Report, _machine_line, _number, machine_info

__all__ = [
    "LIMIT_PERCENT",
    "PairedFigure",
    "PairedReport",
    "cost_percent",
    "pair_figures",
    "paired_json",
    "paired_markdown",
    "pool_reports",
    "print_paired",
    "run_paired",
    "secured_first",
]

#: the cost beyond which a figure is flagged (issue 17: within 10%)
LIMIT_PERCENT = 10.0

#: what a paired run's plain half is: a server asking for nothing, or running TLS alone
Baseline = Literal["plain", "tls"]

#: benchmarks that cannot run secured: a local runstate asks for its own token
UNPAIRED = {"local": "a local runstate has its own token: it cannot run the roles' authorization"}


def cost_percent(plain: float, secured: float, higher_is_better: bool) -> float:
    """How much worse ``secured`` is than ``plain``, in percent (negative: better).

    A time (lower is better): ``secured / plain - 1``; a rate: ``plain / secured - 1``.
    NaN when either is not a positive finite number (nothing to compare).
    """
    if not (0 < plain < math.inf and 0 < secured < math.inf):
        return math.nan
    ratio = plain / secured if higher_is_better else secured / plain
    return (ratio - 1.0) * 100.0


def secured_first(index: int) -> bool:
    """Whether the benchmark at ``index`` runs secured first: every other one, so that a
    drift of the machine during the run weighs on each side alike."""
    return index % 2 == 1


@dataclass(frozen=True)
class PairedFigure:
    """One figure's median plain and secured, and the cost of the secured run."""

    key: str
    label: str
    unit: str
    plain: float
    secured: float
    higher_is_better: bool
    #: the cost each round measured on its own (with ``rounds`` above 1)
    round_costs: tuple[float, ...] = ()

    @property
    def cost(self) -> float:
        return cost_percent(self.plain, self.secured, self.higher_is_better)

    @property
    def beyond(self) -> bool:
        """Whether the cost is beyond ``LIMIT_PERCENT`` either way (NaN is not)."""
        return abs(self.cost) > LIMIT_PERCENT

    def to_dict(self) -> dict[str, Any]:
        cost = self.cost
        return {
            "label": self.label,
            "unit": self.unit,
            "plain": self.plain,
            "secured": self.secured,
            "higher_is_better": self.higher_is_better,
            "cost_percent": None if math.isnan(cost) else round(cost, 2),
            "beyond_limit": self.beyond,
            "round_costs_percent": [
                None if math.isnan(value) else round(value, 2) for value in self.round_costs
            ],
        }


def pair_figures(plain: Sequence[Figure], secured: Sequence[Figure]) -> list[PairedFigure]:
    """The figures both runs have, in the plain run's order, each with both medians."""
    by_key = {figure.key: figure for figure in secured}
    return [
        PairedFigure(
            figure.key,
            figure.label,
            figure.unit,
            figure.median,
            by_key[figure.key].median,
            figure.higher_is_better,
        )
        for figure in plain
        if figure.key in by_key
    ]


def pool_reports(reports: Sequence[Report]) -> Report:
    """One report of several runs of a benchmark: each figure's samples pooled (in the
    first run's order of figures), every note once, the durations summed."""
    first = reports[0]
    samples: dict[str, list[float]] = {}
    for report in reports:
        for figure in report.figures:
            samples.setdefault(figure.key, []).extend(figure.samples)
    return dataclasses.replace(
        first,
        figures=[dataclasses.replace(f, samples=samples[f.key]) for f in first.figures],
        notes=list(dict.fromkeys(note for report in reports for note in report.notes)),
        duration_s=sum(report.duration_s for report in reports),
        load_after=reports[-1].load_after,
    )


@dataclass
class PairedReport:
    """A benchmark's two halves: plain and secured (each pooled over its rounds), which ran
    first, and each round's pair of reports."""

    benchmark: str
    plain: Report
    secured: Report
    secured_first: bool
    #: (plain, secured) of each round, when there were several
    rounds: list[tuple[Report, Report]] = dataclasses.field(default_factory=list)

    @property
    def order(self) -> str:
        """The halves in the order they ran: ``plain, secured, secured, plain``..."""
        first = ["secured", "plain"] if self.secured_first else ["plain", "secured"]
        halves = [first if index % 2 == 0 else first[::-1] for index in range(len(self.rounds))]
        return ", ".join(half for pair in (halves or [first]) for half in pair)

    @property
    def figures(self) -> list[PairedFigure]:
        figures = pair_figures(self.plain.figures, self.secured.figures)
        if len(self.rounds) < 2:
            return figures
        per_round = [
            {f.key: f.cost for f in pair_figures(plain.figures, secured.figures)}
            for plain, secured in self.rounds
        ]
        return [
            dataclasses.replace(
                figure, round_costs=tuple(costs.get(figure.key, math.nan) for costs in per_round)
            )
            for figure in figures
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "rounds": max(1, len(self.rounds)),
            "figures": {figure.key: figure.to_dict() for figure in self.figures},
            "plain": self.plain.to_dict(),
            "secured": self.secured.to_dict(),
        }


def run_paired(
    names: Sequence[str],
    params: BenchParams,
    run: Callable[[str, BenchParams], Report],
    rounds: int = 1,
    run_both: Callable[[str, BenchParams, BenchParams], tuple[Report, Report]] | None = None,
    baseline: Baseline = "plain",
) -> dict[str, Any]:
    """Run each benchmark plain and secured (``params.auth``), alternating the order.

    ``baseline``: what the plain half is: ``plain``, a server asking for nothing;
    ``tls``, a server running the TLS of ``params.auth`` alone (no roles), so that
    the cost measured is the roles' own under TLS.

    ``run``: runs one benchmark (``run_benchmark``), one half after the other.
    ``run_both``: runs both halves at once, taking turns, the first given timing
    the first sample (``run_interleaved``); used instead of ``run`` when given.
    ``rounds``: how many times each half runs, the order alternating from round
    to round as well (each half's samples pooled). Returns the JSON-ready
    result: the machine, the paired reports, and the benchmarks skipped with why.
    """
    assert params.auth is not None
    if rounds < 1:
        raise ValueError(f"rounds must be 1 or more, not {rounds}")
    machine = machine_info()
    plain_params = (
        dataclasses.replace(params, roles=False)
        if baseline == "tls"
        else dataclasses.replace(params, auth=None)
    )
    paired: list[PairedReport] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in names:
        if name in UNPAIRED:
            skipped[name] = UNPAIRED[name]
            continue
        first = secured_first(len(paired) + len(failed))
        pairs: list[tuple[Report, Report]] = []
        try:
            for index in range(rounds):
                secured_now = first != (index % 2 == 1)
                order = [params, plain_params] if secured_now else [plain_params, params]
                if run_both is not None:
                    reports = list(run_both(name, order[0], order[1]))
                else:
                    reports = [run(name, half) for half in order]
                secured, plain = reports if secured_now else reversed(reports)
                pairs.append((plain, secured))
        except (click.ClickException, RuntimeError, OSError) as exc:
            # the others' figures still count: report this one as failed, and go on
            failed[name] = str(getattr(exc, "message", exc)) or type(exc).__name__
            continue
        paired.append(
            PairedReport(
                name,
                pool_reports([plain for plain, _ in pairs]),
                pool_reports([secured for _, secured in pairs]),
                first,
                pairs if rounds > 1 else [],
            )
        )
    version = paired[0].secured.server_version if paired else "?"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "nats_server": version},
        "auth": str(params.auth),
        "baseline": baseline,
        "rounds": rounds,
        "interleaved": run_both is not None,
        "paired": paired,
        "skipped": skipped,
        "failed": failed,
    }


def paired_json(result: dict[str, Any]) -> str:
    body = {**result, "benchmarks": {p.benchmark: p.to_dict() for p in result["paired"]}}
    del body["paired"]
    return json.dumps(body, indent=2, default=str)


_HEADER = ["figure", "what", "unit", "plain p50", "secured p50", "cost %", "beyond 10%"]


def _cost(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.1f}"


#: the column of each round's own cost, with several rounds
_ROUNDS_COLUMN = "each round's cost %"


def _header(result: dict[str, Any]) -> list[str]:
    rounds = result.get("rounds", 1)
    return _HEADER if rounds < 2 else [*_HEADER[:-1], _ROUNDS_COLUMN, _HEADER[-1]]


def _rows(paired: PairedReport) -> list[list[str]]:
    rows = []
    for figure in paired.figures:
        row = [
            figure.key,
            figure.label,
            figure.unit,
            _number(figure.plain),
            _number(figure.secured),
            _cost(figure.cost),
        ]
        if paired.rounds:
            row.append(" / ".join(_cost(cost) for cost in figure.round_costs))
        rows.append([*row, "BEYOND" if figure.beyond else ""])
    return rows


def _explanation(result: dict[str, Any]) -> str:
    rounds = result.get("rounds", 1)
    how = (
        "the order alternating"
        if rounds < 2
        else f"{rounds} times each, the order alternating from round to round and from one "
        "benchmark to the next, each half's samples pooled"
    )
    if result.get("interleaved"):
        how += (
            "; both halves at once, each on its own server in a process of its own, taking "
            "turns: their timed samples alternate, one of one and one of the other (the order "
            "says which timed first), and they never measure at the same time"
        )
    ran = (
        f"plain (here: the TLS of {result['auth']} alone, no roles) and secured (its roles "
        "and its TLS)"
        if result.get("baseline") == "tls"
        else f"plain and secured (the roles of {result['auth']})"
    )
    return (
        f"Each benchmark ran {ran}, {how}. "
        "cost % is how much worse the secured median is: secured/plain - 1 for "
        "times, plain/secured - 1 for rates; positive is slower. BEYOND: more than "
        f"{LIMIT_PERCENT:.0f}% either way."
    )


def _notes(paired: PairedReport) -> list[str]:
    return [f"plain: {note}" for note in paired.plain.notes] + [
        f"secured: {note}" for note in paired.secured.notes
    ]


def print_paired(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=220)
    console.print(f"[bold]runstate bench --paired[/bold]  {_machine_line(result)}")
    console.print(_explanation(result))
    for paired in result["paired"]:
        table = Table(
            title=f"{paired.benchmark}  ({paired.to_dict()['order']}; "
            f"{paired.plain.duration_s:.0f}s + {paired.secured.duration_s:.0f}s)",
            title_justify="left",
        )
        for column in _header(result):
            table.add_column(column, justify="left" if column in _HEADER[:3] else "right")
        for row in _rows(paired):
            table.add_row(*row, style="red" if row[-1] else None)
        console.print(table)
        for note in _notes(paired):
            console.print(f"  note: {note}")
    for name, why in result["skipped"].items():
        console.print(f"{name}: skipped ({why})")
    for name, why in result.get("failed", {}).items():
        console.print(f"[red]{name}: FAILED ({why})[/red]")


def paired_markdown(result: dict[str, Any]) -> str:
    """The paired report as Markdown tables, for docs/benchmarks.md."""
    lines = [f"Machine: {_machine_line(result)}", "", _explanation(result), ""]
    for paired in result["paired"]:
        params = ", ".join(f"{k}={v}" for k, v in paired.plain.parameters.items())
        lines += [
            f"### {paired.benchmark}, plain and secured",
            "",
            f"Parameters: {params}. Order: {paired.to_dict()['order']}; "
            f"{paired.plain.duration_s:.0f}s plain, {paired.secured.duration_s:.0f}s secured.",
            "",
            "| " + " | ".join(_header(result)) + " |",
            "|" + "|".join("---" for _ in _header(result)) + "|",
        ]
        lines += ["| " + " | ".join([f"`{row[0]}`", *row[1:]]) + " |" for row in _rows(paired)]
        lines += [""] + [f"- {note}" for note in _notes(paired)] + [""]
    lines += [f"- {name}: skipped ({why})" for name, why in result["skipped"].items()]
    lines += [f"- {name}: FAILED ({why})" for name, why in result.get("failed", {}).items()]
    return "\n".join(lines)
