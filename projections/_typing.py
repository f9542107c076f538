"""The read side's seam: what the projector and the query service need of a read store.

``SQLiteReadStore`` (``_store``) implements it, on a file or ``":memory:"``;
``runstate.projections.testing.ReadStoreContract`` is the suite every
implementation passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from runstate.projections._queries import DeadLetter, FlowSummary, RunQuery, TaskQuery
from runstate.projections._store_write import PreparedCommit
from runstate.projections._views import RunView, StepView, TaskView

__all__ = ["ReadStore"]


class ReadStore(Protocol):
    """The projected views of one replica, their checkpoint, and the queries over them.

    The projector alone writes (``commit``, ``prepare``/``write``,
    ``set_stream_identity``, ``load_*``, ``reset``), from one thread at a
    time, possibly a worker thread; reads may run on any thread meanwhile and
    see whole commits only. A commit stores its views and its checkpoint
    atomically: after a crash the views are exactly those of the checkpoint.
    """

    @property
    def path(self) -> str:
        """Where the views are kept: a file path, or ``":memory:"`` (not shared with a feeder)."""
        ...

    # -- the projector's position ----------------------------------------------

    def checkpoint(self) -> int:
        """The last stream sequence the stored views include; 0 for a new store."""
        ...

    def stream_identity(self) -> int | None:
        """The creation time (µs) of the events stream these views were folded from, if recorded."""
        ...

    def set_stream_identity(self, created_us: int) -> None:
        """Record which events stream (by creation time) this store follows."""
        ...

    # -- writing (the projector) -------------------------------------------------

    def commit(
        self,
        runs: Iterable[RunView],
        tasks: Iterable[TaskView],
        checkpoint: int,
        deadletters: Iterable[tuple[int, str, str, bytes]] = (),
    ) -> None:
        """Store these views, replacing earlier versions, and the checkpoint, in one transaction.

        ``checkpoint`` is the last stream sequence the views include.
        ``deadletters`` are (sequence, subject, reason, data) of messages
        that could not be applied. The same as ``write(prepare(...))``. If it
        raises, nothing of it is stored.
        """
        ...

    def prepare(
        self,
        runs: Iterable[RunView],
        tasks: Iterable[TaskView],
        checkpoint: int,
        deadletters: Iterable[tuple[int, str, str, bytes]] = (),
    ) -> PreparedCommit:
        """The rows of a ``commit``, for ``write``: made before the write, off its lock."""
        ...

    def write(self, prepared: PreparedCommit, also: Iterable[PreparedCommit] = ()) -> None:
        """Write a prepared commit's rows and its checkpoint in one transaction.

        ``also`` are commits of other views (a feeder's runs), written in the
        same transaction; their checkpoints are not recorded.
        """
        ...

    def load_runs(self, pathspecs: Iterable[str]) -> dict[str, RunView]:
        """The stored runs among ``pathspecs`` (missing ones are left out), for the projector."""
        ...

    def load_tasks(self, pathspecs: Iterable[str]) -> dict[str, TaskView]:
        """The stored tasks among ``pathspecs`` (missing ones are left out), for the projector."""
        ...

    def reset(self) -> None:
        """Forget every view, dead letter and the checkpoint (before a rebuild from the log)."""
        ...

    # -- reading: objects by pathspec --------------------------------------------

    def get_run_json(self, pathspec: str) -> bytes | None:
        """The stored JSON of a run (a ``RunView``), or None."""
        ...

    def get_run(self, pathspec: str) -> RunView | None:
        """A run by pathspec (``Flow/run``), or None."""
        ...

    def get_task_json(self, pathspec: str) -> bytes | None:
        """The stored JSON of a task (a ``TaskView``), or None."""
        ...

    def get_task(self, pathspec: str) -> TaskView | None:
        """A task by pathspec (``Flow/run/step/task``), or None."""
        ...

    def get_step(self, run_pathspec: str, step: str) -> StepView | None:
        """A step of a run, from the run's summary of it; None if either is unknown."""
        ...

    def list_steps(self, run_pathspec: str) -> list[StepView]:
        """The steps of a run in the order they began; empty if the run is unknown."""
        ...

    def run_in_namespace(self, run_pathspec: str, namespace: str) -> bool:
        """Whether the run carries the tag ``namespace`` among its user or system tags."""
        ...

    # -- reading: flows, runs, tasks -------------------------------------------

    def list_flows(self, namespace: str | None = None) -> list[FlowSummary]:
        """Every flow with a run (in ``namespace``, if given), by name."""
        ...

    def get_flow(self, name: str, namespace: str | None = None) -> FlowSummary | None:
        """One flow's summary (its runs in ``namespace``, if given); None if it has no run there."""
        ...

    def list_runs_json(self, q: RunQuery) -> tuple[list[bytes], str | None]:
        """One page of ``q`` as the stored JSON of each run, and the cursor of the next page.

        Raises ``BadFilter`` for a cursor that did not come from this query's sort.
        """
        ...

    def runs_frame_json(self, q: RunQuery, max_bytes: int) -> bytes:
        """The runs ``q`` selects (up to ``q.limit``) as columns, at most ``max_bytes`` of
        JSON (``runstate.projections._frame``)."""
        ...

    def attach_metrics(self, uri: str) -> None:
        """Read runs' logged summary values from the metrics store at ``uri``."""
        ...

    def latest_run(
        self, flow: str, *, successful: bool = False, namespace: str | None = None
    ) -> RunView | None:
        """The newest run of ``flow`` by creation time, then run number; None if it has none.

        ``successful=True``: the newest completed run. ``namespace``: only
        runs carrying that tag. Raises ``BadFilter`` for an invalid flow name.
        """
        ...

    def list_tasks_json(self, q: TaskQuery) -> tuple[list[bytes], str | None]:
        """One page of ``q`` as the stored JSON of each task, and the cursor of the next page."""
        ...

    def list_deadletters(self, limit: int = 100, *, after: int = 0) -> list[DeadLetter]:
        """Up to ``limit`` dead letters with a stream sequence above ``after``, oldest first."""
        ...

    def close(self) -> None:
        """Release what the store holds; it is unusable afterwards."""
        ...
