"""The ``logs`` benchmark: a task's output captured, read back, and tailed live.

- Ingest: one task block prints ``log_lines`` lines of 80 characters
  (``print``, captured by the block, sent in batches as it runs), timed in
  tenths, each tenth up to its lines being stored (``flush_logs``); the
  terminal side of the tee goes to ``/dev/null``, so that the figure is
  runstate's and not a terminal's.
- Read-back: those lines as one string, ``task.logs()``'s read
  (``client._logs.read_log_text``) straight from the log lines stream, in MB/s.
- Tail: a follower of another task's lines; each sample writes one line with
  ``write_log`` and flushes it, and is the time until the follower has it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import anyio

from runstate.client._logs import follow_log_lines, read_log_text
from runstate.client.cli._bench._harness import _client, _Place, _say, _server_version
from runstate.client.cli._bench._params import FLOW, BenchParams
from runstate.client.cli._bench._report import Figure, Report, Target, _ms, quantile
from runstate.client.cli._bench._turns import take_turn

__all__ = ["bench_logs"]

#: characters of each line printed, its newline included
LINE = 80


async def bench_logs(place: _Place, p: BenchParams, report: Report) -> None:
    """Ingest, read-back and tail latency of one task's output."""
    async with _client(place) as client:
        report.server_version = _server_version(client.nc)
        run = await client.create_run(FLOW)
        _say(f"logs: printing {p.log_lines:,} lines of {LINE} characters in a task block")
        rates = []
        tenth = max(1, p.log_lines // 10)
        stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")  # noqa: ASYNC230 - /dev/null never blocks
        try:
            async with run.task("train", index=0, heartbeat=False) as task:
                written = 0
                while written < p.log_lines:
                    count = min(tenth, p.log_lines - written)
                    await take_turn()
                    started = time.perf_counter()
                    for i in range(written, written + count):
                        print(f"step {i:>9} loss {1.0 / (i + 1):.12f}".ljust(LINE - 1))
                        if i % 1000 == 999:
                            await anyio.lowlevel.checkpoint()  # let the flusher send
                    await task.flush_logs()
                    rates.append(count / (time.perf_counter() - started))
                    written += count
        finally:
            sys.stdout.close()
            sys.stdout = stdout
        report.add(
            Figure(
                "ingest_lines_per_s",
                f"captured print() lines from one process ({LINE} characters a line)",
                "lines/s",
                rates,
                higher_is_better=True,
                target=Target("median", ">=", 100_000),
            )
        )
        _say(f"logs: ingest p50 {quantile(rates, 0.5):,.0f} lines/s")

        reads = []
        for _ in range(p.log_reads):
            await take_turn()
            started = time.perf_counter()
            text = await read_log_text(client.log, task.pathspec, task.attempt, "stdout")
            elapsed = time.perf_counter() - started
            assert len(text) == p.log_lines * LINE, (len(text), p.log_lines * LINE)
            reads.append(len(text.encode()) / elapsed / 1e6)
        report.add(
            Figure(
                "read_mb_per_s",
                f"read back {p.log_lines:,} lines as one string (task.logs())",
                "MB/s",
                reads,
                higher_is_better=True,
                target=Target("median", ">=", 50),
            )
        )
        _say(f"logs: read-back p50 {quantile(reads, 0.5):,.0f} MB/s")

        samples = await _tail(client, run, p.changes)
        report.add(
            Figure(
                "tail_ms",
                "a line flushed to its follower (task.follow_logs())",
                "ms",
                _ms(samples),
                target=(Target("median", "<", 2), Target("p95", "<", 5)),
            )
        )
        _say(f"logs: tail p50 {quantile(_ms(samples), 0.5):.2f} ms")


async def _tail(client: Any, run: Any, changes: int) -> list[float]:
    """Seconds from each line's write and flush until the follower hands it on."""
    samples: list[float] = []
    async with run.task("tail", index=0, heartbeat=False, capture_output=False) as task:
        await task.write_log("first")
        first = await task.flush_logs()
        assert first is not None
        arrived = anyio.Event()
        got: list[float] = []

        async def follow() -> None:
            nonlocal arrived
            async with follow_log_lines(
                client.log, task.pathspec, task.attempt, after=first
            ) as lines:
                async for _ in lines:
                    got.append(time.perf_counter())
                    arrived.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.sleep(0.5)  # the follower's consumer exists
            for i in range(changes + 10):
                await take_turn()
                arrived = anyio.Event()
                started = time.perf_counter()
                await task.write_log(f"tick {i}")
                await task.flush_logs()
                with anyio.fail_after(10):
                    await arrived.wait()
                if i >= 10:
                    samples.append(got[-1] - started)
            tg.cancel_scope.cancel()
    return samples
