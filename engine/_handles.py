"""Run and task handles: an entity as its writer sees it, and the moves it may make.

Every handle remembers its entity's version (the last sequence it saw), so
each transition is appended with optimistic concurrency: if someone else
(the reaper, an orchestrator) changed the entity meanwhile, the transition
raises ``ConflictError`` instead of overwriting. Tags, metadata and
artifacts commute: on a conflict they reload the entity and try again.
"""

from __future__ import annotations

import traceback as tb
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from runstate.engine._commits import ATOMIC_BATCH_LIMIT, Commit, Receipt, StoredCommit
from runstate.engine._events import (
    ArtifactsRecorded,
    ArtifactsRecordedPayload,
    Event,
    ExceptionInfo,
    ForeachFrame,
    MetadataEntry,
    MetadataRecorded,
    MetadataRecordedPayload,
    RunCreated,
    RunCreatedPayload,
    RunStateChanged,
    RunStateChangedPayload,
    RunTagsChanged,
    RunTagsChangedPayload,
    TaskAttemptStateChanged,
    TaskAttemptStatePayload,
    TaskCreated,
    TaskCreatedPayload,
    new_event_id,
    replace_fields,
    utcnow,
)
from runstate.engine._logging import get_logger
from runstate.engine._metrics_writer import MetricsBuffer, flushing_periodically
from runstate.engine._names import (
    Pathspec,
    check_id,
    check_step_name,
    parse_pathspec,
)
from runstate.engine._points import PointReceipt
from runstate.engine._states import (
    RunState,
    TaskState,
    check_run_transition,
    check_task_transition,
)
from runstate.engine._system_metrics import sampling_system
from runstate.engine._values import check_json_value
from runstate.engine.errors import (
    ConflictError,
    InvalidName,
    NotFound,
    PayloadTooLarge,
)

if TYPE_CHECKING:
    from runstate.engine._worker import Writer

__all__ = ["RunHandle", "TaskHandle", "check_tags"]

log = get_logger("runstate.worker")

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


def check_tags(tags: Iterable[str]) -> list[str]:
    result = []
    for tag in tags:
        if not isinstance(tag, str) or not tag or len(tag) > 256:
            raise InvalidName(
                f"invalid tag {tag!r}: use a non-empty string of up to 256 characters"
            )
        result.append(tag)
    return result


