"""runstate.projections: the read side (reducers, read store, projector, query service, reaper)."""

from runstate.projections._projector import Projector as Projector
from runstate.projections._queries import FlowSummary as FlowSummary
from runstate.projections._queries import Page as Page
from runstate.projections._queries import RunQuery as RunQuery
from runstate.projections._queries import TaskQuery as TaskQuery
from runstate.projections._reaper import Reaper as Reaper
from runstate.projections._reducers import fold as fold
from runstate.projections._reducers import fold_run as fold_run
from runstate.projections._reducers import fold_task as fold_task
from runstate.projections._reducers import touched as touched
from runstate.projections._replica import Replica as Replica
from runstate.projections._replica import default_store_path as default_store_path
from runstate.projections._runner import ReplicaParts as ReplicaParts
from runstate.projections._runner import serve_replica as serve_replica
from runstate.projections._service import QueryService as QueryService
from runstate.projections._store import SQLiteReadStore as SQLiteReadStore
from runstate.projections._typing import ReadStore as ReadStore
from runstate.projections._views import ArtifactView as ArtifactView
from runstate.projections._views import AttemptView as AttemptView
from runstate.projections._views import MetadataView as MetadataView
from runstate.projections._views import RunView as RunView
from runstate.projections._views import StepSummary as StepSummary
from runstate.projections._views import StepView as StepView
from runstate.projections._views import TaskView as TaskView

__all__ = [
    "ArtifactView",
    "AttemptView",
    "FlowSummary",
    "MetadataView",
    "Page",
    "Projector",
    "QueryService",
    "ReadStore",
    "Reaper",
    "Replica",
    "ReplicaParts",
    "RunQuery",
    "RunView",
    "SQLiteReadStore",
    "StepSummary",
    "StepView",
    "TaskQuery",
    "TaskView",
    "default_store_path",
    "fold",
    "fold_run",
    "fold_task",
    "touched",
]
