"""``runstate bench``: the standard workload (``WORKLOAD.md``) measured end to end.

Each benchmark starts its own nats-server (JetStream, in a temporary
directory) unless ``--nats URL`` is given, in which case it works under a
fresh subject prefix and deletes its streams afterwards. Every figure is
reported as median, p95 (p99 where asked), min and max over its samples,
beside its target; the report also names the machine and every parameter.

Benchmarks:

- ``append``: raw nats-py ``publish_async`` against runstate's pipelined,
  batched and atomic appends.
- ``workload``: the write phase of the standard workload through the worker
  API, W concurrent writers, a projector replica running beside them.
- ``reads``: the standard reads through the async client, at R runs and at
  a scale of 100,000 runs.
- ``facade``: the blocking ``runstate.client.compat`` facade against the
  async client.
- ``live``: append-to-watcher latency (1 watcher, 100 watchers, optionally
  1,000 watched runs) and raw JetStream ordered-consumer latency.
- ``projection``: catch-up rate of a fresh projector on a log of 1,000,000
  events, and append-to-queryable lag at a steady 5,000 events/s.
- ``metrics``: metric ingest, sampled history, full scans, read (e).
- ``logs``: a task's captured output: ingest, read-back, live tail latency.
- ``local``: the local runstate a client given no URL starts (first
  ``connect()``), joins, and a fresh process's first facade call.

For a rate ("higher is better") the p95 column is the rate that 95% of the
samples reach (the 5th percentile): the slow tail, like a latency's p95.

``python -m runstate.client.cli._bench ...`` runs the same command standalone.
"""

from runstate.client.cli._bench._command import BENCHMARKS as BENCHMARKS
from runstate.client.cli._bench._command import bench as bench
from runstate.client.cli._bench._command import run_benchmarks as run_benchmarks
from runstate.client.cli._bench._params import BenchParams as BenchParams
from runstate.client.cli._bench._report import Figure as Figure
from runstate.client.cli._bench._report import Report as Report
from runstate.client.cli._bench._report import Target as Target
from runstate.client.cli._bench._report import markdown as markdown
from runstate.client.cli._bench._report import quantile as quantile
from runstate.client.cli._bench._workload import transitions_per_run as transitions_per_run

__all__ = ["BENCHMARKS", "BenchParams", "Figure", "Report", "bench", "run_benchmarks"]