class RunHandle:
    """A run as its writer sees it: id, state, version, and the moves it may make."""

    def __init__(
        self,
        writer: Writer,
        created: RunCreatedPayload,
        version: int,
        receipt: Receipt | None = None,
    ) -> None:
        self._writer = writer
        self.flow = created.flow
        self.id = created.run_id
        self.pathspec = f"{created.flow}/{created.run_id}"
        self.state: RunState = created.state
        self.tags: set[str] = set(created.tags)
        self.system_tags: frozenset[str] = frozenset(created.system_tags)
        self.parameters = dict(created.parameters)
        self.version = version
        #: the receipt of the last write through this handle (pass as ``after=``)
        self.receipt = receipt
        self._metrics: MetricsBuffer | None = None

    @classmethod
    def from_commits(cls, writer: Writer, commits: Sequence[StoredCommit]) -> RunHandle:
        handle: RunHandle | None = None
        for commit in commits:
            for event in commit.events:
                if isinstance(event, RunCreated):
                    handle = cls(writer, event.payload, commit.sequence)
                elif handle is not None:
                    handle._fold(event)
            if handle is not None:
                handle.version = commit.sequence
        if handle is None:
            raise NotFound(f"no run.created event on {commits[0].subject}")
        return handle

    def _fold(self, event: Event) -> None:
        if isinstance(event, RunStateChanged):
            self.state = event.payload.state
        elif isinstance(event, RunTagsChanged):
            self.tags = _apply_tags(self.tags, event.payload)

    def __repr__(self) -> str:
        return f"RunHandle({self.pathspec!r}, state={self.state.value!r}, version={self.version})"

    async def _reload(self) -> None:
        fresh = await self._writer.run(self.pathspec)
        self.state, self.tags, self.version = fresh.state, fresh.tags, fresh.version

    async def _append(self, event: Event) -> Receipt:
        receipt = await self._writer.log.append(event, expected_version=self.version)
        self.version = receipt.sequence
        self.receipt = receipt
        return receipt

    # -- state -------------------------------------------------------------

    async def transition(
        self,
        state: RunState | str,
        *,
        label: str | None = None,
        message: str | None = None,
        resume: bool = False,
    ) -> Receipt:
        """Move the run to ``state``; ``IllegalTransition`` or ``ConflictError`` if it may not."""
        new = RunState(state)
        check_run_transition(self.pathspec, self.state, new, resume=resume)
        event = RunStateChanged(
            pathspec=self.pathspec,
            actor=self._writer.user,
            payload=RunStateChangedPayload(state=new, label=label, message=message, resume=resume),
        )
        receipt = await self._append(event)
        self.state = new
        return receipt

    async def start(self, *, label: str | None = None) -> Receipt:
        return await self.transition(RunState.RUNNING, label=label)

    async def complete(self, *, label: str | None = None, message: str | None = None) -> Receipt:
        return await self.transition(RunState.COMPLETED, label=label, message=message)

    async def fail(self, message: str | None = None, *, label: str | None = None) -> Receipt:
        return await self.transition(RunState.FAILED, label=label, message=message)

    async def cancel(self, message: str | None = None) -> Receipt:
        return await self.transition(RunState.CANCELLED, message=message)

    async def request_cancel(self, message: str | None = None) -> Receipt:
        """Ask a running run to stop (``cancelling``); its worker then cancels it."""
        return await self.transition(RunState.CANCELLING, message=message)

    async def resume(self, message: str | None = None) -> Receipt:
        """Resume a failed, crashed or cancelled run (back to ``running``)."""
        return await self.transition(RunState.RUNNING, message=message, resume=True)

    @asynccontextmanager
    async def running(self, *, heartbeat: bool = True) -> AsyncIterator[RunHandle]:
        """Start the run, heartbeat while the block runs, then complete it or fail it.

        If the block raises, the run is marked failed with the exception's
        message and the exception propagates; a cancelled block marks it cancelled.
        """
        await self.start()
        async with _lifetime(
            self, heartbeat, lambda exc: self.fail(f"{type(exc).__name__}: {exc}")
        ):
            yield self

    # -- tags ----------------------------------------------------------------

    async def add_tags(self, *tags: str) -> Receipt:
        return await self._change_tags(RunTagsChangedPayload(add=check_tags(tags)))

    async def add_tag(self, tag: str) -> Receipt:
        return await self.add_tags(tag)

    async def remove_tags(self, *tags: str) -> Receipt:
        return await self._change_tags(RunTagsChangedPayload(remove=check_tags(tags)))

    async def remove_tag(self, tag: str) -> Receipt:
        return await self.remove_tags(tag)

    async def replace_tags(self, tags: Iterable[str]) -> Receipt:
        """Set the user tags to exactly ``tags`` (system tags never change)."""
        return await self._change_tags(RunTagsChangedPayload(replace=check_tags(tags)))

    async def _change_tags(self, payload: RunTagsChangedPayload) -> Receipt:
        protected = (set(payload.add) | set(payload.remove) | set(payload.replace or ())) & set(
            self.system_tags
        )
        if protected:
            raise InvalidName(
                f"system tags cannot be changed: {sorted(protected)}; "
                "they are set when the run is created"
            )
        event = RunTagsChanged(pathspec=self.pathspec, actor=self._writer.user, payload=payload)
        for _ in range(_COMMUTING_RETRIES):
            try:
                receipt = await self._append(event)
            except ConflictError:
                await self._reload()
                continue
            self.tags = _apply_tags(self.tags, payload)
            return receipt
        raise ConflictError(self.pathspec, self.version, -1)

    # -- tasks ---------------------------------------------------------------

    async def create_task(
        self,
        step: str,
        task_id: str | int | None = None,
        *,
        index: int | None = None,
        foreach_stack: Sequence[ForeachFrame] = (),
        parents: Iterable[str | TaskHandle] = (),
        runtime_name: str | None = None,
        environment_info: Mapping[str, Any] | None = None,
        start: bool = False,
    ) -> TaskHandle:
        """Create a task of ``step`` (pending; running too with ``start=True``), one commit.

        Without ``task_id`` the task gets the run's next integer id. Raises
        ``ConflictError`` when a given ``task_id`` exists.
        """
        check_step_name(step)
        given = check_id(task_id, "task id") if task_id is not None else None
        check_json_value(dict(environment_info or {}), "environment_info")
        parents = list(parents)
        self._check_parents(parents)
        while True:
            tid = given or str(await self._writer.log.increment(self._task_counter()))
            events = self._task_events(
                step, tid, index, foreach_stack, parents, runtime_name, environment_info, start
            )
            try:
                receipt = await self._writer.log.append(events, expected_version=0)
            except ConflictError:
                if given is not None:
                    raise
                continue  # someone gave this id explicitly; take the next
            break
        handle = TaskHandle(self._writer, Pathspec(self.flow, self.id, step, tid), receipt.sequence)
        handle.state = TaskState.RUNNING if start else TaskState.PENDING
        handle.receipt = receipt
        handle.index = index
        return handle

    def _check_parents(self, parents: Iterable[str | TaskHandle]) -> None:
        """``InvalidName`` for a parent that is not a task of this run."""
        for parent in parents:
            spec = parent.pathspec if isinstance(parent, TaskHandle) else parent
            path = parse_pathspec(spec, min_depth=4, max_depth=4)
            if path.run_pathspec != self.pathspec:
                raise InvalidName(
                    f"parent task {spec} belongs to another run than {self.pathspec}; a task's "
                    "parents are tasks of its own run (record a link to another run as metadata)"
                )

    def _task_counter(self) -> str:
        return self._writer.subjects.task_counter(self.flow, self.id)

    def _task_events(
        self,
        step: str,
        tid: str,
        index: int | None,
        foreach_stack: Sequence[ForeachFrame],
        parents: Iterable[str | TaskHandle],
        runtime_name: str | None,
        environment_info: Mapping[str, Any] | None,
        start: bool,
    ) -> list[Event]:
        pathspec = f"{self.pathspec}/{step}/{tid}"
        parent_specs = [p.pathspec if isinstance(p, TaskHandle) else p for p in parents]
        for parent in parent_specs:
            parse_pathspec(parent, min_depth=4, max_depth=4)
        stack = list(foreach_stack)
        if index is not None and not stack:
            stack = [ForeachFrame(step=step, index=index)]
        events: list[Event] = [
            TaskCreated(
                pathspec=pathspec,
                attempt=0,
                actor=self._writer.user,
                payload=TaskCreatedPayload(
                    step=step,
                    task_id=tid,
                    foreach_index=index,
                    foreach_stack=stack,
                    parent_tasks=parent_specs,
                    runtime_name=runtime_name,
                    environment_info=dict(environment_info or {}),
                ),
            )
        ]
        if start:
            events.append(
                TaskAttemptStateChanged(
                    pathspec=pathspec,
                    attempt=0,
                    actor=self._writer.user,
                    payload=TaskAttemptStatePayload(state=TaskState.RUNNING),
                )
            )
        return events

    async def foreach(
        self,
        step: str,
        count: int,
        *,
        parents: Iterable[str | TaskHandle] = (),
        runtime_name: str | None = None,
    ) -> list[TaskHandle]:
        """Fan out: create ``count`` pending tasks of ``step`` atomically (all or none).

        Task ids are allocated in one counter step; each task's foreach
        index is its position. Uses a JetStream atomic batch (at most 1000).
        """
        check_step_name(step)
        if count < 1:
            raise ValueError("a foreach needs at least one task")
        if count > ATOMIC_BATCH_LIMIT:
            raise PayloadTooLarge(
                f"a foreach creates at most {ATOMIC_BATCH_LIMIT} tasks at once (one atomic "
                f"batch), not {count}; split it into several foreach steps"
            )
        parent_list = list(parents)
        self._check_parents(parent_list)
        last = await self._writer.log.increment(self._task_counter(), by=count)
        first = last - count + 1
        commits = []
        for i in range(count):
            frame = ForeachFrame(step=step, index=i, num_splits=count)
            events = self._task_events(
                step, str(first + i), i, [frame], parent_list, runtime_name, None, False
            )
            commits.append(Commit(events, expected_version=0))
        receipts = await self._writer.log.append_atomic(commits)
        handles = []
        for i, receipt in enumerate(receipts):
            handle = TaskHandle(
                self._writer, Pathspec(self.flow, self.id, step, str(first + i)), receipt.sequence
            )
            handle.state = TaskState.PENDING
            handle.index = i
            handle.receipt = receipt
            handles.append(handle)
        if receipts:
            self.receipt = receipts[-1]
        return handles

    @asynccontextmanager
    async def task(
        self,
        step: str,
        task_id: str | int | None = None,
        *,
        index: int | None = None,
        parents: Iterable[str | TaskHandle] = (),
        runtime_name: str | None = None,
        environment_info: Mapping[str, Any] | None = None,
        heartbeat: bool = True,
    ) -> AsyncIterator[TaskHandle]:
        """Create a task and run the block as its attempt 0.

        The task is created pending and started running in one commit, sends
        heartbeats while the block runs, and is completed at exit; if the
        block raises, the attempt is failed with the exception (type, message,
        traceback) and the exception propagates.
        """
        handle = await self.create_task(
            step,
            task_id,
            index=index,
            parents=parents,
            runtime_name=runtime_name,
            environment_info=environment_info,
            start=True,
        )
        async with handle.attempting(heartbeat=heartbeat):
            yield handle

    async def heartbeat(self) -> None:
        await self._writer.heartbeat(self.pathspec)

    # -- metrics (runstate.engine._metrics_writer) ----------------------------

    async def log(self, row: Mapping[str, Any], *, step: int | None = None) -> None:
        """Log a row of metrics of the run, as W&B's ``run.log``: see ``TaskHandle.log``."""
        if self._metrics is None:
            self._metrics = MetricsBuffer(self._writer.log, self.pathspec, None)
        await self._metrics.log(row, step)

    async def flush(self) -> PointReceipt | None:
        """Send the buffered metric rows now; see ``TaskHandle.flush``."""
        return None if self._metrics is None else await self._metrics.flush()


