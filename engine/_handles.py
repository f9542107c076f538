"""The run handle: a run as its writer sees it, and the moves it may make.

Every handle (this one and ``TaskHandle``, in ``_task_handle``) remembers its
entity's version (the last sequence it saw), so
each transition is appended with optimistic concurrency: if someone else
(the reaper, an orchestrator) changed the entity meanwhile, the transition
raises ``ConflictError`` instead of overwriting. Tags, metadata and
artifacts commute: on a conflict they reload the entity and try again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from runstate.engine._commits import ATOMIC_BATCH_LIMIT, Commit, Receipt, StoredCommit
from runstate.engine._events import (
    Event,
    ForeachFrame,
    RunCreated,
    RunCreatedPayload,
    RunStateChanged,
    RunStateChangedPayload,
    RunTagsChanged,
    RunTagsChangedPayload,
    RunUpdated,
    TaskAttemptStateChanged,
    TaskAttemptStatePayload,
    TaskCreated,
    TaskCreatedPayload,
)
from runstate.engine._lifetime import _lifetime
from runstate.engine._metrics_writer import MetricsBuffer, PeriodicFlush
from runstate.engine._names import Pathspec, check_id, check_step_name, parse_pathspec
from runstate.engine._points import PointReceipt
from runstate.engine._run_update import UNCHANGED, Unchanged, run_update
from runstate.engine._states import RunState, TaskState, check_run_transition
from runstate.engine._task_handle import _COMMUTING_RETRIES, TaskHandle
from runstate.engine._values import check_json_value
from runstate.engine.errors import ConflictError, InvalidName, NotFound, PayloadTooLarge

if TYPE_CHECKING:
    from runstate.engine._worker import Writer

__all__ = ["RunHandle", "TaskHandle", "check_tags"]


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
        #: the periodic flush of the block running this entity (``_lifetime``), if any
        self._periodic: PeriodicFlush | None = None

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
        receipt = await self._writer.append(event, expected_version=self.version)
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

    # -- name, notes, config and summary (W&B's edits of a run) ---------------

    async def update_summary(self, values: Mapping[str, Any]) -> Receipt:
        """Set summary values, which override the latest logged value of their keys
        (later logged points too), as W&B's ``run.summary.update``."""
        return await self.update(summary=values)

    async def update_config(self, values: Mapping[str, Any]) -> Receipt:
        """Add to or change the run's config (its parameters, then every update)."""
        return await self.update(config=values)

    async def set_name(self, name: str | None) -> Receipt:
        """Set the run's display name (None clears it)."""
        return await self.update(name=name)

    async def set_notes(self, notes: str | None) -> Receipt:
        """Set the run's notes (None clears them)."""
        return await self.update(notes=notes)

    async def update(
        self,
        *,
        name: str | Unchanged | None = UNCHANGED,
        notes: str | Unchanged | None = UNCHANGED,
        config: Mapping[str, Any] | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> Receipt:
        """Change any of name, notes, config and summary in one ``run.updated`` event.

        Allowed in every state, finished runs included. Edits commute: on a
        version conflict the handle reloads the run and appends again. Raises
        ``InvalidEvent`` for a value that is not JSON, before anything is sent.
        """
        payload = run_update(name=name, notes=notes, config=config, summary=summary)
        event = RunUpdated(pathspec=self.pathspec, actor=self._writer.user, payload=payload)
        for _ in range(_COMMUTING_RETRIES):
            try:
                return await self._append(event)
            except ConflictError:
                await self._reload()
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
        parent_specs = self._parent_pathspecs(parents)
        while True:
            tid = given or str(await self._writer.log.increment(self._task_counter()))
            events = self._task_events(
                step, tid, index, foreach_stack, parent_specs, runtime_name, environment_info, start
            )
            try:
                receipt = await self._writer.append(events, expected_version=0)
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

    def _parent_pathspecs(self, parents: Iterable[str | TaskHandle]) -> list[str]:
        """The parents' pathspecs, checked once: ``InvalidName`` for a malformed one or a
        task of another run."""
        specs = []
        for parent in parents:
            spec = parent.pathspec if isinstance(parent, TaskHandle) else parent
            path = parse_pathspec(spec, min_depth=4, max_depth=4)
            if path.run_pathspec != self.pathspec:
                raise InvalidName(
                    f"parent task {spec} belongs to another run than {self.pathspec}; a task's "
                    "parents are tasks of its own run (record a link to another run as metadata)"
                )
            specs.append(spec)
        return specs

    def _task_counter(self) -> str:
        return self._writer.subjects.task_counter(self.flow, self.id)

    def _task_events(
        self,
        step: str,
        tid: str,
        index: int | None,
        foreach_stack: Sequence[ForeachFrame],
        parent_specs: list[str],
        runtime_name: str | None,
        environment_info: Mapping[str, Any] | None,
        start: bool,
    ) -> list[Event]:
        """A new task's events; ``parent_specs`` come checked from ``_parent_pathspecs``."""
        pathspec = f"{self.pathspec}/{step}/{tid}"
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
        parent_list = self._parent_pathspecs(parents)
        last = await self._writer.log.increment(self._task_counter(), by=count)
        first = last - count + 1
        commits = []
        for i in range(count):
            frame = ForeachFrame(step=step, index=i, num_splits=count)
            events = self._task_events(
                step, str(first + i), i, [frame], parent_list, runtime_name, None, False
            )
            commits.append(Commit(events, expected_version=0))
        receipts = await self._writer.append_atomic(commits)
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
        capture_output: bool = True,
    ) -> AsyncIterator[TaskHandle]:
        """Create a task and run the block as its attempt 0.

        The task is created pending and started running in one commit, sends
        heartbeats while the block runs, and is completed at exit; if the
        block raises, the attempt is failed with the exception (type, message,
        traceback) and the exception propagates. What the block prints or
        logs is written to the task's log lines too, unless ``capture_output``
        is False (see ``TaskHandle.attempting``).
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
        async with handle.attempting(heartbeat=heartbeat, capture_output=capture_output):
            yield handle

    async def heartbeat(self) -> None:
        await self._writer.heartbeat(self.pathspec)

    # -- metrics (runstate.engine._metrics_writer) ----------------------------

    async def log(self, row: Mapping[str, Any], *, step: int | None = None) -> None:
        """Log a row of metrics of the run, as W&B's ``run.log``: see ``TaskHandle.log``."""
        if self._metrics is None:
            self._metrics = MetricsBuffer(self._writer.log, self.pathspec, None)
        await self._metrics.log(row, step)
        if self._periodic is not None:
            self._periodic.wanted()

    async def flush(self) -> PointReceipt | None:
        """Send the buffered metric rows now; see ``TaskHandle.flush``."""
        return None if self._metrics is None else await self._metrics.flush()


def _apply_tags(tags: set[str], payload: RunTagsChangedPayload) -> set[str]:
    result = set(payload.replace) if payload.replace is not None else set(tags)
    result |= set(payload.add)
    result -= set(payload.remove)
    return result
