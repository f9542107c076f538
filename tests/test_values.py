"""Bad values in events are refused with InvalidEvent: NaN, infinity, naive times, loose types."""

from __future__ import annotations

import math
import pickle
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstate.engine._artifacts import encode_value
from runstate.engine._events import (
    ArtifactRecord,
    RunCreated,
    RunCreatedPayload,
    TaskAttemptStateChanged,
    TaskAttemptStatePayload,
    TaskCreated,
    TaskCreatedPayload,
    decode_commit,
    encode_commit,
    replace_fields,
)
from runstate.engine._states import TaskState
from runstate.engine._values import MAX_JSON_DEPTH, check_json_value, json_fault
from runstate.engine.errors import InvalidEvent

AT = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
NAIVE = datetime(2025, 3, 1, 12, 30)

NONFINITE = [float("nan"), float("inf"), float("-inf")]


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def run_created(**payload: Any) -> RunCreated:
    return RunCreated(
        pathspec="Train/1",
        occurred_at=AT,
        payload=RunCreatedPayload(flow="Train", run_id="1", **payload),
    )


def raw_run_created(**changes: Any) -> bytes:
    event: dict[str, Any] = {
        "id": "e1",
        "type": "run.created",
        "schema_version": 1,
        "occurred_at": "2025-03-01T12:30:00Z",
        "pathspec": "Train/1",
        "payload": {"flow": "Train", "run_id": "1"},
    }
    event.update(changes)
    return orjson.dumps([event])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


# -- check_json_value ----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_every_json_value_is_accepted_and_round_trips(value: Any) -> None:
    """Any JSON value passes check_json_value and reads back equal from encoded JSON."""
    check_json_value(value, "parameters")
    assert orjson.loads(orjson.dumps(value)) == value


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from(NONFINITE), st.randoms(use_true_random=False))
def test_a_nonfinite_float_anywhere_is_refused_by_its_path(
    value: Any, bad: float, rng: Any
) -> None:
    """A NaN or infinity put anywhere in a JSON value is refused, naming the path to it."""
    root: dict[str, Any] = {"x": value}
    holder: Any = root
    key: Any = "x"
    path = "parameters.x"
    while isinstance(holder[key], list | dict) and holder[key] and rng.random() < 0.7:
        holder = holder[key]
        if isinstance(holder, list):
            key = rng.randrange(len(holder))
            path += f"[{key}]"
        else:
            key = rng.choice(sorted(holder))
            path += f".{key}"
    holder[key] = bad
    with pytest.raises(InvalidEvent) as caught:
        check_json_value(root, "parameters")
    assert caught.value.message.startswith(f"{path} is {bad!r}")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"x": float("nan")}, "parameters.x is nan, which JSON cannot hold"),
        ({"x": [1.0, float("-inf")]}, r"parameters.x\[1\] is -inf"),
        ({"k": {"v": float("inf")}}, "parameters.k.v is inf"),
        ({"x": {1, 2}}, "parameters.x is a set, not a JSON value"),
        ({"x": (1, 2)}, "parameters.x is a tuple, not a JSON value"),
        ({"x": lambda: 1}, "parameters.x is a function, not a JSON value"),
        ({"x": {1: "a"}}, "parameters.x has the key 1 .int.; JSON object keys are strings"),
        ({"x": nested(10_000)}, r"parameters.x\[0\].* nests lists and objects more than 64"),
    ],
)
def test_values_that_are_not_json_are_refused_with_a_clear_message(
    value: Any, message: str
) -> None:
    """NaN, infinity, sets, tuples, functions, int keys and deep nesting: InvalidEvent, no crash."""
    with pytest.raises(InvalidEvent, match=message):
        check_json_value(value, "parameters")


def test_nesting_is_allowed_up_to_the_limit() -> None:
    """A value nested MAX_JSON_DEPTH levels passes; one level more is refused."""
    check_json_value(nested(MAX_JSON_DEPTH), "v")
    assert json_fault(nested(MAX_JSON_DEPTH + 1), "v") is not None


# -- the event models ------------------------------------------------------------


@pytest.mark.parametrize("bad", NONFINITE)
def test_event_models_refuse_nonfinite_parameters_artifacts_and_environment(bad: float) -> None:
    """Parameters, inline artifact values and environment info refuse NaN/inf, naming the path."""
    with pytest.raises(InvalidEvent, match=r"parameters\.x is"):
        RunCreatedPayload(flow="Train", run_id="1", parameters={"x": bad})
    with pytest.raises(InvalidEvent, match=r"artifact model.w\[1\] is"):
        ArtifactRecord(name="model", sha256="0", size=1, codec="json", inline={"w": [1.0, bad]})
    with pytest.raises(InvalidEvent, match=r"environment_info\.gpu is"):
        TaskCreatedPayload(step="train", task_id="1", environment_info={"gpu": bad})


def test_non_json_and_deep_parameters_are_invalid_events_not_pydantic_or_recursion_errors() -> None:
    """Non-JSON parameters and a list nested 10,000 deep raise InvalidEvent from the model."""
    with pytest.raises(InvalidEvent, match=r"parameters\.when is a datetime"):
        RunCreatedPayload(flow="Train", run_id="1", parameters={"when": AT})
    with pytest.raises(InvalidEvent, match="more than 64 levels"):
        RunCreatedPayload(flow="Train", run_id="1", parameters={"x": nested(10_000)})


