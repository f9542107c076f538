"""An opt-in sampler of the process's CPU and memory, into the ``system`` metric stream.

As W&B's system metrics: while a task's (or run's) block runs, every
``settings.system_metrics_interval`` seconds (0, the default: never) one
row of the worker process's ``cpu_percent``, ``memory_rss_mb``,
``memory_percent`` and ``threads`` is logged on the entity's ``system``
stream and sent at once (a sample a second needs no batching). Read them
with ``history(stream="system")`` and ``system_metrics()``. It needs
psutil: ``pip install 'runstate[system]'``.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from runstate.engine._logging import get_logger
from runstate.engine._metrics_writer import MetricsBuffer
from runstate.engine._typing import EventLog
from runstate.engine.errors import ConfigurationError

__all__ = ["check_sampler", "sample", "sampling_system"]

log = get_logger("runstate.metrics")


def _psutil() -> Any:
    try:
        return importlib.import_module("psutil")
    except ImportError:
        raise ConfigurationError(
            "system_metrics_interval needs psutil: install the extra, "
            "pip install 'runstate[system]'"
        ) from None


def check_sampler(event_log: EventLog) -> None:
    """``ConfigurationError`` now, rather than when a task starts, if the settings ask
    for system metrics and psutil is missing."""
    if event_log.settings.system_metrics_interval > 0:
        _psutil()


def sample(process: Any) -> dict[str, Any]:
    """One row of a ``psutil.Process``'s CPU (since the last call) and memory."""
    with process.oneshot():
        return {
            "cpu_percent": float(process.cpu_percent(None)),
            "memory_rss_mb": process.memory_info().rss / 2**20,
            "memory_percent": float(process.memory_percent()),
            "threads": int(process.num_threads()),
        }


@asynccontextmanager
async def sampling_system(
    event_log: EventLog, pathspec: str, attempt: int | None
) -> AsyncIterator[None]:
    """Sample the process into ``pathspec``'s system stream while inside, when
    ``settings.system_metrics_interval`` is set; ``ConfigurationError`` without psutil.

    A sample that cannot be sent is logged and goes with the next one: system metrics
    never fail a task.
    """
    interval = event_log.settings.system_metrics_interval
    if interval <= 0:
        yield
        return
    process = _psutil().Process()
    process.cpu_percent(None)  # the first call only starts the measurement
    buffer = MetricsBuffer(event_log, pathspec, attempt, "system")

    async def run() -> None:
        while True:
            try:
                await buffer.log(sample(process))
                await buffer.flush()
            except Exception as exc:
                log.warning("metrics.system_sample_failed", pathspec=pathspec, error=str(exc))
            await anyio.sleep(interval)

    # As in _heartbeating: the block's exception is re-raised outside the task group.
    error: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(run)
        try:
            yield
        except Exception as exc:
            error = exc
        finally:
            group.cancel_scope.cancel()
    if error is not None:
        raise error
