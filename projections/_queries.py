"""Typed list queries and their answers, shared by the read store, the query service and the client.

A query that does not validate raises ``BadFilter`` naming the field and
what it accepts (never a pydantic ``ValidationError``): build one with the
constructor, or with ``from_json`` for a query that arrived on the wire.

Pages are keyset-paginated: ``next_cursor`` is an opaque string holding the
last item's sort key (and its pathspec, to break ties). Passing it back
continues after that item, so a page never repeats or skips an item because
runs were added in between, and a deep page costs what the first one does.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any, Generic, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from runstate.engine._names import check_flow_name, check_step_name, parse_pathspec
from runstate.engine._states import RunState, TaskState
from runstate.engine.errors import BadFilter
from runstate.projections._conditions import Condition, check_value_field

__all__ = [
    "RUN_SORT_KEYS",
    "DeadLetter",
    "FlowSummary",
    "Page",
    "RunQuery",
    "TaskQuery",
    "decode_cursor",
    "encode_cursor",
]

#: what ``RunQuery.sort`` accepts, each optionally prefixed with ``-`` for descending
RUN_SORT_KEYS = ("created_at", "finished_at", "duration", "run_number")

T = TypeVar("T")

#: a sort-key value as a cursor carries it (a float: a summary or config value)
CursorValue = int | float | str


class _Query(BaseModel):
    """A query model whose validation errors are ``BadFilter``s."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _bad_filter(type(self), exc) from None

    @classmethod
    def from_json(cls, data: str | bytes) -> Self:
        """Parse a query sent as JSON; raise ``BadFilter`` if it does not validate."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise _bad_filter(cls, exc) from None


def _bad_filter(cls: type[BaseModel], exc: ValidationError) -> BadFilter:
    problems = [_describe(cls, error) for error in exc.errors()]
    return BadFilter(f"bad {cls.__name__}: " + "; ".join(problems), problems=problems)


def _describe(cls: type[BaseModel], error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or cls.__name__
    if error["type"] == "extra_forbidden":
        fields = ", ".join(cls.model_fields)
        return f"unknown field {where!r}; the fields are {fields}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message} (got {error['input']!r})"


def _utc(value: datetime | None) -> datetime | None:
    # a naive time is taken as UTC, as the views' times are
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class RunQuery(_Query):
    """Which runs to list, in what order, and which page.

    Filters combine with AND. ``tags_all``: every tag, ``tags_any``: at
    least one; a tag matches a user or a system tag. ``namespace`` is one
    more tag the run must carry (Metaflow's ``user:alice``); None means every
    namespace. Time ranges are half-open: ``created_after <= created_at <
    created_before``; a run that has not finished matches no ``finished_*``
    bound. ``parameters`` match by JSON equality (``1`` equals ``1.0``, not
    ``true``).

    ``sort`` is a key of ``RUN_SORT_KEYS``, ``-`` first for descending. Ties
    break by pathspec (``created_at`` first by run number). A run without a
    value for the key (unfinished, or a run id that is not a number) sorts
    as the smallest: last when descending, first when ascending.
    """

    flow: str | None = None
    tags_all: list[str] = Field(default_factory=list)
    tags_any: list[str] = Field(default_factory=list)
    state: list[RunState] = Field(default_factory=list)
    user: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    finished_after: datetime | None = None
    finished_before: datetime | None = None
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    where: list[Condition] = Field(default_factory=list)
    namespace: str | None = None
    sort: str = "-created_at"
    limit: int = Field(default=50, ge=1, le=1000)
    cursor: str | None = None

    @field_validator("flow")
    @classmethod
    def _check_flow(cls, value: str | None) -> str | None:
        return None if value is None else check_flow_name(value)

    @field_validator("sort")
    @classmethod
    def _check_sort(cls, value: str) -> str:
        key = value.removeprefix("-")
        if key in RUN_SORT_KEYS:
            return value
        if "." in key:
            try:
                return value[: len(value) - len(key)] + check_value_field(key)
            except ValueError:
                pass
        raise ValueError(
            f"unknown sort key; use one of {', '.join(RUN_SORT_KEYS)}, summary.<key> or "
            "config.<key>, with a leading '-' for descending"
        )

    @field_validator("created_after", "created_before", "finished_after", "finished_before")
    @classmethod
    def _check_time(cls, value: datetime | None) -> datetime | None:
        return _utc(value)

    @property
    def sort_key(self) -> str:
        """The sort key without its direction."""
        return self.sort.removeprefix("-")

    @property
    def descending(self) -> bool:
        return self.sort.startswith("-")

    @property
    def required_tags(self) -> list[str]:
        """Every tag a run must carry: ``tags_all`` and the namespace, without repeats."""
        tags = [*self.tags_all, *([self.namespace] if self.namespace is not None else [])]
        return list(dict.fromkeys(tags))


class TaskQuery(_Query):
    """The tasks of one step of a run, optionally only those in some states.

    Tasks come in task order: by foreach index, then by task id as a number,
    then by task id as text; a task without a foreach index or with an id
    that is not a number sorts before those with one.
    """

    run: str
    step: str
    state: list[TaskState] = Field(default_factory=list)
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = None

    @field_validator("run")
    @classmethod
    def _check_run(cls, value: str) -> str:
        return str(parse_pathspec(value, min_depth=2, max_depth=2))

    @field_validator("step")
    @classmethod
    def _check_step(cls, value: str) -> str:
        return check_step_name(value)


class Page(BaseModel, Generic[T]):
    """One page of a list; pass ``next_cursor`` back for the next, None when this is the last."""

    model_config = ConfigDict(frozen=True)

    items: list[T]
    next_cursor: str | None = None


class FlowSummary(BaseModel):
    """A flow as listed: its name, how many runs it has, and when the newest was created."""

    model_config = ConfigDict(frozen=True)

    name: str
    run_count: int
    last_created_at: datetime


class DeadLetter(BaseModel):
    """A message the projector could not apply, kept with the reason."""

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    sequence: int
    subject: str
    reason: str
    data: bytes
    at: datetime


def encode_cursor(sort: str, key: tuple[CursorValue, ...]) -> str:
    """The opaque cursor continuing after the item whose sort key is ``key``."""
    raw = json.dumps([sort, list(key)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, sort: str, width: int) -> tuple[CursorValue, ...]:
    """The sort key in ``cursor``; ``BadFilter`` unless it came from a query sorted by ``sort``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_for, key = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadFilter(
            f"cursor {cursor[:40]!r} is not a cursor runstate gave out; "
            "pass the next_cursor of the previous page unchanged"
        ) from exc
    if made_for != sort:
        raise BadFilter(
            f"cursor is from a query sorted by {made_for!r}, this one sorts by {sort!r}; "
            "keep the query the same while paging"
        )
    if (
        not isinstance(key, list)
        or len(key) != width
        or not all(isinstance(v, int | float | str) and not isinstance(v, bool) for v in key)
    ):
        raise BadFilter("cursor is damaged; pass the next_cursor of the previous page unchanged")
    return tuple(key)
