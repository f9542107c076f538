"""Metric points: their subjects, their message format, and the log of them in memory.

Points go to a stream of their own (``<PREFIX>_METRICS``, subjects
``<prefix>.mt.<flow>.<run>.r`` for a run and
``<prefix>.mt.<flow>.<run>.t.<step>.<task>`` for a task), with its own
retention, so that high-volume metrics never slow state reads. One message
is one batch of rows of one entity, attempt and stream (``default``, or
``system`` for machine metrics)::

    {"v":1,"p":"Train/42/train/3","a":0,"s":"default",
     "rows":[{"_step":0,"_timestamp":1733480000.25,"loss":0.31,"acc":0.9}, ...]}

Values are ints, floats, bools and strings. JSON has no NaN or infinity,
which ML losses do produce, so those travel tagged (``{"$f":"nan"}``,
``{"$f":"inf"}``, ``{"$f":"-inf"}``) and read back as the same floats,
never as null. Anything else is refused with ``InvalidEvent`` before
anything is sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from runstate.engine._batches import BatchReceipt, SideStream
from runstate.engine._names import Pathspec, parse_pathspec
from runstate.engine.errors import InvalidEvent, InvalidName

__all__ = [
    "POINTS_SCHEMA_VERSION",
    "STREAMS",
    "PointBatch",
    "PointReceipt",
    "all_points",
    "check_row",
    "decode_points",
    "decode_value",
    "encode_points",
    "points_side",
    "points_stream",
    "points_subject",
    "untag",
    "wire_value",
]

POINTS_SCHEMA_VERSION = 1

#: the metric streams of an entity, as W&B's ``history(stream=...)``
STREAMS = ("default", "system")

#: keys every row carries, set by the writer
STEP, TIMESTAMP = "_step", "_timestamp"

_MAX_KEY = 256
_NAN = {"$f": "nan"}
_INF = {"$f": "inf"}
_NINF = {"$f": "-inf"}
_TAGGED = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def points_stream(prefix: str) -> str:
    """The name of the metric points stream of ``prefix`` (``RS_METRICS``)."""
    return f"{prefix.upper()}_METRICS"


def all_points(prefix: str) -> str:
    """The subjects of every metric point of ``prefix`` (``rs.mt.>``)."""
    return f"{prefix}.mt.>"


def points_subject(prefix: str, path: Pathspec) -> str:
    """The points subject of a run or task pathspec."""
    if path.run is None:
        raise InvalidName(f"metrics are logged on a run or a task, not on {path}")
    if path.task is not None:
        return f"{prefix}.mt.{path.flow}.{path.run}.t.{path.step}.{path.task}"
    if path.step is not None:
        raise InvalidName(f"metrics are logged on a run or a task, not on step {path}")
    return f"{prefix}.mt.{path.flow}.{path.run}.r"


#: the receipt of a batch of points (pass its ``sequence`` as ``after=`` to a metric read)
PointReceipt = BatchReceipt


def points_side(prefix: str) -> SideStream:
    """The points stream of ``prefix`` as a ``SideStream``."""
    return SideStream(points_stream(prefix), all_points(prefix), "points")


@dataclass(frozen=True, slots=True)
class PointBatch:
    """A decoded points message: rows of one entity, attempt (None for a run) and stream."""

    pathspec: str
    attempt: int | None
    stream: str
    rows: list[dict[str, Any]]
    #: whether some value may be NaN or infinite (it travelled tagged)
    tagged: bool = True


def _check_value(key: str, value: Any) -> Any:
    """The value as it travels; ``InvalidEvent`` for one a metric cannot be."""
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return value
        return _NAN if value != value else (_INF if value > 0 else _NINF)
    if kind is int or kind is str or kind is bool:
        return value
    if isinstance(value, float):  # numpy's float64 is a float subclass
        return _check_value(key, float(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise InvalidEvent(
        f"metric {key!r} is a {kind.__name__}; log numbers, bools or strings "
        "(convert arrays and tensors with float() or .item())"
    )


def wire_value(value: Any) -> Any:
    """A checked value as it travels (a NaN or infinity tagged)."""
    if type(value) is float and not math.isfinite(value):
        return _NAN if value != value else (_INF if value > 0 else _NINF)
    return value


def check_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's keys and values as they travel; ``InvalidEvent`` for anything else.

    Keys are non-empty strings of at most 256 characters not starting with
    ``_`` (``_step`` and ``_timestamp`` are set by the writer).
    """
    if not isinstance(row, Mapping):
        raise InvalidEvent(
            f"log() takes a dict of metric names to values, not {type(row).__name__}"
        )
    checked: dict[str, Any] = {}
    for key, value in row.items():
        if not isinstance(key, str) or not key or len(key) > _MAX_KEY or key[0] == "_":
            raise InvalidEvent(
                f"invalid metric name {key!r}: use a non-empty string of up to {_MAX_KEY} "
                "characters that does not start with '_'"
            )
        checked[key] = _check_value(key, value)
    return checked


def encode_points(
    pathspec: str, attempt: int | None, stream: str, rows: list[dict[str, Any]]
) -> bytes:
    """One points message (rows already checked by ``check_row``)."""
    return orjson.dumps(
        {"v": POINTS_SCHEMA_VERSION, "p": pathspec, "a": attempt, "s": stream, "rows": rows}
    )


def decode_value(value: Any) -> Any:
    """A value as logged (a tagged NaN or infinity back to its float)."""
    if type(value) is dict:
        return _TAGGED[value["$f"]]
    return value


def untag(value: Any) -> Any:
    """``decode_value`` for a value that may be any JSON value (a summary value): only
    a tag of a NaN or an infinity is turned back into its float."""
    if type(value) is dict and len(value) == 1 and value.get("$f") in _TAGGED:
        return _TAGGED[value["$f"]]
    return value


def decode_points(data: bytes) -> PointBatch:
    """Decode a points message; ``InvalidEvent`` when it is not one."""
    try:
        message = orjson.loads(data)
        if message["v"] != POINTS_SCHEMA_VERSION:
            raise InvalidEvent(f"points schema version {message['v']} is not known to this reader")
        rows = message["rows"]
        # a brace per row and one for the message: no value is an object or a list (a
        # tag among them), so the values need no walk (a '{' in a string takes the walk)
        listed = data[data.index(b"[") + 1 :]  # the rows, in the order the writer sends
        plain = data.count(b"{") == len(rows) + 1 and b"[" not in listed and b"null" not in listed
        for row in rows:
            if not plain:
                for key, value in row.items():
                    if type(value) is dict:
                        row[key] = _TAGGED[value["$f"]]
                    elif type(value) is list or value is None:
                        raise TypeError(f"{key} is not a number, bool or string")
            if type(row[STEP]) is not int:
                raise TypeError("_step is not an int")
        parse_pathspec(message["p"], min_depth=2, max_depth=4)
        return PointBatch(message["p"], message["a"], str(message["s"]), rows, not plain)
    except InvalidEvent:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidEvent(f"not a points message: {type(exc).__name__}: {exc}") from None
