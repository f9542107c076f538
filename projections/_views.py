"""The views the projector builds and the client reads: runs, steps, tasks, artifacts.

Views are immutable values. Each carries ``position``, the (stream
sequence, index in commit) of the last event folded into it, which is what
makes folding idempotent and what a live subscription resumes from.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PlainSerializer

from runstate.engine._events import ExceptionInfo, ForeachFrame
from runstate.engine._states import RunState, TaskState

__all__ = [
    "ArtifactView",
    "AttemptView",
    "MetadataView",
    "Position",
    "Rejection",
    "RunView",
    "StepSummary",
    "StepView",
    "TaskView",
]

#: (stream sequence, index of the event in its commit)
Position = tuple[int, int]

ZERO: Position = (0, 0)


#: a set of tags, written sorted: a set's order changes with the process's string hashes,
#: and two answers about one run should be the same bytes
Tags = Annotated[frozenset[str], PlainSerializer(sorted, return_type=list[str])]


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Rejection(_View):
    """An event the state machine refused while folding (from a foreign or old writer)."""

    sequence: int
    index: int
    type: str
    reason: str


class ArtifactView(_View):
    """One recorded artifact: where its value is, and the value itself when small."""

    name: str
    task: str  # the task's pathspec
    attempt: int
    sha256: str
    size: int
    codec: str
    created_at: datetime
    sequence: int
    inline: JsonValue = None
    ref: str | None = None

    @property
    def pathspec(self) -> str:
        return f"{self.task}/{self.name}"


class MetadataView(_View):
    name: str
    value: str
    type: str
    attempt: int
    created_at: datetime


class AttemptView(_View):
    """One attempt of a task."""

    attempt: int
    state: TaskState
    label: str | None = None
    message: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exception: ExceptionInfo | None = None


class TaskView(_View):
    """A task: its attempts (the latest decides its state), data and lineage."""

    pathspec: str
    flow: str
    run_id: str
    step: str
    task_id: str
    state: TaskState
    label: str | None = None
    message: str | None = None
    attempt: int = 0
    attempts: tuple[AttemptView, ...] = ()
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    foreach_index: int | None = None
    foreach_stack: tuple[ForeachFrame, ...] = ()
    parent_tasks: tuple[str, ...] = ()
    child_tasks: tuple[str, ...] = ()
    runtime_name: str | None = None
    environment_info: dict[str, JsonValue] = Field(default_factory=dict)
    metadata: tuple[MetadataView, ...] = ()
    artifacts: tuple[ArtifactView, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    position: Position = (0, 0)

    @property
    def finished(self) -> bool:
        return self.state.terminal

    @property
    def successful(self) -> bool:
        return self.state is TaskState.COMPLETED

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def exception(self) -> ExceptionInfo | None:
        """The exception of the latest attempt, if it failed with one."""
        return self.attempts[-1].exception if self.attempts else None

    @property
    def metadata_dict(self) -> dict[str, str]:
        """The latest recorded value of each metadata name, of any attempt.

        Only what workers recorded; ``metadata_of`` is Metaflow's ``metadata_dict``.
        """
        return {entry.name: entry.value for entry in self.metadata}

    def metadata_of(self, attempt: int | None = None) -> dict[str, str]:
        """Metaflow's ``metadata_dict`` of one attempt (default: the latest), values as text.

        The entries Metaflow's runtime records for every task, derived from
        the view (no worker needs to record them): ``attempt`` (its number),
        ``runtime`` (``runtime_name``, or ``runstate`` if the worker named
        none), ``started_at`` and ``finished_at`` (ISO 8601, once known) and
        ``attempt_ok`` (``True``/``False``, once the attempt finished). Then
        the latest value of each name the worker recorded for that attempt,
        which wins over a derived one of the same name.
        """
        number = self.attempt if attempt is None else attempt
        entries = {"attempt": str(number), "runtime": self.runtime_name or "runstate"}
        view = self.attempt_view(number)
        if view is not None:
            if view.started_at is not None:
                entries["started_at"] = view.started_at.isoformat()
            if view.finished_at is not None:
                entries["finished_at"] = view.finished_at.isoformat()
            if view.state.terminal:
                entries["attempt_ok"] = str(view.state is TaskState.COMPLETED)
        for entry in self.metadata:
            if entry.attempt == number:
                entries[entry.name] = entry.value
        return entries

    def artifacts_of(self, attempt: int | None = None) -> dict[str, ArtifactView]:
        """The artifacts of one attempt (default: the latest), latest value per name."""
        wanted = self.attempt if attempt is None else attempt
        return {a.name: a for a in self.artifacts if a.attempt == wanted}

    def attempt_view(self, attempt: int) -> AttemptView | None:
        for view in self.attempts:
            if view.attempt == attempt:
                return view
        return None


class StepSummary(_View):
    """What a run knows of one of its steps: when it began and each task's state."""

    name: str
    created_at: datetime
    finished_at: datetime | None = None
    task_states: dict[str, TaskState] = Field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for state in self.task_states.values():
            result[state.value] = result.get(state.value, 0) + 1
        return result

    @property
    def status(self) -> str:
        """``pending``/``running``/``completed``/``failed`` summarising the tasks."""
        return step_status(self.task_states.values())


