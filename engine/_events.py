"""The event envelope, its typed payloads, commits and schema upcasting.

A message on the events stream is a *commit*: a JSON array of one or more
events of one entity. Every event carries the same envelope (``id``,
``type``, ``schema_version``, ``occurred_at``, ``pathspec``, ``attempt``,
``actor``) and a payload whose shape the ``type`` decides.

Adding an optional field is backward compatible. A breaking change bumps
``schema_version`` for that type and registers an upcaster with
``register_upcaster`` so that old events in the log keep replaying.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeAlias, TypeVar

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import ErrorDetails

from runstate.engine._states import RunState, TaskState
from runstate.engine._values import check_json_value, json_fault
from runstate.engine.errors import InvalidEvent

__all__ = [
    "ArtifactRecord",
    "ArtifactsRecorded",
    "Event",
    "ExceptionInfo",
    "ForeachFrame",
    "Heartbeat",
    "MetadataEntry",
    "MetadataRecorded",
    "RunCreated",
    "RunStateChanged",
    "RunTagsChanged",
    "RunUpdated",
    "TaskAttemptStateChanged",
    "TaskCreated",
    "construct_fields",
    "decode_commit",
    "encode_commit",
    "new_event_id",
    "register_upcaster",
    "replace_fields",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


_rng = random.Random(os.urandom(32))
_random_bits = _rng.getrandbits
# A forked child must not repeat its parent's sequence.
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


def new_event_id() -> str:
    """A UUIDv7 (time-ordered) as a string.

    The random bits come from a PRNG seeded from the OS once per process: event
    ids must be unique, not unguessable, and a syscall per event is measurable.
    """
    ms = time.time_ns() // 1_000_000
    rand = _random_bits(74)
    value = (
        (ms & 0xFFFFFFFFFFFF) << 80
        | 0x7 << 76
        | (rand >> 62) << 64
        | 0b10 << 62
        | (rand & 0x3FFFFFFFFFFFFFFF)
    )
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _explain(error: ErrorDetails) -> str:
    """One validation error as a sentence that names the field (and what to do, if we know)."""
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "timezone_aware":
        return f"{where} has no timezone; use an aware datetime, e.g. datetime.now(UTC)"
    return f"{where}: {error['msg']}"


class _Model(BaseModel):
    """The base of events and their parts: frozen, and refusing bad values with ``InvalidEvent``.

    Fields named in ``_json_fields`` must hold JSON values (``check_json_value``):
    checked before pydantic sees them, so a NaN is refused rather than written as
    null, and a value nested 10,000 deep is refused rather than overflowing.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="constants")

    _json_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, /, **data: Any) -> None:
        for name in self._json_fields:
            if name in data:
                check_json_value(data[name], self._json_path(name, data))
        try:
            super().__init__(**data)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise InvalidEvent(f"invalid {type(self).__name__}: {_explain(error)}") from None

    # Validation from JSON (decode_commit) must not call this __init__: it would
    # validate every event twice. pydantic's RootModel marks its own __init__ so.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def _json_path(cls, name: str, data: dict[str, Any]) -> str:
        """How a message names the JSON value in field ``name``."""
        return name


_M = TypeVar("_M", bound=BaseModel)
_new_object = object.__new__
# BaseModel's slots, set through their descriptors: a third faster than
# ``object.__setattr__``, which looks each name up first
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def replace_fields(model: _M, update: dict[str, Any]) -> _M:
    """``model.model_copy(update=update)`` without its generic overhead, and unvalidated.

    The same steps as pydantic's ``model_copy`` for a model without extra or
    private attributes (events and views): for hot paths whose values are
    checked already, such as a worker's transitions (the reducers build views
    with ``construct_fields``).
    """
    new: _M = _new_object(type(model))
    values = model.__dict__.copy()
    values.update(update)
    fields_set = model.__pydantic_fields_set__
    if not fields_set.issuperset(update):
        fields_set = fields_set | update.keys()
    return _instance(new, values, fields_set)


def _instance(new: _M, values: dict[str, Any], fields_set: AbstractSet[str]) -> _M:
    """``new``, fresh from ``object.__new__``, with these fields, as pydantic sets them."""
    _set_dict(new, values)
    _set_extra(new, None)
    _set_fields_set(new, fields_set)
    _set_private(new, None)
    return new


_ALL_FIELDS: dict[type[BaseModel], frozenset[str]] = {}


