"""The time-travel figure of the ``reads`` benchmark: ``as_of`` of a run with 10,000 events."""

from __future__ import annotations

import random
import time
from typing import Any

from runstate.client.cli._bench._events import _append_all, _commits
from runstate.client.cli._bench._harness import _say
from runstate.client.cli._bench._params import BenchParams
from runstate.client.cli._bench._report import Figure, Report, Target, _ms, quantile
from runstate.client.cli._bench._turns import take_turn
from runstate.engine._event_factory import EventFactory

#: the id of the benchmark's long run (of flow Train)
RUN_ID = "as-of"

#: first reads of the long run timed, each folding it whole
_COLD_READS = 5


async def bench_as_of(client: Any, report: Report, p: BenchParams) -> None:
    """Time ``client.run(..., as_of=SEQ)`` of one run of ``as_of_events`` events.

    The run is the standard workload's with as many train tasks as it takes,
    one event per commit, cut at ``as_of_events``. The first read of a run by
    a client reads and folds all its commits (the cold figure, timed on
    emptied caches); later ones fold from the nearest snapshot (the figure
    with the target), at sequences drawn at random over the run's life.
    """
    factory = EventFactory(client.settings.user)
    events = factory.workload_run(0, RUN_ID, max(1, p.as_of_events // 4))
    _say(f"reads: writing one run of {p.as_of_events:,} events")
    first = await client.log.stream_last_sequence() + 1
    written, _, last = await _append_all(
        client.log, _commits(events, 1), limit_events=p.as_of_events
    )
    pathspec = f"{factory.flow}/{RUN_ID}"
    cold = []
    for _ in range(_COLD_READS):
        client.__dict__.pop("_timelines", None)  # a client that has not read the run yet
        await take_turn()
        started = time.perf_counter()
        await client.run(pathspec, as_of=last)
        cold.append(time.perf_counter() - started)
    rng = random.Random(15)
    warm = []
    for _ in range(p.calls):
        sequence = rng.randint(first, last)
        await take_turn()
        started = time.perf_counter()
        await client.run(pathspec, as_of=sequence)
        warm.append(time.perf_counter() - started)
    what = f"a run with {written:,} events"
    report.add(
        Figure(
            "as_of_ms",
            f"as_of of {what}, at random sequences (the client read it before)",
            "ms",
            _ms(warm),
            target=Target("median", "<", 100.0),
        )
    )
    report.add(Figure("as_of_first_ms", f"first as_of of {what} by a client", "ms", _ms(cold)))
    _say(
        f"reads: as_of of {what}: p50 {quantile(_ms(warm), 0.5):.1f} ms, "
        f"first read p50 {quantile(_ms(cold), 0.5):.0f} ms"
    )
