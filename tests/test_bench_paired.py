"""``runstate bench --auth DIR --paired``: each benchmark plain and secured in one invocation.

The pairing and cost arithmetic are tested directly (and as properties); one tiny paired
``append`` runs end to end on real servers, checking that both halves ran and that the secured
one measured a server with the roles and TLS (its notes), not the timings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import anyio
import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from runstate.client.cli._bench import BenchParams, Figure, Report, bench
from runstate.client.cli._bench._paired import (
    LIMIT_PERCENT,
    PairedFigure,
    cost_percent,
    pair_figures,
    paired_json,
    paired_markdown,
    pool_reports,
    print_paired,
    run_paired,
    secured_first,
)
from runstate.client.cli._bench._turns import Turns, install, take_turn, take_turn_sync

positive = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False)


def test_cost_is_the_secured_runs_loss_for_times_and_rates() -> None:
    """A time 10% longer and a rate 10% lower both cost +10%; faster costs a negative."""
    assert cost_percent(100.0, 110.0, higher_is_better=False) == pytest.approx(10.0)
    assert cost_percent(110.0, 100.0, higher_is_better=True) == pytest.approx(10.0)
    assert cost_percent(100.0, 90.0, higher_is_better=False) == pytest.approx(-10.0)
    assert math.isnan(cost_percent(0.0, 1.0, higher_is_better=False))
    assert math.isnan(cost_percent(1.0, math.nan, higher_is_better=True))


@given(plain=positive, secured=positive, higher=st.booleans())
def test_cost_sign_says_which_run_was_worse(plain: float, secured: float, higher: bool) -> None:
    """Positive exactly when the secured figure is worse (longer time, lower rate); a time
    and the rate that is its inverse cost the same."""
    cost = cost_percent(plain, secured, higher)
    worse = secured < plain if higher else secured > plain
    assert (cost > 0) == worse
    assert cost_percent(1 / plain, 1 / secured, not higher) == pytest.approx(cost, rel=1e-9)


@given(plain=positive, secured=positive, higher=st.booleans())
def test_a_figure_is_flagged_beyond_the_limit_either_way(
    plain: float, secured: float, higher: bool
) -> None:
    figure = PairedFigure("k", "label", "ms", plain, secured, higher)
    assert figure.beyond == (abs(figure.cost) > LIMIT_PERCENT)
    assert figure.to_dict()["beyond_limit"] == figure.beyond


@given(st.integers(min_value=0, max_value=1000))
def test_the_order_alternates(index: int) -> None:
    assert secured_first(index) != secured_first(index + 1)
    assert not secured_first(0)


def _figure(key: str, samples: list[float], higher: bool = False) -> Figure:
    return Figure(key, key.upper(), "ms", samples, higher_is_better=higher)


def test_figures_pair_by_key_in_the_plain_order() -> None:
    """Medians pair by key; a figure only one run has is left out."""
    plain = [_figure("a", [1, 2, 3]), _figure("b", [10.0], True), _figure("only_plain", [1])]
    secured = [_figure("b", [8.0], True), _figure("a", [2, 4, 6]), _figure("only_secured", [1])]
    pairs = pair_figures(plain, secured)
    assert [(p.key, p.plain, p.secured) for p in pairs] == [("a", 2, 4), ("b", 10.0, 8.0)]
    assert pairs[0].cost == pytest.approx(100.0) and pairs[0].beyond
    assert pairs[1].cost == pytest.approx(25.0) and pairs[1].higher_is_better


def test_run_paired_alternates_skips_local_and_gives_each_half_its_params(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each benchmark runs twice, plain (no auth) and secured (DIR), the first plain first,
    the next secured first; local is skipped with its reason."""
    calls: list[tuple[str, Path | None]] = []

    def run(name: str, params: BenchParams) -> Report:
        calls.append((name, params.auth))
        report = Report(name, {})
        report.add(_figure("t", [2.0 if params.auth else 1.0]))
        return report

    result = run_paired(["append", "local", "reads"], BenchParams(auth=tmp_path), run)
    assert calls == [("append", None), ("append", tmp_path), ("reads", tmp_path), ("reads", None)]
    assert list(result["skipped"]) == ["local"]
    first, second = result["paired"]
    assert not first.secured_first and second.secured_first
    assert [(f.plain, f.secured) for f in first.figures] == [(1.0, 2.0)]
    text = paired_markdown(result)
    assert "| `t` | T | ms | 1.00 | 2.00 | +100.0 | BEYOND |" in text
    assert "local: skipped" in text
    print_paired(result)
    printed = capsys.readouterr().out
    assert "+100.0" in printed and "BEYOND" in printed and "secured, plain" in printed
    body = json.loads(paired_json(result))
    assert body["benchmarks"]["append"]["figures"]["t"]["cost_percent"] == 100.0


