"""A ``run.updated`` payload from a writer's arguments, checked before anything is sent.

W&B lets a run's display name, notes, config and summary be edited at any
time, after the run finished too; ``RunHandle.update`` and
``Client.update_run`` send such an edit as one event built here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runstate.engine._events import RunUpdatedPayload
from runstate.engine._points import wire_value
from runstate.engine._values import check_json_value
from runstate.engine.errors import InvalidEvent

__all__ = ["UNCHANGED", "Unchanged", "run_update"]


class Unchanged:
    """The type of ``UNCHANGED``."""

    def __repr__(self) -> str:
        return "UNCHANGED"


#: a run's name or notes left as they are (None clears them)
UNCHANGED = Unchanged()


def run_update(
    *,
    name: str | Unchanged | None = UNCHANGED,
    notes: str | Unchanged | None = UNCHANGED,
    config: Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | None = None,
) -> RunUpdatedPayload:
    """The payload of a ``run.updated`` event, checked; ``InvalidEvent`` for a bad value.

    ``config`` and ``summary`` values are JSON values; a summary value may also
    be a NaN or an infinity (as a metric point may), tagged for the journey.
    """
    changes: list[Any] = []
    fields: dict[str, Any] = {}
    for label, value in (("name", name), ("notes", notes)):
        if value is UNCHANGED:
            continue
        if value is not None and not isinstance(value, str):
            raise InvalidEvent(f"a run's {label} is a str or None, not {type(value).__name__}")
        changes.append(label)
        fields[label] = value
    for label, values in (("config", config), ("summary", summary)):
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise InvalidEvent(
                f"{label} is a mapping of keys to JSON values, not {type(values).__name__}"
            )
        given = dict(values)
        if label == "summary":
            given = {key: wire_value(value) for key, value in given.items()}
        for key in given:
            if not isinstance(key, str) or not key:
                raise InvalidEvent(f"{label} key {key!r}: use a non-empty string")
        check_json_value(given, label)
        if given:
            fields[label] = given
    if not changes and not fields:
        raise InvalidEvent("nothing to update: give a name, notes, config or summary values")
    return RunUpdatedPayload(changes=changes, **fields)
