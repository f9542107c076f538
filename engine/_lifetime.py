"""A run's or task's lifetime as a block: heartbeats while it runs, finished when it ends."""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from runstate.engine._capture import capturing
from runstate.engine._lines import STDERR
from runstate.engine._logging import get_logger
from runstate.engine._metrics_writer import flushing_periodically
from runstate.engine._system_metrics import sampling_system

if TYPE_CHECKING:
    from runstate.engine._handles import RunHandle
    from runstate.engine._log_writer import LogBuffer
    from runstate.engine._task_handle import TaskHandle
    from runstate.engine._worker import Writer

__all__: list[str] = []

log = get_logger("runstate.worker")


@asynccontextmanager
async def _lifetime(
    handle: RunHandle | TaskHandle,
    heartbeat: bool,
    fail: Callable[[BaseException], Awaitable[object]],
    output: LogBuffer | None = None,
) -> AsyncIterator[None]:
    """Heartbeat (and flush metric rows and log lines) while the block runs, then finish
    the entity: completed at the end, ``fail(exception)`` if the block raises, cancelled
    if it is cancelled. With ``output``, the block's output is captured into it
    (``_capture``), and an exception the block raises ends its stderr with its traceback.
    Rows and lines are flushed before the entity finishes; a flush that
    fails at the end fails the entity with its error, which propagates."""
    interval = handle._writer.log.settings.metrics_flush_interval
    attempt: int | None = getattr(handle, "attempt", None)  # a run's points have none
    async with (
        _heartbeating(handle._writer, handle.pathspec, heartbeat),
        flushing_periodically(handle.flush, interval, lazy=True) as periodic,
        sampling_system(handle._writer.log, handle.pathspec, attempt),
    ):
        handle._periodic = periodic  # its log() starts the flushing once rows wait
        try:
            if output is None:
                yield
            else:
                output.wanted = periodic.wanted  # lines waiting start the flushing too
                with capturing(output):
                    try:
                        yield
                    except Exception as exc:  # its traceback ends the task's stderr, as Metaflow's
                        output.write_lines(STDERR, "".join(traceback.format_exception(exc)))
                        raise
                    finally:
                        output.wanted = None
            handle._periodic = None
            await handle.flush()
        except anyio.get_cancelled_exc_class():
            handle._periodic = None
            with anyio.CancelScope(shield=True):
                await _flush_quietly(handle)
                if not handle.state.terminal:
                    await handle.cancel("cancelled")
            raise
        except BaseException as exc:
            handle._periodic = None
            with anyio.CancelScope(shield=True):
                await _flush_quietly(handle)
                if not handle.state.terminal:
                    await fail(exc)
            raise
    if not handle.state.terminal:
        await handle.complete()


async def _flush_quietly(handle: RunHandle | TaskHandle) -> None:
    """Flush what the block logged before it failed, within one request's time; a
    fault here is logged, the block's own error being the one to report."""
    with anyio.move_on_after(handle._writer.log.settings.request_timeout):
        try:
            await handle.flush()
        except Exception as exc:
            log.warning("metrics.flush_failed", pathspec=handle.pathspec, error=str(exc))


@asynccontextmanager
async def _heartbeating(writer: Writer, pathspec: str, enabled: bool) -> AsyncIterator[None]:
    """Send heartbeats for ``pathspec`` every ``settings.heartbeat_interval`` while inside."""
    if not enabled:
        yield
        return
    interval = writer.log.settings.heartbeat_interval

    async def beat() -> None:
        while True:
            try:
                await writer.heartbeat(pathspec)
            except Exception as exc:  # a missed beat is not worth failing the task
                log.debug("heartbeat.failed", pathspec=pathspec, error=str(exc))
            await anyio.sleep(interval)

    # The block's exception is re-raised outside the task group: inside it, anyio
    # would wrap it in an ExceptionGroup and callers could not catch it by type.
    error: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(beat)
        try:
            yield
        except Exception as exc:
            error = exc
        finally:
            group.cancel_scope.cancel()
    if error is not None:
        raise error
