"""Both halves of a paired benchmark at once: two processes taking turns (``_turns``).

``run_interleaved`` starts ``python -m runstate.client.cli._bench _half`` twice,
each running the whole benchmark (``run_benchmark``) on a server of its own,
one plain and one secured, joined by two pipes over which they hand each
other the turn before every timed sample. Each returns its report to the
parent through a file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from runstate.client.cli._bench._params import BenchParams
from runstate.client.cli._bench._report import Report
from runstate.client.cli._bench._turns import Turns, install
from runstate.engine._logging import configure_logging

__all__ = ["half_main", "run_interleaved"]


def run_interleaved(name: str, first: BenchParams, second: BenchParams) -> tuple[Report, Report]:
    """Run benchmark ``name`` with ``first`` and ``second`` at once, taking turns (``first``
    times the first sample); their two reports, in that order."""
    to_first, to_second = os.pipe(), os.pipe()
    ends = [(to_first[0], to_second[1]), (to_second[0], to_first[1])]
    with tempfile.TemporaryDirectory(prefix="runstate-bench-pair-") as scratch:
        outputs = [Path(scratch) / "first.pickle", Path(scratch) / "second.pickle"]
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for index, ((mine, theirs), output) in enumerate(zip(ends, outputs, strict=True)):
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "runstate.client.cli._bench",
                            "_half",
                            str(mine),
                            str(theirs),
                            "first" if index == 0 else "second",
                            str(output),
                        ],
                        stdin=subprocess.PIPE,
                        pass_fds=(mine, theirs),
                    )
                )
        finally:
            for fd in (*to_first, *to_second):  # the children hold their own ends
                os.close(fd)
        try:
            for process, params in zip(processes, (first, second), strict=True):
                assert process.stdin is not None
                with contextlib.suppress(BrokenPipeError):  # it died: its exit code says
                    process.stdin.write(pickle.dumps((name, params)))
                    process.stdin.close()
            codes = [process.wait() for process in processes]
        except BaseException:
            for process in processes:
                process.kill()
                process.wait()
            raise
        if any(codes):
            raise click.ClickException(
                f"the two halves of the paired {name} benchmark exited with {codes} "
                "(their errors are above)"
            )
        first_report, second_report = (pickle.loads(path.read_bytes()) for path in outputs)
    return first_report, second_report


def half_main(argv: Sequence[str], run_benchmark: Callable[[str, BenchParams], Report]) -> None:
    """``python -m runstate.client.cli._bench _half MINE THEIRS first|second OUTPUT``: run the
    benchmark and parameters pickled on stdin (with ``run_benchmark``), taking turns over
    the pipes ``MINE`` (read) and ``THEIRS`` (write); the report pickled to ``OUTPUT``."""
    configure_logging("warning", force=True)
    mine, theirs, which, output = argv
    name, params = pickle.loads(sys.stdin.buffer.read())
    turns = Turns(int(mine), int(theirs))
    install(turns)
    try:
        if which == "second":
            turns.wait()  # the first half times the first sample
        report = run_benchmark(name, params)
    finally:
        turns.close()
        install(None)
    Path(output).write_bytes(pickle.dumps(report))
