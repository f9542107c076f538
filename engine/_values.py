"""What a JSON value in an event may be: checked before anything is sent or allocated.

Run parameters, inline artifact values and a task's environment info travel
inside events as JSON. JSON has no NaN or infinity (a JSON encoder writes
them as ``null`` or as tokens no JSON reader accepts), no tuples or sets,
only string keys; and a value nested thousands of levels deep overflows
every recursive reader. ``check_json_value`` refuses all of these with an
``InvalidEvent`` that names where the value is, so a writer can check its
caller's input before it allocates an id; the event models call it too.
"""

from __future__ import annotations

import math
from typing import Any

from runstate.engine.errors import InvalidEvent

__all__ = ["MAX_JSON_DEPTH", "check_json_value", "json_fault"]

#: how deeply lists and objects may nest in a JSON value of an event
MAX_JSON_DEPTH = 64

_SCALARS = (str, int, bool, type(None))
_isfinite = math.isfinite


def check_json_value(value: Any, path: str) -> None:
    """Raise ``InvalidEvent`` unless ``value`` is a JSON value an event can carry.

    A JSON value is a dict with str keys, a list, a str, an int, a finite
    float, a bool or None, nested at most ``MAX_JSON_DEPTH`` levels. ``path``
    names the value in the message (``parameters``, ``metadata x``); the
    message extends it to the part at fault (``parameters.grid[2]``).
    """
    fault = json_fault(value, path)
    if fault is not None:
        raise InvalidEvent(fault[1])


def json_fault(value: Any, path: str) -> tuple[str, str] | None:
    """The first reason ``value`` is not a JSON value, as (kind, message), or None.

    ``kind`` is ``"nonfinite"`` for a NaN or infinite float, ``"type"`` for a
    value of another type (a tuple, a set, an object), ``"key"`` for a key
    that is not a str and ``"depth"`` for nesting deeper than ``MAX_JSON_DEPTH``.
    """
    return _fault(value, path, 0)


def _fault(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    kind = type(value)
    if kind is float:
        if _isfinite(value):
            return None
        return "nonfinite", (
            f"{path} is {value!r}, which JSON cannot hold (it would read back as null); "
            "use a finite number, None or a string"
        )
    if kind is dict or kind is list:
        if depth >= MAX_JSON_DEPTH:
            shown = path if len(path) <= 60 else path[:60] + "..."
            return "depth", (
                f"{shown} nests lists and objects more than {MAX_JSON_DEPTH} levels deep; "
                "flatten it or store it as an artifact"
            )
        if kind is list:
            for i, item in enumerate(value):
                if type(item) in _SCALARS:
                    continue
                fault = _fault(item, f"{path}[{i}]", depth + 1)
                if fault is not None:
                    return fault
            return None
        for key, item in value.items():
            if type(key) is not str:
                return "key", (
                    f"{path} has the key {key!r} ({type(key).__name__}); JSON object keys are "
                    "strings"
                )
            if type(item) in _SCALARS:
                continue
            fault = _fault(item, f"{path}.{key}", depth + 1)
            if fault is not None:
                return fault
        return None
    if isinstance(value, float):  # a float subclass (numpy.float64): same rule
        return None if _isfinite(value) else _fault(float(value), path, depth)
    if isinstance(value, _SCALARS):
        return None
    return "type", (
        f"{path} is a {type(value).__name__}, not a JSON value; use a dict with str keys, "
        "a list, a str, an int, a finite float, a bool or None"
    )
