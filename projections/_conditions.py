"""Conditions on a run's summary and config values (``summary.acc > 0.9``), and how they are stored.

A condition names a field (``summary.<key>`` or ``config.<key>``;
``parameters.<key>`` is read as ``config.<key>``), an operator (``= != < <=
> >=``) and a JSON literal: a number, a string, ``true``/``false`` or
``null``. A comparison only matches values of the literal's kind: ``> 0.9``
never matches a string, ``< "b"`` never a number. ``!=`` matches runs that
have a value of the key and it differs; ``= null`` matches runs without the
key (or with null), ``!= null`` those with a value. Booleans and ``null``
take only ``=`` and ``!=``.

Values are stored in SQL as ``(value, kind)`` pairs, the kinds of the
metrics store (``_metrics_store``) and two more: 0 a number, 1 a bool
(stored 0/1), 2 NaN (stored NULL), 3 a string, 4 null (NULL), 5 a list or
object (its canonical JSON). Sorted by such a field, runs without a value
(missing, null or NaN) come last in either direction; the others sort
numbers (and bools) before strings.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, JsonValue, field_validator, model_validator

from runstate.engine._points import untag
from runstate.engine.errors import BadFilter

__all__ = [
    "FIELD_SOURCES",
    "Condition",
    "Operator",
    "check_value_field",
    "condition_sql",
    "parse_condition",
    "reference_match",
    "stored_value",
]

Operator = Literal["=", "!=", "<", "<=", ">", ">="]

#: the fields a condition or a sort may name, before the dot: what each reads
FIELD_SOURCES = {"summary": "summary", "config": "config", "parameters": "config"}

_NUMBER, _BOOL, _NAN, _TEXT, _NULL, _JSON = 0, 1, 2, 3, 4, 5

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

_TEXT_FORM = re.compile(r"^\s*([A-Za-z]+)\.(\S.*?)\s*(==|!=|<=|>=|=|<|>)\s*(.*?)\s*$", re.DOTALL)


def check_value_field(field: str) -> str:
    """``summary.<key>`` or ``config.<key>`` (``parameters.<key>`` made ``config.<key>``);
    ``ValueError`` for anything else."""
    source, dot, key = field.partition(".")
    if not dot or not key or source not in FIELD_SOURCES:
        raise ValueError(
            f"unknown field {field!r}; name summary.<key> or config.<key> (or parameters.<key>)"
        )
    return f"{FIELD_SOURCES[source]}.{key}"


class Condition(BaseModel):
    """One condition of a run list's ``where``: field, operator, JSON literal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str
    op: Operator
    value: JsonValue

    @field_validator("field")
    @classmethod
    def _check_field(cls, value: str) -> str:
        return check_value_field(value)

    @model_validator(mode="after")
    def _check_value(self) -> Condition:
        value = self.value
        if isinstance(value, list | dict):
            raise ValueError(
                f"{self.field}: compare with a number, a string, true, false or null, "
                f"not {type(value).__name__}"
            )
        if (value is None or isinstance(value, bool)) and self.op not in ("=", "!="):
            raise ValueError(f"{self.field}: {orjson.dumps(value).decode()} takes only = and !=")
        if isinstance(value, float) and value != value:
            raise ValueError(f"{self.field}: NaN equals nothing; use = null for missing values")
        return self

    @property
    def source(self) -> str:
        """``summary`` or ``config``."""
        return self.field.partition(".")[0]

    @property
    def key(self) -> str:
        return self.field.partition(".")[2]


def parse_condition(condition: str | tuple[Any, ...] | Condition) -> Condition:
    """A condition from its text (``'summary.acc > 0.9'``) or a tuple
    (``("summary.acc", ">", 0.9)``); ``BadFilter`` saying what is wrong."""
    if isinstance(condition, Condition):
        return condition
    if isinstance(condition, tuple):
        if len(condition) != 3:
            raise BadFilter(
                f"condition {condition!r}: a tuple is (field, operator, value), "
                "e.g. ('summary.acc', '>', 0.9)"
            )
        field, op, value = condition
    elif isinstance(condition, str):
        match = _TEXT_FORM.match(condition)
        if match is None:
            raise BadFilter(
                f"condition {condition!r} is not <field> <operator> <value>, "
                "e.g. 'summary.acc > 0.9' (operators = != < <= > >=)"
            )
        source, key, op, text = match.groups()
        field = f"{source}.{key}"
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise BadFilter(
                f"condition {condition!r}: {text!r} is not a JSON literal; "
                'write numbers as 0.9, strings in double quotes ("adam"), true, false or null'
            ) from None
    else:
        raise BadFilter(
            f"a condition is a string such as 'summary.acc > 0.9' or a tuple, "
            f"not {type(condition).__name__}"
        )
    if op == "==":
        op = "="
    try:
        return Condition(field=field, op=op, value=value)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise BadFilter(f"condition {condition!r}: {_first_problem(exc)}") from None


def _first_problem(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc)
    first = errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "literal_error":
        return f"unknown operator {first['input']!r}; use one of = != < <= > >="
    return f"{where}: {message}" if where else message


# -- stored values ------------------------------------------------------------------


def stored_value(value: Any) -> tuple[Any, int]:
    """``(value, kind)`` as SQL holds a summary or config value (tagged NaN and
    infinities read as floats)."""
    value = untag(value)
    kind = type(value)
    if kind is bool:
        return int(value), _BOOL
    if kind is str:
        return value, _TEXT
    if value is None:
        return None, _NULL
    if kind is float:
        return (None, _NAN) if value != value else (value, _NUMBER)
    if kind is int:
        return (value, _NUMBER) if -(2**63) <= value < 2**63 else (float(value), _NUMBER)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode(), _JSON


def condition_sql(value: str, kind: str, condition: Condition) -> tuple[str, list[Any]]:
    """The SQL test of ``condition`` on the value and kind expressions given."""
    literal, op = condition.value, condition.op
    if literal is None:
        missing = f"({kind} IS NULL OR {kind} = {_NULL})"
        return (missing, []) if op == "=" else (f"NOT {missing}", [])
    if isinstance(literal, bool):
        same = f"({kind} = {_BOOL} AND {value} = ?)"
    else:
        literal_kind = _TEXT if isinstance(literal, str) else _NUMBER
        if op != "!=":
            return f"({kind} = {literal_kind} AND {value} {op} ?)", [literal]
        same = f"({kind} = {literal_kind} AND {value} = ?)"
    if op == "=":
        return same, [literal]
    return f"({kind} IS NOT NULL AND {kind} != {_NULL} AND NOT {same})", [literal]


def reference_match(present: bool, value: Any, condition: Condition) -> bool:
    """``condition_sql`` in plain Python, for the store contract's reference."""
    stored, kind = stored_value(value) if present else (None, None)
    literal, op = condition.value, condition.op
    if literal is None:
        missing = kind is None or kind == _NULL
        return missing if op == "=" else not missing
    if isinstance(literal, bool):
        same = kind == _BOOL and stored == int(literal)
    else:
        literal_kind = _TEXT if isinstance(literal, str) else _NUMBER
        if kind != literal_kind:
            return op == "!=" and kind is not None and kind != _NULL
        same = stored == literal
        if op not in ("=", "!="):
            return bool(_COMPARE[op](stored, literal))
    if op == "=":
        return same
    return kind is not None and kind != _NULL and not same