def test_paired_without_auth_is_a_usage_error() -> None:
    result = CliRunner().invoke(bench, ["append", "--paired"])
    assert result.exit_code == 2 and "--auth" in result.output


def _run(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(bench, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def test_a_tiny_paired_append_runs_both_halves_the_secured_one_with_roles_and_tls(
    tmp_path: Path,
) -> None:
    """``bench append --paired`` with an ``auth init --tls`` directory: both halves report
    every figure; the plain server asked for nothing, the secured one for credentials and
    verified client certificates."""
    from runstate.client.cli import cli

    auth = tmp_path / "auth"
    made = CliRunner().invoke(cli, ["auth", "init", "--out", str(auth), "--tls"])
    assert made.exit_code == 0, made.output
    tiny = ["--quick", "--repeat", "2", "--messages", "300", "--atomic-batch", "100"]
    body = _run("append", "local", *tiny, "--auth", str(auth), "--paired")
    assert set(body["benchmarks"]) == {"append"} and "local" in body["skipped"]
    assert body["interleaved"] is True  # the two halves at once, taking turns
    append = body["benchmarks"]["append"]
    assert append["order"] == "plain, secured"
    plain, secured = append["plain"], append["secured"]
    assert set(append["figures"]) == set(plain["figures"]) == set(secured["figures"])
    for figure in append["figures"].values():
        assert figure["plain"] > 0 and figure["secured"] > 0
        assert figure["cost_percent"] is not None
    assert "server: auth_required=False, tls_required=False, tls_verify=False" in plain["notes"]
    assert "server: auth_required=True, tls_required=True, tls_verify=True" in secured["notes"]
    assert any("client certificate" in note for note in secured["notes"])


def test_a_tiny_paired_append_against_tls_alone_measures_the_roles_under_tls(
    tmp_path: Path,
) -> None:
    """``--baseline tls``: the plain half's server runs the directory's TLS alone (client
    certificates verified, no credentials asked), the secured one its roles as well."""
    from runstate.client.cli import cli

    auth = tmp_path / "auth"
    made = CliRunner().invoke(cli, ["auth", "init", "--out", str(auth), "--tls"])
    assert made.exit_code == 0, made.output
    tiny = ["--quick", "--repeat", "2", "--messages", "300", "--atomic-batch", "100"]
    body = _run("append", *tiny, "--auth", str(auth), "--paired", "--baseline", "tls")
    assert body["baseline"] == "tls"
    append = body["benchmarks"]["append"]
    plain, secured = append["plain"], append["secured"]
    assert "server: auth_required=False, tls_required=True, tls_verify=True" in plain["notes"]
    assert any("alone" in note and "anonymous" in note for note in plain["notes"])
    assert "server: auth_required=True, tls_required=True, tls_verify=True" in secured["notes"]
    for figure in append["figures"].values():
        assert figure["plain"] > 0 and figure["secured"] > 0


def test_a_child_process_connects_as_the_parent_does_with_roles_and_with_tls_alone(
    tmp_path: Path,
) -> None:
    """A benchmark's replica in a process of its own signs in as the projector on a server
    with the roles, and on a server running the TLS alone shows its certificate and no
    credentials; either way the benchmark's client reads from it."""
    from runstate.client.cli import cli
    from runstate.client.cli._bench._harness import (
        _client,
        _place,
        _replica,
        child_connection,
        child_credentials,
    )

    auth = tmp_path / "auth"
    made = CliRunner().invoke(cli, ["auth", "init", "--out", str(auth), "--tls"])
    assert made.exit_code == 0, made.output

    async def read_through_a_replica(place: Any) -> dict[str, Any]:
        async with _replica(place, "process"), _client(place) as client:
            with anyio.fail_after(30):
                status: dict[str, Any] = await client.status()
                return status

    for roles in (True, False):
        with _place(None, auth, roles=roles) as place:
            argument = child_credentials(place, "projector")
            connection = child_connection(argument)
            assert connection["tls_cert"] == auth / "projector.pem"
            assert ("credentials" in connection) is roles
            assert place.security.startswith(f"auth_required={roles}, tls_required=True")
            assert "applied" in anyio.run(read_through_a_replica, place)
    assert child_connection(None) == {}


def test_rounds_alternate_within_a_benchmark_and_pool_each_halfs_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With 3 rounds the first benchmark runs plain, secured, secured, plain, plain,
    secured (the next the reverse); each half's figure is the median of all its rounds'
    samples, and each round's own cost is reported beside it."""
    calls: list[tuple[str, bool]] = []
    plain_samples = iter([[1.0, 1.0], [3.0, 3.0], [2.0, 2.0], [1.0], [1.0], [1.0]])
    secured_samples = iter([[2.0, 2.0], [3.0, 3.0], [2.0, 2.0], [1.0], [1.0], [1.0]])

    def run(name: str, params: BenchParams) -> Report:
        calls.append((name, params.auth is not None))
        report = Report(name, {}, duration_s=1.0, notes=[f"note of {params.auth is not None}"])
        samples = next(secured_samples if params.auth else plain_samples)
        report.add(_figure("t", samples))
        return report

    result = run_paired(["append", "reads"], BenchParams(auth=tmp_path), run, rounds=3)
    order = [secured for name, secured in calls if name == "append"]
    assert order == [False, True, True, False, False, True]
    assert [secured for name, secured in calls if name == "reads"] == [
        True, False, False, True, True, False
    ]  # fmt: skip
    append, _ = result["paired"]
    assert append.order == "plain, secured, secured, plain, plain, secured"
    (figure,) = append.figures
    assert (figure.plain, figure.secured) == (2.0, 2.0)  # medians of the pooled samples
    assert figure.round_costs == pytest.approx((100.0, 0.0, 0.0))
    assert append.plain.duration_s == 3.0 and append.plain.notes == ["note of False"]
    assert len(append.plain.figures[0].samples) == 6
    text = paired_markdown(result)
    assert "each round's cost %" in text and "| +100.0 / +0.0 / +0.0 |" in text
    assert "3 times each" in text
    body = json.loads(paired_json(result))
    assert body["benchmarks"]["append"]["rounds"] == 3
    assert body["benchmarks"]["append"]["figures"]["t"]["round_costs_percent"] == [100, 0, 0]
    print_paired(result)
    assert "+100.0 / +0.0 / +0.0" in capsys.readouterr().out


@given(st.lists(st.lists(positive, min_size=1, max_size=5), min_size=1, max_size=4))
def test_pooling_keeps_every_sample_once(runs: list[list[float]]) -> None:
    """A pooled report has each figure's samples of every run, in order, and sums the
    durations."""
    reports = []
    for samples in runs:
        report = Report("b", {}, duration_s=2.0)
        report.add(_figure("t", samples))
        reports.append(report)
    pooled = pool_reports(reports)
    assert pooled.figure("t").samples == [x for samples in runs for x in samples]
    assert pooled.duration_s == 2.0 * len(runs)


def test_rounds_without_paired_is_a_usage_error() -> None:
    result = CliRunner().invoke(bench, ["append", "--rounds", "2"])
    assert result.exit_code == 2 and "--paired" in result.output


def test_a_tls_baseline_runs_the_plain_half_on_the_same_directory_without_its_roles(
    tmp_path: Path,
) -> None:
    """``baseline="tls"``: both halves have the directory; the plain one runs it without
    the roles (its TLS alone), the secured one with them; the report says so."""
    calls: list[tuple[Path | None, bool]] = []

    def run(name: str, params: BenchParams) -> Report:
        calls.append((params.auth, params.roles))
        report = Report(name, {})
        report.add(_figure("t", [2.0 if params.roles else 1.0]))
        return report

    result = run_paired(["append", "reads"], BenchParams(auth=tmp_path), run, baseline="tls")
    assert calls == [(tmp_path, False), (tmp_path, True), (tmp_path, True), (tmp_path, False)]
    assert result["baseline"] == "tls"
    assert [(f.plain, f.secured) for f in result["paired"][0].figures] == [(1.0, 2.0)]
    assert f"the TLS of {tmp_path} alone, no roles" in paired_markdown(result)
    assert json.loads(paired_json(result))["baseline"] == "tls"
    default = run_paired(["append"], BenchParams(auth=tmp_path), run)
    assert default["baseline"] == "plain" and calls[-2:] == [(None, True), (tmp_path, True)]


def test_a_tls_baseline_needs_paired_and_a_directory_with_tls(tmp_path: Path) -> None:
    from runstate.client.cli import cli

    alone = CliRunner().invoke(bench, ["append", "--baseline", "tls"])
    assert alone.exit_code == 2 and "--paired" in alone.output
    auth = tmp_path / "auth"
    made = CliRunner().invoke(cli, ["auth", "init", "--out", str(auth)])  # no --tls
    assert made.exit_code == 0, made.output
    bare = CliRunner().invoke(
        bench, ["append", "--auth", str(auth), "--paired", "--baseline", "tls"]
    )
    assert bare.exit_code == 2 and "has none" in bare.output and "--tls" in bare.output


def test_two_halves_take_turns_and_one_runs_on_alone_when_the_other_ends() -> None:
    """Over two pipes, each ``swap`` hands the turn over: the halves' steps alternate
    strictly, the first half's first; once one half closes, the other no longer waits."""
    import os
    import threading

    to_first, to_second = os.pipe(), os.pipe()
    first = Turns(to_first[0], to_second[1])
    second = Turns(to_second[0], to_first[1])
    steps: list[str] = []

    def half(name: str, turns: Turns, count: int, starts: bool) -> None:
        if not starts:
            turns.wait()
        for i in range(count):
            turns.swap()
            steps.append(f"{name}{i}")
        turns.close()

    threads = [
        threading.Thread(target=half, args=("a", first, 3, True)),
        threading.Thread(target=half, args=("b", second, 5, False)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    # as in a benchmark: a runs up to its first swap (its set-up), then b up to its own,
    # then each step of a is followed by the same step of b, until a has ended and b runs
    # on alone
    assert steps == ["a0", "b0", "a1", "b1", "a2", "b2", "b3", "b4"]
    assert first.alone and second.alone


def test_take_turn_does_nothing_outside_a_paired_run() -> None:
    install(None)
    take_turn_sync()
    anyio.run(take_turn)


def test_a_benchmark_that_fails_is_reported_and_the_others_still_are(tmp_path: Path) -> None:
    """One benchmark's halves failing does not lose the others' figures: it is listed as
    failed, with why, and the alternation of the order goes on as if it had run."""

    def run_both(name: str, first: BenchParams, second: BenchParams) -> tuple[Report, Report]:
        if name == "reads":
            raise click.ClickException("the two halves of the paired reads benchmark exited")
        reports = []
        for params in (first, second):
            report = Report(name, {})
            report.add(_figure("t", [2.0 if params.auth else 1.0]))
            reports.append(report)
        return reports[0], reports[1]

    def run(name: str, params: BenchParams) -> Report:
        raise AssertionError("run_both runs both halves")

    names = ["append", "reads", "live"]
    result = run_paired(names, BenchParams(auth=tmp_path), run, run_both=run_both)
    assert [p.benchmark for p in result["paired"]] == ["append", "live"]
    assert "exited" in result["failed"]["reads"]
    assert not result["paired"][0].secured_first and not result["paired"][1].secured_first
    assert "- reads: FAILED (the two halves" in paired_markdown(result)