def construct_fields(cls: type[_M], values: dict[str, Any]) -> _M:
    """An instance of ``cls`` whose ``__dict__`` is ``values`` itself: unvalidated, not copied.

    ``values`` must name every field of ``cls`` (a draft's copy of another
    instance's fields, updated), and nothing may change it afterwards. For
    the reducers, which build a view once per batch from such a draft.
    """
    fields_set = _ALL_FIELDS.get(cls)
    if fields_set is None:
        fields_set = _ALL_FIELDS[cls] = frozenset(cls.model_fields)
    return _instance(_new_object(cls), values, fields_set)


# -- payload parts ---------------------------------------------------------


class ForeachFrame(_Model):
    """One level of a foreach: the step that fanned out, this task's index, and how many."""

    step: str
    index: StrictInt
    num_splits: StrictInt | None = None
    value: str | None = None


class ExceptionInfo(_Model):
    """What a failed attempt raised."""

    type: str
    message: str
    traceback: str | None = None


class ArtifactRecord(_Model):
    """One artifact: its value inline (small) or a reference into the object store."""

    name: str
    sha256: str
    size: StrictInt
    codec: Literal["json", "pickle"]
    inline: JsonValue = None
    ref: str | None = None

    _json_fields = ("inline",)

    @classmethod
    def _json_path(cls, name: str, data: dict[str, Any]) -> str:
        return f"artifact {data.get('name', '?')}"

    @property
    def is_inline(self) -> bool:
        return self.ref is None


class MetadataEntry(_Model):
    name: str
    value: str
    type: str = "str"


# -- payloads ---------------------------------------------------------------


class RunCreatedPayload(_Model):
    flow: str
    run_id: str
    state: RunState = RunState.PENDING
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    system_tags: list[str] = Field(default_factory=list)
    user: str | None = None
    idempotency_key: str | None = None
    scheduled_at: AwareDatetime | None = None
    script_name: str | None = None

    _json_fields = ("parameters",)


class RunStateChangedPayload(_Model):
    state: RunState
    label: str | None = None
    message: str | None = None
    resume: StrictBool = False


class RunTagsChangedPayload(_Model):
    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)
    replace: list[str] | None = None


class RunUpdatedPayload(_Model):
    """A change of a run's display name, notes, config or summary (W&B's run edits).

    ``changes`` names which of ``name`` and ``notes`` the event sets (None
    clears it); the other is left as it was. ``config`` and ``summary`` are
    merged into the run's, key by key. A summary value that is a NaN or an
    infinity travels tagged as in a points batch (``{"$f": "nan"}``).
    """

    changes: list[Literal["name", "notes"]] = Field(default_factory=list)
    name: str | None = None
    notes: str | None = None
    config: dict[str, JsonValue] = Field(default_factory=dict)
    summary: dict[str, JsonValue] = Field(default_factory=dict)

    _json_fields = ("config", "summary")


class TaskCreatedPayload(_Model):
    step: str
    task_id: str
    foreach_index: StrictInt | None = None
    foreach_stack: list[ForeachFrame] = Field(default_factory=list)
    parent_tasks: list[str] = Field(default_factory=list)
    runtime_name: str | None = None
    environment_info: dict[str, JsonValue] = Field(default_factory=dict)

    _json_fields = ("environment_info",)


class TaskAttemptStatePayload(_Model):
    state: TaskState
    label: str | None = None
    message: str | None = None
    exception: ExceptionInfo | None = None


class ArtifactsRecordedPayload(_Model):
    artifacts: list[ArtifactRecord]


class MetadataRecordedPayload(_Model):
    entries: list[MetadataEntry]


class HeartbeatPayload(_Model):
    worker: str | None = None


# -- events -----------------------------------------------------------------


class _Envelope(_Model):
    # Strict: "1" is not version 1, and a writer clock without a timezone is not a time
    # that can be compared with the others (a naive datetime would poison every read).
    id: str = Field(default_factory=new_event_id)
    schema_version: StrictInt = 1
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    pathspec: str
    attempt: StrictInt | None = None
    actor: str | None = None


class RunCreated(_Envelope):
    type: Literal["run.created"] = "run.created"
    payload: RunCreatedPayload


class RunStateChanged(_Envelope):
    type: Literal["run.state_changed"] = "run.state_changed"
    payload: RunStateChangedPayload


class RunTagsChanged(_Envelope):
    type: Literal["run.tags_changed"] = "run.tags_changed"
    payload: RunTagsChangedPayload


class RunUpdated(_Envelope):
    type: Literal["run.updated"] = "run.updated"
    payload: RunUpdatedPayload


class TaskCreated(_Envelope):
    type: Literal["task.created"] = "task.created"
    payload: TaskCreatedPayload


