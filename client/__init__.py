"""runstate.client: what users import.

``connect()`` (or, opened and closed in different places such as notebook
cells, ``open_client()`` and ``Client.aclose()``) gives a ``Client`` with
Metaflow-style snapshot reads
(Flow, Run, Step, Task, DataArtifact), ZenML/W&B-style filtered and
paginated lists, live subscriptions (``watch``, ``events``) and the
worker API (``create_run``). ``runstate.client.compat`` is the blocking,
Metaflow-compatible facade. Every runstate exception is importable from
here (``from runstate.client import NotFound``).
"""

from runstate.client._client import Client as Client
from runstate.client._client import connect as connect
from runstate.client._data import Data as Data
from runstate.client._data import DataArtifact as DataArtifact
from runstate.client._logs import LogLine as LogLine
from runstate.client._namespace import default_namespace as default_namespace
from runstate.client._namespace import get_namespace as get_namespace
from runstate.client._namespace import namespace as namespace
from runstate.client._objects import Code as Code
from runstate.client._objects import Flow as Flow
from runstate.client._objects import Run as Run
from runstate.client._objects import Step as Step
from runstate.client._objects import Task as Task
from runstate.client._open import open_client as open_client
from runstate.client._pages import Page as Page
from runstate.client._tails import MetricRow as MetricRow
from runstate.client._watch import Change as Change
from runstate.client._watch import EventRecord as EventRecord
from runstate.client._watch import Subscription as Subscription
from runstate.engine._commits import Receipt as Receipt
from runstate.engine._handles import RunHandle as RunHandle
from runstate.engine._handles import TaskHandle as TaskHandle
from runstate.engine._points import PointReceipt as PointReceipt
from runstate.engine._states import RunState as RunState
from runstate.engine._states import TaskState as TaskState
from runstate.engine.errors import BadFilter as BadFilter
from runstate.engine.errors import ConfigurationError as ConfigurationError
from runstate.engine.errors import ConflictError as ConflictError
from runstate.engine.errors import IdempotencyKeyReused as IdempotencyKeyReused
from runstate.engine.errors import IllegalTransition as IllegalTransition
from runstate.engine.errors import InvalidEvent as InvalidEvent
from runstate.engine.errors import InvalidName as InvalidName
from runstate.engine.errors import JetStreamDisabled as JetStreamDisabled
from runstate.engine.errors import LocalServerOutdated as LocalServerOutdated
from runstate.engine.errors import NotFound as NotFound
from runstate.engine.errors import NotInNamespace as NotInNamespace
from runstate.engine.errors import PayloadTooLarge as PayloadTooLarge
from runstate.engine.errors import PermissionDenied as PermissionDenied
from runstate.engine.errors import RunstateError as RunstateError
from runstate.engine.errors import ServerAlreadyRunning as ServerAlreadyRunning
from runstate.engine.errors import ServerTooOld as ServerTooOld
from runstate.engine.errors import StepWentBack as StepWentBack
from runstate.engine.errors import StoreInUse as StoreInUse
from runstate.engine.errors import StreamsMissing as StreamsMissing
from runstate.engine.errors import Timeout as Timeout
from runstate.engine.errors import Unavailable as Unavailable
from runstate.engine.errors import UnsafeArtifact as UnsafeArtifact

__all__ = [
    "BadFilter",
    "Change",
    "Client",
    "Code",
    "ConfigurationError",
    "ConflictError",
    "Data",
    "DataArtifact",
    "EventRecord",
    "Flow",
    "IdempotencyKeyReused",
    "IllegalTransition",
    "InvalidEvent",
    "InvalidName",
    "JetStreamDisabled",
    "LocalServerOutdated",
    "LogLine",
    "MetricRow",
    "NotFound",
    "NotInNamespace",
    "Page",
    "PayloadTooLarge",
    "PermissionDenied",
    "PointReceipt",
    "Receipt",
    "Run",
    "RunHandle",
    "RunState",
    "RunstateError",
    "ServerAlreadyRunning",
    "ServerTooOld",
    "Step",
    "StepWentBack",
    "StoreInUse",
    "StreamsMissing",
    "Subscription",
    "Task",
    "TaskHandle",
    "TaskState",
    "Timeout",
    "Unavailable",
    "UnsafeArtifact",
    "connect",
    "default_namespace",
    "get_namespace",
    "namespace",
    "open_client",
]
