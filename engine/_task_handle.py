"""The task handle: a task's latest attempt as its writer sees it, and the moves it may make."""

from __future__ import annotations

import traceback as tb
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from runstate.engine._batches import BatchReceipt
from runstate.engine._capture import not_capturing
from runstate.engine._commits import Receipt, StoredCommit
from runstate.engine._events import (
    ArtifactsRecorded,
    ArtifactsRecordedPayload,
    Event,
    ExceptionInfo,
    MetadataEntry,
    MetadataRecorded,
    MetadataRecordedPayload,
    TaskAttemptStateChanged,
    TaskAttemptStatePayload,
    TaskCreated,
    new_event_id,
    replace_fields,
    utcnow,
)
from runstate.engine._lifetime import _lifetime
from runstate.engine._lines import stream_number
from runstate.engine._log_writer import LogBuffer
from runstate.engine._metrics_writer import MetricsBuffer, PeriodicFlush
from runstate.engine._names import Pathspec
from runstate.engine._points import PointReceipt
from runstate.engine._states import TaskState, check_task_transition
from runstate.engine._values import check_json_value
from runstate.engine.errors import ConflictError, InvalidEvent

if TYPE_CHECKING:
    from runstate.engine._worker import Writer

__all__ = ["TaskHandle"]


# What a task's transitions are made from (see TaskHandle.transition): its fields are replaced
_TRANSITION = TaskAttemptStateChanged(
    id="",
    occurred_at=datetime(1970, 1, 1, tzinfo=UTC),
    pathspec="",
    payload=TaskAttemptStatePayload(state=TaskState.PENDING),
)

_COMMUTING_RETRIES = 16


def _check_texts(*values: object) -> None:
    for value in values:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"a label or message is a string, not {type(value).__name__}")