class TaskAttemptStateChanged(_Envelope):
    type: Literal["task.state_changed"] = "task.state_changed"
    payload: TaskAttemptStatePayload


class ArtifactsRecorded(_Envelope):
    type: Literal["task.artifacts_recorded"] = "task.artifacts_recorded"
    payload: ArtifactsRecordedPayload


class MetadataRecorded(_Envelope):
    type: Literal["task.metadata_recorded"] = "task.metadata_recorded"
    payload: MetadataRecordedPayload


class Heartbeat(_Envelope):
    type: Literal["heartbeat"] = "heartbeat"
    payload: HeartbeatPayload = Field(default_factory=HeartbeatPayload)


Event: TypeAlias = Annotated[
    RunCreated
    | RunStateChanged
    | RunTagsChanged
    | RunUpdated
    | TaskCreated
    | TaskAttemptStateChanged
    | ArtifactsRecorded
    | MetadataRecorded
    | Heartbeat,
    Field(discriminator="type"),
]

#: the event types with JSON fields (parameters, inline artifact values, environment
#: info): the only ones that can hold a float, so a NaN or an infinity
_CARRIES_JSON: frozenset[type[_Envelope]] = frozenset(
    {RunCreated, RunUpdated, TaskCreated, ArtifactsRecorded}
)

EVENT_TYPES: dict[str, type[_Envelope]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        RunCreated,
        RunStateChanged,
        RunTagsChanged,
        RunUpdated,
        TaskCreated,
        TaskAttemptStateChanged,
        ArtifactsRecorded,
        MetadataRecorded,
        Heartbeat,
    )
}

# The current schema version of each type; bumped with an upcaster.
CURRENT_VERSION: dict[str, int] = dict.fromkeys(EVENT_TYPES, 1)

Upcaster: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}

_COMMIT = TypeAdapter(list[Event])
_ONE: TypeAdapter[Event] = TypeAdapter(Event)


def register_upcaster(event_type: str, from_version: int, upcaster: Upcaster) -> None:
    """Register ``upcaster`` to turn a ``from_version`` event of ``event_type`` into the next.

    The upcaster takes and returns the raw event dict; it must set
    ``schema_version`` to ``from_version + 1``. ``CURRENT_VERSION`` of the
    type becomes at least ``from_version + 1``.
    """
    _UPCASTERS[(event_type, from_version)] = upcaster
    CURRENT_VERSION[event_type] = max(CURRENT_VERSION.get(event_type, 1), from_version + 1)


def unregister_upcaster(event_type: str, from_version: int) -> None:
    """Remove an upcaster (for tests) and recompute the type's current version."""
    _UPCASTERS.pop((event_type, from_version), None)
    versions = [v + 1 for (t, v) in _UPCASTERS if t == event_type]
    CURRENT_VERSION[event_type] = max([1, *versions])


def _upcast(raw: dict[str, Any]) -> dict[str, Any]:
    event_type = raw.get("type")
    version = raw.get("schema_version", 1)
    if not isinstance(event_type, str) or not isinstance(version, int):
        return raw
    current = CURRENT_VERSION.get(event_type, 1)
    while version < current:
        upcaster = _UPCASTERS.get((event_type, version))
        if upcaster is None:
            raise InvalidEvent(
                f"no upcaster for {event_type} v{version}; register one with register_upcaster"
            )
        try:
            raw = upcaster(raw)
        except Exception as exc:
            raise InvalidEvent(
                f"upcaster for {event_type} v{version} failed: {type(exc).__name__}: {exc}"
            ) from None
        new_version = raw.get("schema_version")
        if new_version != version + 1:
            raise InvalidEvent(f"upcaster for {event_type} v{version} did not set schema_version")
        version = new_version
    if version > current:
        raise InvalidEvent(
            f"{event_type} v{version} is newer than this runstate understands (v{current}); upgrade"
        )
    return raw


