"""Query models: bad filters, sorts and cursors are refused as BadFilter, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from runstate.engine.errors import BadFilter
from runstate.projections._queries import RunQuery, TaskQuery


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"sort": "started_at"}, ["sort", "created_at, finished_at, duration, run_number"]),
        ({"sort": "+created_at"}, ["sort", "'-' for descending"]),
        ({"limit": 0}, ["limit", "greater than or equal to 1"]),
        ({"limit": 1001}, ["limit", "1000"]),
        ({"state": ["done"]}, ["state", "'completed'"]),
        ({"colour": "red"}, ["unknown field 'colour'", "tags_all"]),
        ({"flow": "a.b"}, ["flow", "invalid flow name"]),
        ({"created_after": "yesterday"}, ["created_after", "datetime"]),
    ],
)
def test_bad_run_queries_raise_bad_filter(kwargs: dict[str, Any], words: list[str]) -> None:
    """A bad field, value or sort key raises BadFilter naming the field and what it accepts."""
    with pytest.raises(BadFilter) as caught:
        RunQuery(**kwargs)
    for word in words:
        assert word in str(caught.value)


def test_bad_queries_from_json_raise_bad_filter() -> None:
    """Queries parsed from JSON raise BadFilter too, and good ones parse."""
    with pytest.raises(BadFilter, match="sort"):
        RunQuery.from_json(b'{"sort": "size"}')
    with pytest.raises(BadFilter, match="run"):
        TaskQuery.from_json(b'{"run": "Train", "step": "start"}')
    with pytest.raises(BadFilter, match="step"):
        TaskQuery(run="Train/1", step="no-dash")
    assert RunQuery.from_json(b'{"flow": "Train", "limit": 5}').limit == 5