class TaskHandle:
    """A task as its writer sees it: latest attempt, state, version."""

    def __init__(self, writer: Writer, path: Pathspec, version: int) -> None:
        self._writer = writer
        self.path = path
        self.pathspec = str(path)
        self.step = path.step
        self.id = path.task
        self.attempt = 0
        self.state: TaskState = TaskState.PENDING
        self.index: int | None = None
        self.version = version
        self.receipt: Receipt | None = None
        self._metrics: MetricsBuffer | None = None
        #: the periodic flush of the block running this entity (``_lifetime``), if any
        self._periodic: PeriodicFlush | None = None
        self._output: LogBuffer | None = None
        self._earlier_output: list[LogBuffer] = []

    @classmethod
    def from_commits(
        cls, writer: Writer, path: Pathspec, commits: Sequence[StoredCommit]
    ) -> TaskHandle:
        handle = cls(writer, path, 0)
        for commit in commits:
            for event in commit.events:
                if isinstance(event, TaskCreated):
                    handle.index = event.payload.foreach_index
                elif isinstance(event, TaskAttemptStateChanged):
                    handle.attempt = event.attempt or 0
                    handle.state = event.payload.state
            handle.version = commit.sequence
        return handle

    def __repr__(self) -> str:
        return (
            f"TaskHandle({self.pathspec!r}, attempt={self.attempt}, "
            f"state={self.state.value!r}, version={self.version})"
        )

    async def _reload(self) -> None:
        fresh = await self._writer.task(self.pathspec)
        self.attempt, self.state, self.version = fresh.attempt, fresh.state, fresh.version

    async def _append(self, events: Event | list[Event]) -> Receipt:
        receipt = await self._writer.append(events, expected_version=self.version)
        self.version = receipt.sequence
        self.receipt = receipt
        return receipt

    async def _append_commuting(self, event: Event) -> Receipt:
        for _ in range(_COMMUTING_RETRIES):
            try:
                return await self._append(event)
            except ConflictError:
                await self._reload()
        raise ConflictError(self.pathspec, self.version, -1)

    # -- state ---------------------------------------------------------------

    async def transition(
        self,
        state: TaskState | str,
        *,
        attempt: int | None = None,
        label: str | None = None,
        message: str | None = None,
        exception: ExceptionInfo | None = None,
    ) -> Receipt:
        """Move attempt ``attempt`` (default: the current one) to ``state``."""
        new = TaskState(state)
        number = self.attempt if attempt is None else attempt
        check_task_transition(self.pathspec, self.attempt, self.state, number, new)
        _check_texts(label, message)
        if exception is not None and not isinstance(exception, ExceptionInfo):
            raise TypeError("exception must be an ExceptionInfo; use fail(exc) for an exception")
        # Every value is checked above, so the event skips pydantic's validation:
        # this is the hot path of every worker.
        event = replace_fields(
            _TRANSITION,
            {
                "id": new_event_id(),
                "occurred_at": utcnow(),
                "pathspec": self.pathspec,
                "attempt": number,
                "actor": self._writer.user,
                "payload": replace_fields(
                    _TRANSITION.payload,
                    {"state": new, "label": label, "message": message, "exception": exception},
                ),
            },
        )
        receipt = await self._append(event)
        self.attempt, self.state = number, new
        return receipt

    async def start(self, *, label: str | None = None) -> Receipt:
        return await self.transition(TaskState.RUNNING, label=label)

    async def complete(self, *, label: str | None = None, message: str | None = None) -> Receipt:
        return await self.transition(TaskState.COMPLETED, label=label, message=message)

    async def fail(
        self,
        error: BaseException | str | None = None,
        *,
        label: str | None = None,
    ) -> Receipt:
        """Fail the current attempt with an exception (type, message, traceback) or a message."""
        info: ExceptionInfo | None = None
        message: str | None = None
        if isinstance(error, BaseException):
            info = ExceptionInfo(
                type=f"{type(error).__module__}.{type(error).__qualname__}".removeprefix(
                    "builtins."
                ),
                message=str(error),
                traceback="".join(tb.format_exception(error)),
            )
            message = f"{type(error).__name__}: {error}"
        elif error is not None:
            message = error
        return await self.transition(TaskState.FAILED, label=label, message=message, exception=info)

    async def cancel(self, message: str | None = None) -> Receipt:
        return await self.transition(TaskState.CANCELLED, message=message)

    async def retry(self, *, label: str | None = "AwaitingRetry") -> Receipt:
        """Open the next attempt (pending) after a failed, cancelled or crashed one."""
        return await self.transition(TaskState.PENDING, attempt=self.attempt + 1, label=label)

    @asynccontextmanager
    async def attempting(
        self, *, heartbeat: bool = True, capture_output: bool = True
    ) -> AsyncIterator[TaskHandle]:
        """Run the block as the current attempt: start it if pending, heartbeat, then finish it.

        With ``capture_output`` (the default), what the block's context
        prints or logs is also written to this attempt's log lines
        (``runstate.engine._capture``).
        """
        if self.state is TaskState.PENDING:
            await self.start()
        output = self._output_buffer() if capture_output else None
        async with _lifetime(self, heartbeat, self.fail, output):
            yield self

    # -- data ----------------------------------------------------------------

    async def save(self, **artifacts: Any) -> Receipt:
        """Record artifacts of the current attempt: ``await task.save(accuracy=0.9, model=m)``."""
        if not artifacts:
            raise ValueError("save() needs at least one name=value")
        records = [await self._writer.artifacts.record(n, v) for n, v in artifacts.items()]
        event = ArtifactsRecorded(
            pathspec=self.pathspec,
            attempt=self.attempt,
            actor=self._writer.user,
            payload=ArtifactsRecordedPayload(artifacts=records),
        )
        return await self._append_commuting(event)

    async def record_metadata(self, **entries: Any) -> Receipt:
        """Record metadata of the current attempt: ``await task.record_metadata(runtime="k8s")``."""
        if not entries:
            raise ValueError("record_metadata() needs at least one name=value")
        for name, value in entries.items():
            check_json_value(value, f"metadata {name}")
        items = [
            MetadataEntry(
                name=name,
                value=value if isinstance(value, str) else orjson.dumps(value).decode(),
                type=type(value).__name__,
            )
            for name, value in entries.items()
        ]
        event = MetadataRecorded(
            pathspec=self.pathspec,
            attempt=self.attempt,
            actor=self._writer.user,
            payload=MetadataRecordedPayload(entries=items),
        )
        return await self._append_commuting(event)

    async def heartbeat(self) -> None:
        await self._writer.heartbeat(self.pathspec)

    # -- metrics (runstate.engine._metrics_writer) ----------------------------

    async def log(self, row: Mapping[str, Any], *, step: int | None = None) -> None:
        """Log a row of metrics of the current attempt, as W&B's ``run.log``.

        ``step`` defaults to the last step + 1 (0 first); a step before the
        last raises ``StepWentBack``, the last step again adds keys to its
        row. Values are numbers (NaN and infinities included), bools or
        strings, else ``InvalidEvent``. Rows are buffered and sent in
        batches: when the buffer is full, every second inside the task's
        block, at its exit and on ``flush()``.
        """
        metrics = self._metrics
        if metrics is None or metrics.attempt != self.attempt:
            if metrics is not None:
                await metrics.flush()  # the earlier attempt's rows go first
            metrics = self._metrics = MetricsBuffer(self._writer.log, self.pathspec, self.attempt)
        await metrics.log(row, step)
        if self._periodic is not None:
            self._periodic.wanted()

    async def flush(self) -> PointReceipt | None:
        """Send the buffered log lines and metric rows now; the last metric batch's receipt.

        Pass its ``sequence`` as ``after=`` to a metric read to see them.
        Raises ``Unavailable`` when they cannot be stored within the retry
        budget; they stay buffered and are sent again with the same commit ids.
        """
        await self.flush_logs()
        return None if self._metrics is None else await self._metrics.flush()

    # -- log lines (runstate.engine._log_writer) -------------------------------

    def _output_buffer(self) -> LogBuffer:
        """The log lines buffer of the current attempt (made when the attempt changed)."""
        output = self._output
        if output is None or output.attempt != self.attempt:
            if output is not None:
                self._earlier_output.append(output)  # sent first, by the next flush
            output = self._output = LogBuffer(self._writer.log, self.pathspec, self.attempt)
        return output

    async def write_log(self, text: str, stream: str = "stdout") -> None:
        """Write ``text`` to the current attempt's ``stdout`` or ``stderr`` log, as lines.

        Each newline ends a line, and so does the end of ``text``; each line
        keeps the time it was written. Lines are buffered and sent as
        ``log`` rows are (see ``log``). ``InvalidEvent`` for a text that is
        not a string or another stream, before anything is buffered.
        """
        number = stream_number(stream)
        if not isinstance(text, str):
            raise InvalidEvent(f"write_log() takes a string, not {type(text).__name__}")
        output = self._output_buffer()
        output.write_lines(number, text)
        if output.full:
            await self.flush_logs()

    async def flush_logs(self) -> BatchReceipt | None:
        """Send the buffered log lines now; the receipt of the last batch stored (None if
        none was). Raises ``Unavailable`` as ``flush`` does."""
        with not_capturing():
            while self._earlier_output:
                await self._earlier_output[0].flush()
                del self._earlier_output[0]
            return None if self._output is None else await self._output.flush()
