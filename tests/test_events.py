"""The event envelope: encoding, decoding, validation errors and schema upcasting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstate.engine._commits import CommitEncoder
from runstate.engine._events import (
    CURRENT_VERSION,
    ArtifactRecord,
    ArtifactsRecorded,
    ArtifactsRecordedPayload,
    Event,
    ExceptionInfo,
    ForeachFrame,
    Heartbeat,
    HeartbeatPayload,
    MetadataEntry,
    MetadataRecorded,
    MetadataRecordedPayload,
    RunCreated,
    RunCreatedPayload,
    RunStateChanged,
    RunStateChangedPayload,
    RunTagsChanged,
    RunTagsChangedPayload,
    TaskAttemptStateChanged,
    TaskAttemptStatePayload,
    TaskCreated,
    TaskCreatedPayload,
    decode_commit,
    decode_event,
    encode_commit,
    encode_event,
    new_event_id,
    register_upcaster,
    unregister_upcaster,
)
from runstate.engine._names import Subjects
from runstate.engine._states import RunState, TaskState
from runstate.engine.errors import InvalidEvent

AT = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
RUN = "Train/42"
TASK = "Train/42/train/7"

EVERY_TYPE: list[Event] = [
    RunCreated(
        pathspec=RUN,
        occurred_at=AT,
        actor="alice",
        payload=RunCreatedPayload(
            flow="Train",
            run_id="42",
            state=RunState.SCHEDULED,
            parameters={"alpha": 0.5, "layers": [64, 32], "name": "naïve", "cfg": {"a": None}},
            tags=["production"],
            system_tags=["user:alice"],
            user="alice",
            idempotency_key="nightly-2025-03-01",
            scheduled_at=AT,
            script_name="train.py",
        ),
    ),
    RunStateChanged(
        pathspec=RUN,
        occurred_at=AT,
        payload=RunStateChangedPayload(
            state=RunState.RUNNING, label="Resumed", message="by hand", resume=True
        ),
    ),
    RunTagsChanged(
        pathspec=RUN,
        payload=RunTagsChangedPayload(add=["a"], remove=["b"], replace=["c", "d"]),
    ),
    TaskCreated(
        pathspec=TASK,
        attempt=0,
        payload=TaskCreatedPayload(
            step="train",
            task_id="7",
            foreach_index=3,
            foreach_stack=[ForeachFrame(step="train", index=3, num_splits=10, value="lr=0.1")],
            parent_tasks=["Train/42/start/1"],
            runtime_name="k8s",
            environment_info={"python": "3.11", "gpus": 2},
        ),
    ),
    TaskAttemptStateChanged(
        pathspec=TASK,
        attempt=1,
        payload=TaskAttemptStatePayload(
            state=TaskState.FAILED,
            label="OOM",
            message="killed",
            exception=ExceptionInfo(type="MemoryError", message="oom", traceback="Traceback…"),
        ),
    ),
    ArtifactsRecorded(
        pathspec=TASK,
        attempt=1,
        payload=ArtifactsRecordedPayload(
            artifacts=[
                ArtifactRecord(name="small", sha256="a" * 64, size=9, codec="json", inline=[1, 2]),
                ArtifactRecord(
                    name="big", sha256="b" * 64, size=10**9, codec="pickle", ref="b" * 64
                ),
            ]
        ),
    ),
    MetadataRecorded(
        pathspec=TASK,
        attempt=1,
        payload=MetadataRecordedPayload(
            entries=[
                MetadataEntry(name="host", value="gpu-3"),
                MetadataEntry(name="n", value="2", type="int"),
            ]
        ),
    ),
    Heartbeat(pathspec=TASK, attempt=1, payload=HeartbeatPayload(worker="w-1")),
]


@pytest.mark.parametrize("event", EVERY_TYPE, ids=lambda event: event.type)
def test_every_event_type_round_trips(event: Event) -> None:
    """Encoding then decoding a commit of one event gives the same event back."""
    assert decode_commit(encode_commit([event])) == [event]
    assert decode_event(encode_event(event)) == event


def test_a_commit_of_several_events_round_trips_in_order() -> None:
    """A commit keeps its events and their order."""
    events = [event for event in EVERY_TYPE if event.pathspec == TASK]
    data = encode_commit(events)
    assert data == orjson.dumps(orjson.loads(data))  # compact: no whitespace between tokens
    assert decode_commit(data) == events


def test_a_single_object_is_a_commit_of_one() -> None:
    """A bare JSON object decodes as a commit holding that one event."""
    event = EVERY_TYPE[1]
    assert decode_commit(encode_event(event)) == [event]


def test_envelope_defaults() -> None:
    """An event gets a time-ordered UUIDv7 id, schema version 1 and an aware timestamp."""
    first = Heartbeat(pathspec=RUN)
    second = Heartbeat(pathspec=RUN)
    assert first.id != second.id
    assert first.id[14] == "7"  # the UUID version nibble
    assert first.schema_version == 1
    assert first.occurred_at.tzinfo is not None
    assert new_event_id()[:8] >= first.id[:8]


def test_encode_refuses_an_empty_commit() -> None:
    """A commit needs at least one event."""
    with pytest.raises(InvalidEvent, match="at least one event"):
        encode_commit([])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b"[]", "non-empty JSON array"),
        (b"42", "non-empty JSON array"),
        (b'"run.created"', "non-empty JSON array"),
        (b"[42]", "invalid event at 0"),
        (b"[{}]", "invalid event at 0"),
    ],
)
def test_malformed_commits(data: bytes, message: str) -> None:
    """Bytes that are not a commit raise InvalidEvent saying what is wrong."""
    with pytest.raises(InvalidEvent, match=message):
        decode_commit(data)


def _raw(event: Event) -> dict[str, Any]:
    raw: dict[str, Any] = orjson.loads(encode_event(event))
    return raw


def test_unknown_type() -> None:
    """An unknown event type is InvalidEvent naming the type it found."""
    raw = _raw(EVERY_TYPE[1]) | {"type": "run.exploded"}
    with pytest.raises(InvalidEvent) as info:
        decode_commit(orjson.dumps([raw]))
    assert "run.exploded" in str(info.value)


def test_missing_field() -> None:
    """A missing required field is InvalidEvent naming where the field is."""
    raw = _raw(EVERY_TYPE[0])
    del raw["payload"]["flow"]
    second = _raw(EVERY_TYPE[1])
    with pytest.raises(InvalidEvent) as info:
        decode_commit(orjson.dumps([second, raw]))
    assert "1.run.created.payload.flow" in str(info.value)
    assert "required" in str(info.value)


def test_wrong_value() -> None:
    """A value of the wrong kind (an unknown state) is InvalidEvent naming the field."""
    raw = _raw(EVERY_TYPE[1])
    raw["payload"]["state"] = "exploded"
    with pytest.raises(InvalidEvent, match=r"payload\.state"):
        decode_commit(orjson.dumps([raw]))


def test_unknown_fields_are_ignored() -> None:
    """A field this build does not know (added by a newer writer) is ignored."""
    raw = _raw(EVERY_TYPE[1])
    raw["payload"]["colour"] = "green"
    raw["region"] = "eu"
    assert decode_commit(orjson.dumps([raw])) == [EVERY_TYPE[1]]


def test_newer_schema_version_says_upgrade() -> None:
    """An event of a schema version newer than this build knows tells the reader to upgrade."""
    raw = _raw(EVERY_TYPE[1]) | {"schema_version": 2}
    with pytest.raises(InvalidEvent) as info:
        decode_commit(orjson.dumps([raw]))
    assert "run.state_changed v2" in str(info.value)
    assert "upgrade" in str(info.value)
    with pytest.raises(InvalidEvent, match="upgrade"):
        decode_event(raw)


def test_older_schema_version_without_upcaster() -> None:
    """An event older than any version with an upcaster is InvalidEvent, not a silent misread."""
    raw = _raw(EVERY_TYPE[1]) | {"schema_version": 0}
    with pytest.raises(InvalidEvent, match=r"no upcaster for run\.state_changed v0"):
        decode_commit(orjson.dumps([raw]))


def test_decode_event_refuses_a_non_object() -> None:
    """A single event that is not a JSON object is InvalidEvent."""
    with pytest.raises(InvalidEvent):
        decode_event(b"[1]")


# -- upcasting --------------------------------------------------------------------

METADATA = "task.metadata_recorded"


def _metadata_v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """v1 wrote entries as {"key", "val"}; v2 (the current models) as {"name", "value"}."""
    payload = raw["payload"]
    entries = [{"name": e["key"], "value": e["val"]} for e in payload["entries"]]
    return raw | {"schema_version": 2, "payload": payload | {"entries": entries}}


@pytest.fixture
def metadata_v2() -> Iterator[None]:
    """Pretend the current metadata models are v2, with an upcaster from v1."""
    register_upcaster(METADATA, 1, _metadata_v1_to_v2)
    try:
        yield
    finally:
        unregister_upcaster(METADATA, 1)


OLD_METADATA: dict[str, Any] = {
    "id": "0190a0d8-0000-7000-8000-000000000001",
    "type": METADATA,
    "schema_version": 1,
    "occurred_at": "2024-06-01T10:00:00Z",
    "pathspec": TASK,
    "attempt": 0,
    "payload": {"entries": [{"key": "host", "val": "gpu-3"}]},
}


def test_old_shape_is_refused_without_upcaster() -> None:
    """Without the upcaster the v1 shape does not fit the current model."""
    with pytest.raises(InvalidEvent, match=r"entries\.0\.name"):
        decode_commit(orjson.dumps([OLD_METADATA]))


def test_upcaster_turns_an_old_event_into_the_current_model(metadata_v2: None) -> None:
    """A v1 event in the log decodes, through its upcaster, as the current model."""
    assert CURRENT_VERSION[METADATA] == 2
    [event] = decode_commit(orjson.dumps([OLD_METADATA]))
    assert isinstance(event, MetadataRecorded)
    assert event.schema_version == 2
    assert event.payload.entries == [MetadataEntry(name="host", value="gpu-3")]
    assert event.occurred_at == datetime(2024, 6, 1, 10, tzinfo=UTC)
    assert decode_event(dict(OLD_METADATA)) == event


def test_current_events_are_not_upcast(metadata_v2: None) -> None:
    """An event already at the current version decodes as written, beside an old one."""
    current = MetadataRecorded(
        pathspec=TASK,
        attempt=0,
        schema_version=2,
        payload=MetadataRecordedPayload(entries=[MetadataEntry(name="os", value="linux")]),
    )
    old, new = decode_commit(orjson.dumps([OLD_METADATA, _raw(current)]))
    assert new == current
    assert isinstance(old, MetadataRecorded) and old.payload.entries[0].name == "host"


def test_upcaster_must_set_the_version() -> None:
    """An upcaster that forgets to bump schema_version is reported, not looped on."""
    register_upcaster(METADATA, 1, lambda raw: raw)
    try:
        with pytest.raises(InvalidEvent, match="did not set schema_version"):
            decode_commit(orjson.dumps([OLD_METADATA]))
    finally:
        unregister_upcaster(METADATA, 1)


def test_unregister_restores_the_version(metadata_v2: None) -> None:
    """Unregistering the last upcaster of a type puts its current version back to 1."""
    unregister_upcaster(METADATA, 1)
    assert CURRENT_VERSION[METADATA] == 1
    register_upcaster(METADATA, 1, _metadata_v1_to_v2)  # for the fixture to remove


# -- commits of one entity --------------------------------------------------------


def test_a_commit_cannot_mix_entities() -> None:
    """The log refuses a commit whose events belong to two entities."""
    encoder = CommitEncoder(Subjects("rs"))
    run_event, task_event = EVERY_TYPE[1], EVERY_TYPE[4]
    with pytest.raises(InvalidEvent) as info:
        encoder.subject_of([run_event, task_event])
    assert RUN in str(info.value) and TASK in str(info.value)
    with pytest.raises(InvalidEvent, match="at least one event"):
        encoder.subject_of([])


@settings(max_examples=50, deadline=None)
@given(
    state=st.sampled_from(list(TaskState)),
    attempt=st.integers(min_value=0, max_value=10**6),
    label=st.none() | st.text(max_size=20),
    message=st.none() | st.text(max_size=200),
)
def test_state_events_round_trip(
    state: TaskState, attempt: int, label: str | None, message: str | None
) -> None:
    """Any task state event, with any text in its label and message, round trips."""
    event = TaskAttemptStateChanged(
        pathspec=TASK,
        attempt=attempt,
        occurred_at=AT,
        payload=TaskAttemptStatePayload(state=state, label=label, message=message),
    )
    assert decode_commit(encode_commit([event])) == [event]


def test_new_events_are_stamped_with_the_current_schema_version() -> None:
    """After an upcaster raises a type's version, new events are written at that version."""
    from runstate.engine._events import CURRENT_VERSION, register_upcaster, unregister_upcaster

    register_upcaster("task.metadata_recorded", 1, lambda raw: {**raw, "schema_version": 2})
    try:
        assert CURRENT_VERSION["task.metadata_recorded"] == 2
        event = MetadataRecorded(pathspec="F/1/s/1", payload={"entries": []})
        stored = orjson.loads(encode_commit([event]))
        assert stored[0]["schema_version"] == 2
        assert decode_commit(encode_commit([event]))[0].schema_version == 2
    finally:
        unregister_upcaster("task.metadata_recorded", 1)


def test_a_failing_upcaster_is_an_invalid_event() -> None:
    """An exception inside an upcaster surfaces as InvalidEvent naming the upcaster."""
    from runstate.engine._events import register_upcaster, unregister_upcaster

    def broken(raw: dict[str, object]) -> dict[str, object]:
        raise KeyError("entries")

    event = MetadataRecorded(pathspec="F/1/s/1", payload={"entries": []})
    data = encode_commit([event])
    register_upcaster("task.metadata_recorded", 1, broken)
    try:
        with pytest.raises(InvalidEvent, match=r"upcaster for task\.metadata_recorded v1 failed"):
            decode_commit(data)
    finally:
        unregister_upcaster("task.metadata_recorded", 1)


def test_event_ids_are_unique_uuid7_and_differ_after_fork() -> None:
    """Event ids are version-7 UUIDs, unique, and a forked child does not repeat its parent's."""
    import os
    import uuid

    from runstate.engine._events import new_event_id

    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids[:100])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, new_event_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child != new_event_id()
    assert child not in ids
