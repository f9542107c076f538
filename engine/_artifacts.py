"""Artifact values: encode as JSON or pickle, inline or in the object store by sha256."""

from __future__ import annotations

import base64
import hashlib
import pickle
from typing import Any

import orjson

from runstate.engine._events import ArtifactRecord
from runstate.engine._names import check_artifact_name
from runstate.engine._settings import Settings
from runstate.engine._typing import BlobStore
from runstate.engine._values import json_fault
from runstate.engine.errors import InvalidEvent, NotFound, RunstateError, UnsafeArtifact

__all__ = ["ArtifactStore", "encode_value"]


def encode_value(value: Any, name: str = "value") -> tuple[str, bytes]:
    """Return ``(codec, bytes)``: JSON for JSON values, pickle for anything else.

    A JSON value is what ``check_json_value`` accepts; anything else (a tuple,
    a set, an object, a NaN or infinite float, which JSON cannot hold) is
    pickled, so it loads back exactly. Raises ``InvalidEvent`` (naming
    ``name``) for a value that can be neither (a lambda, a list nested
    10,000 deep).
    """
    if json_fault(value, name) is None:
        try:
            return "json", orjson.dumps(value)
        except orjson.JSONEncodeError:
            pass  # an int beyond 64 bits: pickle keeps it exact
    try:
        return "pickle", pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # PicklingError, but also AttributeError, TypeError, RecursionError
        raise InvalidEvent(
            f"artifact {name} is neither a JSON value nor picklable "
            f"({type(exc).__name__}: {exc}); save data, not a lambda, a generator or a handle"
        ) from None


class ArtifactStore:
    """Puts artifact values where they belong and loads them back.

    Values up to ``settings.inline_artifact_limit`` bytes travel inside the
    event; larger ones go to the blob store (JetStream's ``<prefix>_blobs``
    object store) under their sha256, so equal values are stored once.
    """

    def __init__(self, blobs: BlobStore, settings: Settings) -> None:
        self._blobs = blobs
        self._settings = settings

    async def record(self, name: str, value: Any) -> ArtifactRecord:
        """Encode ``value`` and return the record to put in an ``ArtifactsRecorded`` event."""
        check_artifact_name(name)
        codec, data = encode_value(value, name)
        sha = hashlib.sha256(data).hexdigest()
        if len(data) <= self._settings.inline_artifact_limit:
            inline: Any = value if codec == "json" else base64.b64encode(data).decode("ascii")
            return ArtifactRecord(name=name, sha256=sha, size=len(data), codec=codec, inline=inline)
        await self._blobs.put(sha, data)
        return ArtifactRecord(name=name, sha256=sha, size=len(data), codec=codec, ref=sha)

    async def load_bytes(self, record: ArtifactRecord) -> bytes:
        """The encoded bytes of an artifact, from the event or the object store."""
        if record.ref is None:
            if record.codec == "json":
                return orjson.dumps(record.inline)
            return base64.b64decode(str(record.inline))
        try:
            return await self._blobs.get(record.ref)
        except NotFound as exc:
            raise NotFound(f"artifact {record.name}: {exc.message}") from None

    async def load(self, record: ArtifactRecord) -> Any:
        """The artifact's Python value; pickles only if ``settings.trust_pickles``."""
        if record.codec == "json":
            if record.ref is None:
                return record.inline
            return orjson.loads(await self.load_bytes(record))
        if not self._settings.trust_pickles:
            raise UnsafeArtifact(
                f"artifact {record.name} is a pickle and this client does not trust pickles "
                "(by default only the embedded server of your own data directory is trusted: "
                "unpickling runs code chosen by whoever wrote it); pass trust_pickles=True to "
                "connect() or Settings, or set RUNSTATE_TRUST_PICKLES=1, only for a server "
                "whose writers you trust"
            )
        data = await self.load_bytes(record)
        try:
            return pickle.loads(data)  # gated by trust_pickles above
        except Exception as exc:
            raise RunstateError(
                f"artifact {record.name} could not be unpickled here "
                f"({type(exc).__name__}: {exc}); is the code that defined its class importable?"
            ) from None