def _apply_tags(tags: set[str], payload: RunTagsChangedPayload) -> set[str]:
    result = set(payload.replace) if payload.replace is not None else set(tags)
    result |= set(payload.add)
    result -= set(payload.remove)
    return result


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
        receipt = await self._writer.log.append(events, expected_version=self.version)
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
    async def attempting(self, *, heartbeat: bool = True) -> AsyncIterator[TaskHandle]:
        """Run the block as the current attempt: start it if pending, heartbeat, then finish it."""
        if self.state is TaskState.PENDING:
            await self.start()
        async with _lifetime(self, heartbeat, self.fail):
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

    async def flush(self) -> PointReceipt | None:
        """Send the buffered metric rows now and return the last batch's receipt.

        Pass its ``sequence`` as ``after=`` to a metric read to see them.
        Raises ``Unavailable`` when they cannot be stored within the retry
        budget; they stay buffered and are sent again with the same commit ids.
        """
        return None if self._metrics is None else await self._metrics.flush()


@asynccontextmanager
async def _lifetime(
    handle: RunHandle | TaskHandle,
    heartbeat: bool,
    fail: Callable[[BaseException], Awaitable[object]],
) -> AsyncIterator[None]:
    """Heartbeat (and flush metric rows) while the block runs, then finish the entity:
    completed at the end, ``fail(exception)`` if the block raises, cancelled if it is
    cancelled. Metric rows are flushed before the entity finishes; a flush that fails
    at the end fails the entity with its error, which propagates."""
    interval = handle._writer.log.settings.metrics_flush_interval
    attempt = handle.attempt if isinstance(handle, TaskHandle) else None
    async with (
        _heartbeating(handle._writer, handle.pathspec, heartbeat),
        flushing_periodically(handle.flush, interval),
        sampling_system(handle._writer.log, handle.pathspec, attempt),
    ):
        try:
            yield
            await handle.flush()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await _flush_quietly(handle)
                if not handle.state.terminal:
                    await handle.cancel("cancelled")
            raise
        except BaseException as exc:
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
