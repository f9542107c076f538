"""Artifact values (JSON inline, pickles, blobs by sha256) in memory and in JetStream."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from runstate.engine import (
    ArtifactRecord,
    ArtifactsRecorded,
    ArtifactStore,
    Settings,
    Writer,
)
from runstate.engine._artifacts import encode_value
from runstate.engine._jetstream_blobs import JetStreamBlobStore
from runstate.engine._memory import MemoryBlobStore, MemoryEventLog
from runstate.engine.errors import InvalidName, NotFound, UnsafeArtifact

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Model:
    """A non-JSON value (pickled), importable so it unpickles."""

    name: str
    weights: tuple[float, ...]


@pytest.fixture
def settings(nats_url: str, tmp_path: Path) -> Settings:
    # these tests write and read their own pickles: trusted (a URL is not, by default)
    return Settings(
        nats_url=nats_url,
        data_dir=tmp_path / "data",
        user="tester",
        inline_artifact_limit=1024,
        trust_pickles=True,
    )


@pytest.fixture
def js_store(nc: NATS, settings: Settings) -> ArtifactStore:
    return ArtifactStore(JetStreamBlobStore(nc, settings), settings)


@pytest.fixture
def memory_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", user="tester", inline_artifact_limit=1024, trust_pickles=True
    )


@pytest.fixture
def store(memory_settings: Settings) -> ArtifactStore:
    """An artifact store over the in-memory blob store: the encoding logic, no server."""
    return ArtifactStore(MemoryBlobStore(), memory_settings)


async def blob_names(nc: NATS, settings: Settings) -> list[str]:
    bucket = await nc.jetstream().object_store(f"{settings.prefix}_blobs")
    try:
        return sorted(info.name for info in await bucket.list())
    except nats.js.errors.NotFoundError:  # nats-py's answer for an empty bucket
        return []


async def test_json_values_are_inline_and_round_trip(store: ArtifactStore) -> None:
    """Plain JSON values travel inside the event and load back equal."""
    values = [0.93, "text", None, True, [1, 2, {"a": [None]}], {"nested": {"k": 1.5}}]
    for value in values:
        record = await store.record("value", value)
        assert record.codec == "json"
        assert record.is_inline and record.ref is None
        assert record.inline == value
        assert await store.load(record) == value


async def test_non_json_values_are_pickled_and_round_trip(store: ArtifactStore) -> None:
    """A tuple, a set, a dict with int keys and a dataclass use pickle and load back equal."""
    values = [(1, 2), {1, 2}, {1: "a"}, Model("m", (0.5, 0.25)), float("nan")]
    for value in values:
        record = await store.record("value", value)
        assert record.codec == "pickle"
        assert record.is_inline
        loaded = await store.load(record)
        if isinstance(value, float):
            assert loaded != loaded  # NaN
        else:
            assert loaded == value
            assert type(loaded) is type(value)


async def test_large_value_goes_to_the_object_store_by_sha256(
    js_store: ArtifactStore, nc: NATS, settings: Settings
) -> None:
    """A value over inline_artifact_limit is stored as a blob named by its sha256."""
    value = {"weights": list(range(2000))}
    codec, data = encode_value(value)

    record = await js_store.record("model", value)

    assert codec == "json"
    assert record.size == len(data) > settings.inline_artifact_limit
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.ref == record.sha256
    assert not record.is_inline and record.inline is None
    assert await js_store.load(record) == value
    assert await js_store.load_bytes(record) == data
    assert await blob_names(nc, settings) == [record.sha256]


async def test_large_pickle_round_trips_through_the_object_store(store: ArtifactStore) -> None:
    """A large non-JSON value is pickled into the object store and loads back equal."""
    value = Model("big", tuple(float(i) for i in range(5000)))

    record = await store.record("model", value)

    assert (record.codec, record.is_inline) == ("pickle", False)
    assert await store.load(record) == value


async def test_saving_the_same_large_value_twice_stores_one_object(
    js_store: ArtifactStore, nc: NATS, settings: Settings
) -> None:
    """Equal large values share one blob: the object store holds one entry with one chunk set."""
    value = list(range(5000))

    first = await js_store.record("a", value)
    bucket = await nc.jetstream().object_store(f"{settings.prefix}_blobs")
    messages = (await bucket.status()).stream_info.state.messages
    second = await js_store.record("b", value)

    assert first.ref == second.ref
    assert await blob_names(nc, settings) == [first.sha256]
    assert (await bucket.status()).stream_info.state.messages == messages


async def test_untrusted_pickle_is_refused(memory_settings: Settings) -> None:
    """With trust_pickles=False a pickled artifact raises UnsafeArtifact; JSON still loads."""
    blobs = MemoryBlobStore()
    record = await ArtifactStore(blobs, memory_settings).record("model", Model("m", (1.0,)))
    cautious = ArtifactStore(blobs, memory_settings.replace(trust_pickles=False))

    with pytest.raises(UnsafeArtifact, match="trust_pickles"):
        await cautious.load(record)
    assert await cautious.load(await cautious.record("x", [1, 2])) == [1, 2]


async def test_missing_blob_raises_not_found(store: ArtifactStore) -> None:
    """A record whose blob is not in the object store raises NotFound naming it."""
    data = pickle.dumps("gone")
    sha = hashlib.sha256(data).hexdigest()
    record = ArtifactRecord(name="gone", sha256=sha, size=len(data), codec="pickle", ref=sha)

    with pytest.raises(NotFound, match=sha):
        await store.load(record)


async def test_bad_artifact_name_raises_invalid_name(
    js_store: ArtifactStore, nc: NATS, settings: Settings
) -> None:
    """An artifact name that is not an identifier raises InvalidName and stores nothing."""
    with pytest.raises(InvalidName):
        await js_store.record("not a name", list(range(5000)))
    assert await blob_names(nc, settings) == []


async def test_task_save_records_artifacts_readable_from_the_log(
    memory_settings: Settings,
) -> None:
    """task.save puts small values inline and large ones by reference in one event."""
    log = MemoryEventLog(memory_settings)
    writer = Writer(log)
    run = await writer.create_run("Train")
    task = await run.create_task("train", start=True)

    await task.save(accuracy=0.9, model=Model("m", tuple(float(i) for i in range(500))))

    commits = await log.read_entity(log.subjects.task("Train", run.id, "train", task.id or ""))
    saved = commits[-1].events[0]
    assert isinstance(saved, ArtifactsRecorded)
    records = {r.name: r for r in saved.payload.artifacts}
    assert records["accuracy"].inline == 0.9
    assert records["model"].ref is not None
    assert await writer.artifacts.load(records["model"]) == Model(
        "m", tuple(float(i) for i in range(500))
    )
