"""runstate.engine: the write side (events, names, state machines, the event log)."""

from runstate.engine._artifacts import ArtifactStore as ArtifactStore
from runstate.engine._batches import BatchReceipt as BatchReceipt
from runstate.engine._commits import Commit as Commit
from runstate.engine._commits import Delivery as Delivery
from runstate.engine._commits import Receipt as Receipt
from runstate.engine._commits import StoredCommit as StoredCommit
from runstate.engine._connection import open_nats as open_nats
from runstate.engine._connection import provision as provision
from runstate.engine._events import ArtifactRecord as ArtifactRecord
from runstate.engine._events import ArtifactsRecorded as ArtifactsRecorded
from runstate.engine._events import Event as Event
from runstate.engine._events import ExceptionInfo as ExceptionInfo
from runstate.engine._events import ForeachFrame as ForeachFrame
from runstate.engine._events import Heartbeat as Heartbeat
from runstate.engine._events import MetadataEntry as MetadataEntry
from runstate.engine._events import MetadataRecorded as MetadataRecorded
from runstate.engine._events import RunCreated as RunCreated
from runstate.engine._events import RunStateChanged as RunStateChanged
from runstate.engine._events import RunTagsChanged as RunTagsChanged
from runstate.engine._events import RunUpdated as RunUpdated
from runstate.engine._events import TaskAttemptStateChanged as TaskAttemptStateChanged
from runstate.engine._events import TaskCreated as TaskCreated
from runstate.engine._events import decode_commit as decode_commit
from runstate.engine._events import encode_commit as encode_commit
from runstate.engine._events import register_upcaster as register_upcaster
from runstate.engine._handles import RunHandle as RunHandle
from runstate.engine._handles import TaskHandle as TaskHandle
from runstate.engine._jetstream import JetStreamEventLog as JetStreamEventLog
from runstate.engine._logging import configure_logging as configure_logging
from runstate.engine._memory import MemoryEventLog as MemoryEventLog
from runstate.engine._names import Pathspec as Pathspec
from runstate.engine._names import Subjects as Subjects
from runstate.engine._names import parse_pathspec as parse_pathspec
from runstate.engine._points import PointReceipt as PointReceipt
from runstate.engine._settings import Settings as Settings
from runstate.engine._states import RunState as RunState
from runstate.engine._states import TaskState as TaskState
from runstate.engine._typing import BatchLog as BatchLog
from runstate.engine._typing import BlobStore as BlobStore
from runstate.engine._typing import EventLog as EventLog
from runstate.engine._typing import Follow as Follow
from runstate.engine._typing import Pipeline as Pipeline
from runstate.engine._worker import Writer as Writer

__all__ = [
    "ArtifactRecord",
    "ArtifactStore",
    "ArtifactsRecorded",
    "BatchLog",
    "BatchReceipt",
    "BlobStore",
    "Commit",
    "Delivery",
    "Event",
    "EventLog",
    "ExceptionInfo",
    "Follow",
    "ForeachFrame",
    "Heartbeat",
    "JetStreamEventLog",
    "MemoryEventLog",
    "MetadataEntry",
    "MetadataRecorded",
    "Pathspec",
    "Pipeline",
    "PointReceipt",
    "Receipt",
    "RunCreated",
    "RunHandle",
    "RunState",
    "RunStateChanged",
    "RunTagsChanged",
    "RunUpdated",
    "Settings",
    "StoredCommit",
    "Subjects",
    "TaskAttemptStateChanged",
    "TaskCreated",
    "TaskHandle",
    "TaskState",
    "Writer",
    "configure_logging",
    "decode_commit",
    "encode_commit",
    "open_nats",
    "parse_pathspec",
    "provision",
    "register_upcaster",
]