def test_an_event_with_a_naive_occurred_at_is_refused_when_built() -> None:
    """A naive occurred_at (datetime.now()) is an InvalidEvent saying to use an aware one."""
    with pytest.raises(InvalidEvent, match=r"occurred_at has no timezone.*datetime.now\(UTC\)"):
        RunCreated(
            pathspec="Train/1",
            occurred_at=NAIVE,
            payload=RunCreatedPayload(flow="Train", run_id="1"),
        )
    with pytest.raises(InvalidEvent, match="scheduled_at has no timezone"):
        RunCreatedPayload(flow="Train", run_id="1", scheduled_at=NAIVE)


def test_an_event_built_unvalidated_with_a_naive_time_is_refused_when_encoded() -> None:
    """encode_commit refuses a naive occurred_at that replace_fields slipped past the model."""
    event = TaskAttemptStateChanged(
        pathspec="Train/1/train/1",
        attempt=0,
        occurred_at=AT,
        payload=TaskAttemptStatePayload(state=TaskState.RUNNING),
    )
    naive = replace_fields(event, {"occurred_at": NAIVE})
    with pytest.raises(InvalidEvent, match="occurred_at has no timezone"):
        encode_commit([naive])


def test_an_event_built_unvalidated_with_nan_is_refused_when_encoded() -> None:
    """encode_commit refuses a NaN that model_construct slipped past the model, naming its path."""
    payload = RunCreatedPayload.model_construct(
        flow="Train", run_id="1", parameters={"grid": [0.1, float("nan")]}
    )
    event = replace_fields(run_created(), {"payload": payload})
    with pytest.raises(InvalidEvent, match=r"payload.parameters.grid\[1\] is nan"):
        encode_commit([event])


def test_nan_inside_a_string_is_just_text() -> None:
    """A string holding 'NaN' or 'Infinity' encodes and decodes as itself."""
    event = run_created(parameters={"note": "NaN loss at Infinity"}, tags=["NaN"])
    (decoded,) = decode_commit(encode_commit([event]))
    assert decoded == event


def test_a_foreign_commit_with_a_naive_time_is_refused_when_decoded() -> None:
    """A commit whose occurred_at has no offset is an InvalidEvent (so it is dead-lettered)."""
    with pytest.raises(InvalidEvent, match="occurred_at has no timezone"):
        decode_commit(raw_run_created(occurred_at="2025-03-01T12:30:00"))


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_foreign_commit_with_nan_or_infinity_is_refused_when_decoded(token: bytes) -> None:
    """NaN/Infinity tokens, which pydantic's parser would take, are an InvalidEvent."""
    data = raw_run_created(payload={"flow": "Train", "run_id": "1", "parameters": {"x": 0}})
    data = data.replace(b'"x":0', b'"x":' + token)
    with pytest.raises(InvalidEvent, match="not JSON"):
        decode_commit(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("schema_version", "1"),
        ("schema_version", 1.0),
        ("schema_version", True),
        ("attempt", "0"),
    ],
)
def test_envelope_types_are_strict(field: str, value: Any) -> None:
    """schema_version "1" (or 1.0, or true) and attempt "0" are refused, not coerced."""
    with pytest.raises(InvalidEvent, match=field):
        decode_commit(raw_run_created(**{field: value}))


def test_payload_numbers_are_strict() -> None:
    """A foreach index "3" in a foreign commit is refused, not read as 3."""
    event = TaskCreated(
        pathspec="Train/1/train/1",
        occurred_at=AT,
        payload=TaskCreatedPayload(step="train", task_id="1", foreach_index=3),
    )
    data = encode_commit([event]).replace(b'"foreach_index":3', b'"foreach_index":"3"')
    with pytest.raises(InvalidEvent, match="foreach_index"):
        decode_commit(data)


# -- artifact values -----------------------------------------------------------------


@pytest.mark.parametrize("bad", NONFINITE)
def test_artifacts_with_nan_or_infinity_are_pickled_so_they_load_back_exactly(bad: float) -> None:
    """save(x=inf), [1.0, -inf], {"k": nan}: pickled (exact), never inline JSON null."""
    for value in (bad, [1.0, bad], {"k": bad}):
        codec, data = encode_value(value, "x")
        assert codec == "pickle"
        loaded = pickle.loads(data)
        assert repr(loaded) == repr(value)  # NaN != NaN: compare the text
        assert math.isnan(bad) or loaded == value


def test_artifacts_neither_json_nor_picklable_are_invalid_events() -> None:
    """save(x=lambda: 1) and a list nested 10,000 deep raise InvalidEvent naming the artifact."""
    with pytest.raises(InvalidEvent, match="artifact fn is neither a JSON value nor picklable"):
        encode_value(lambda: 1, "fn")
    with pytest.raises(InvalidEvent, match="artifact deep is neither"):
        encode_value(nested(10_000), "deep")


def test_json_artifacts_stay_json() -> None:
    """Plain JSON artifact values keep the json codec (and their bytes)."""
    for value in (0.93, "text", None, True, [1, 2, {"a": [None]}], {"nested": {"k": 1.5}}):
        assert encode_value(value) == ("json", orjson.dumps(value))
