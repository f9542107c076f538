"""runstate.client: what users import.

``connect()`` gives a ``Client`` with Metaflow-style snapshot reads
(Flow, Run, Step, Task, DataArtifact), ZenML/W&B-style filtered and
paginated lists, live subscriptions (``watch``, ``events``) and the
worker API (``create_run``). ``runstate.client.compat`` is the blocking,
Metaflow-compatible facade.
"""

from runstate.client._client import Client as Client
from runstate.client._client import connect as connect
from runstate.client._namespace import default_namespace as default_namespace
from runstate.client._namespace import get_namespace as get_namespace
from runstate.client._namespace import namespace as namespace
from runstate.client._objects import Code as Code
from runstate.client._objects import Data as Data
from runstate.client._objects import DataArtifact as DataArtifact
from runstate.client._objects import Flow as Flow
from runstate.client._objects import Run as Run
from runstate.client._objects import Step as Step
from runstate.client._objects import Task as Task
from runstate.client._pages import Page as Page
from runstate.client._watch import Change as Change
from runstate.client._watch import EventRecord as EventRecord
from runstate.client._watch import Subscription as Subscription
from runstate.engine._commits import Receipt as Receipt
from runstate.engine._states import RunState as RunState
from runstate.engine._states import TaskState as TaskState
from runstate.engine._worker import RunHandle as RunHandle
from runstate.engine._worker import TaskHandle as TaskHandle

__all__ = [
    "Change",
    "Client",
    "Code",
    "Data",
    "DataArtifact",
    "EventRecord",
    "Flow",
    "Page",
    "Receipt",
    "Run",
    "RunHandle",
    "RunState",
    "Step",
    "Subscription",
    "Task",
    "TaskHandle",
    "TaskState",
    "connect",
    "default_namespace",
    "get_namespace",
    "namespace",
]