def step_status(states: Any) -> str:
    states = list(states)
    if not states:
        return "pending"
    if any(s in (TaskState.RUNNING, TaskState.PENDING) for s in states):
        return "running" if any(s is not TaskState.PENDING for s in states) else "pending"
    if all(s is TaskState.COMPLETED for s in states):
        return "completed"
    return "failed"


class RunView(_View):
    """A run: its state, tags, parameters, and a summary of every step's tasks."""

    pathspec: str
    flow: str
    run_id: str
    #: the id as an integer when it is one (for numeric ordering), else None
    run_number: int | None = None
    state: RunState
    label: str | None = None
    message: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    user: str | None = None
    tags: Tags = frozenset()
    system_tags: Tags = frozenset()
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    #: the display name and notes (``run.updated``), None until set
    display_name: str | None = None
    notes: str | None = None
    #: the parameters at creation merged with every config update (later wins)
    config: dict[str, JsonValue] = Field(default_factory=dict)
    #: explicit summary values (``run.updated``); NaN and infinities tagged as on the wire
    summary_overrides: dict[str, JsonValue] = Field(default_factory=dict)
    script_name: str | None = None
    scheduled_at: datetime | None = None
    idempotency_key: str | None = None
    steps: tuple[StepSummary, ...] = ()
    #: pathspec of the task of the ``end`` step, once there is one
    end_task: str | None = None
    rejected: tuple[Rejection, ...] = ()
    position: Position = (0, 0)

    @property
    def finished(self) -> bool:
        return self.state.terminal

    @property
    def successful(self) -> bool:
        return self.state is RunState.COMPLETED

    @property
    def duration(self) -> float | None:
        if self.finished_at is None:
            return None
        start = self.started_at or self.created_at
        return (self.finished_at - start).total_seconds()

    @property
    def all_tags(self) -> frozenset[str]:
        return self.tags | self.system_tags

    @property
    def tasks_total(self) -> int:
        return sum(len(step.task_states) for step in self.steps)

    @property
    def tasks_done(self) -> int:
        return sum(
            1 for step in self.steps for state in step.task_states.values() if state.terminal
        )

    def step(self, name: str) -> StepSummary | None:
        for summary in self.steps:
            if summary.name == name:
                return summary
        return None


class StepView(_View):
    """A step of a run, as answered by the query service and built from its run's summary."""

    pathspec: str
    flow: str
    run_id: str
    step: str
    created_at: datetime
    finished_at: datetime | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    tasks_total: int = 0
    status: str = "pending"
    position: Position = (0, 0)

    @classmethod
    def from_run(cls, run: RunView, summary: StepSummary) -> StepView:
        return cls(
            pathspec=f"{run.pathspec}/{summary.name}",
            flow=run.flow,
            run_id=run.run_id,
            step=summary.name,
            created_at=summary.created_at,
            finished_at=summary.finished_at,
            counts=summary.counts(),
            tasks_total=len(summary.task_states),
            status=summary.status,
            position=run.position,
        )