def encode_commit(events: Sequence[Event]) -> bytes:
    """Serialise a commit (one or more events) to compact JSON bytes.

    Raises ``InvalidEvent`` for an event without a timezone on ``occurred_at``
    or with a NaN or infinity anywhere (events built unvalidated, with
    ``replace_fields`` or ``model_construct``, are checked here).
    """
    if not events:
        raise InvalidEvent("a commit needs at least one event")
    batch = list(events)
    if _UPCASTERS:
        # The models always have the current shape (old events are upcast when
        # read), so an event is written at its type's current schema version.
        batch = [
            event
            if event.schema_version == CURRENT_VERSION.get(event.type, 1)
            else event.model_copy(update={"schema_version": CURRENT_VERSION.get(event.type, 1)})
            for event in batch
        ]
        for event in batch:
            if event.occurred_at.tzinfo is None:
                _refuse_naive(event)
        data = _COMMIT.dump_json(batch, exclude_defaults=False, by_alias=True)
    else:
        # Each event by its own class's serializer: the same bytes as the list adapter's
        # without matching every event against the union (a writer's hot path)
        parts = []
        for event in batch:
            if event.occurred_at.tzinfo is None:
                _refuse_naive(event)
            parts.append(event.__pydantic_serializer__.to_json(event))
        data = b"[" + b",".join(parts) + b"]"
    # Only JSON fields can hold a float; searching the bytes of every transition would
    # cost more than serialising it.
    for event in batch:
        if type(event) in _CARRIES_JSON:
            if _has_nonfinite_token(data):
                _refuse_nonfinite(batch, data)
            break
    return data


def _has_nonfinite_token(data: bytes) -> bool:
    """Whether ``data`` may hold ``NaN``/``Infinity`` (or they are only inside strings)."""
    return b"NaN" in data or b"Infinity" in data


def _refuse_naive(event: Event) -> None:
    raise InvalidEvent(
        f"{event.type} for {event.pathspec}: occurred_at has no timezone; "
        "use an aware datetime, e.g. datetime.now(UTC)"
    )


def _refuse_nonfinite(events: Sequence[Event], data: bytes) -> None:
    """Raise ``InvalidEvent`` naming a NaN or infinity that an event built unvalidated holds.

    The models serialise those as the tokens ``NaN``/``Infinity``, which no JSON
    reader accepts, so a commit that parses holds none (they were in a string).
    """
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    else:
        return
    for event in events:
        fault = _nonfinite_in(event.model_dump(), "")
        if fault is not None:
            raise InvalidEvent(f"{event.type} for {event.pathspec}: {fault}")
    raise InvalidEvent("a commit holds NaN or infinity, which JSON cannot hold")


def _nonfinite_in(value: Any, path: str) -> str | None:
    """The message for the first NaN or infinite float in a model dump, or None."""
    if isinstance(value, float):
        found = json_fault(value, path.lstrip(".") or "value")
        return found[1] if found is not None else None
    items: Any = ()
    if isinstance(value, dict):
        items = ((f"{path}.{key}", item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{i}]", item) for i, item in enumerate(value))
    for where, item in items:
        fault = _nonfinite_in(item, where)
        if fault is not None:
            return fault
    return None


def decode_commit(data: bytes) -> list[Event]:
    """Parse a commit, upcasting old schema versions; raise ``InvalidEvent`` if malformed."""
    if not _UPCASTERS:
        # The common case in one pass of pydantic's own JSON parser; anything else
        # (an old version, a bare object, an error to explain) takes the path below.
        try:
            events = _COMMIT.validate_json(data)
        except ValidationError:
            pass
        else:
            if events:
                carries_json = False
                for event in events:  # a loop: cheaper than all() over a generator here
                    if event.schema_version != 1:
                        break
                    if type(event) in _CARRIES_JSON:
                        carries_json = True
                else:
                    # pydantic's parser takes the tokens NaN and Infinity, which JSON has
                    # not: a commit that holds them goes to orjson below, which refuses them
                    if not carries_json or not _has_nonfinite_token(data):
                        return events
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"commit is not JSON (NaN and Infinity are not JSON): {exc}") from None
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise InvalidEvent("a commit is a non-empty JSON array of events")
    if _UPCASTERS:
        raw = [_upcast(item) if isinstance(item, dict) else item for item in raw]
    else:
        for item in raw:
            if isinstance(item, dict) and item.get("schema_version", 1) != 1:
                _upcast(item)  # raises for a version this build does not know
    try:
        return _COMMIT.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidEvent(f"invalid event at {_explain(first)}") from None


def decode_event(data: bytes | dict[str, Any]) -> Event:
    """Parse a single event (a heartbeat value, or one element of a commit)."""
    try:
        raw = orjson.loads(data) if isinstance(data, bytes | bytearray) else data
        if not isinstance(raw, dict):
            raise InvalidEvent(f"an event is a JSON object, not {type(raw).__name__}")
        return _ONE.validate_python(_upcast(raw))
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"event is not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidEvent(f"invalid event at {_explain(first)}") from None


def encode_event(event: Event) -> bytes:
    return _ONE.dump_json(event)
