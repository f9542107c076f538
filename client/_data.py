"""A task's artifacts: ``DataArtifact`` (metadata at once, the value loaded lazily) and ``Data``."""

from __future__ import annotations

import base64
import pickle
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runstate.client._base import _Object
from runstate.engine._events import ArtifactRecord
from runstate.engine.errors import NotFound, RunstateError, UnsafeArtifact
from runstate.projections._views import ArtifactView

if TYPE_CHECKING:
    from runstate.client._client import Client

__all__ = ["Data", "DataArtifact"]

_MISSING = object()


def _record(view: ArtifactView) -> ArtifactRecord:
    return ArtifactRecord(
        name=view.name,
        sha256=view.sha256,
        size=view.size,
        codec=view.codec,
        inline=view.inline,
        ref=view.ref,
    )


class DataArtifact(_Object):
    """One artifact: its metadata at once, its value on ``await artifact.load()``."""

    def __init__(self, client: Client, view: ArtifactView) -> None:
        self._client = client
        self.view = view
        self.id = view.name
        self.pathspec = view.pathspec
        self._value: Any = _MISSING

    @property
    def sha(self) -> str:
        return self.view.sha256

    @property
    def size(self) -> int:
        return self.view.size

    @property
    def created_at(self) -> datetime:
        return self.view.created_at

    @property
    def codec(self) -> str:
        return self.view.codec

    @property
    def attempt(self) -> int:
        return self.view.attempt

    @property
    def is_inline(self) -> bool:
        return self.view.ref is None

    @property
    def data(self) -> Any:
        """The value, when it is in the snapshot or already loaded; else use ``await load()``."""
        if self._value is _MISSING:
            if not self.is_inline:
                raise RunstateError(
                    f"artifact {self.pathspec} ({self.size} bytes) is in the object store; "
                    "use `await artifact.load()` to fetch it"
                )
            self._value = _decode_inline(self.view, self._client.settings.trust_pickles)
        return self._value

    async def load(self) -> Any:
        """The artifact's value, loaded once and cached."""
        if self._value is _MISSING:
            if self.is_inline:
                return self.data
            self._value = await self._client.writer.artifacts.load(_record(self.view))
        return self._value


def _decode_inline(view: ArtifactView, trust_pickles: bool | None) -> Any:
    if view.codec == "json":
        return view.inline
    if not trust_pickles:
        raise UnsafeArtifact(
            f"artifact {view.name} is a pickle and this client does not trust pickles "
            "(by default only the embedded server of your own data directory is trusted: "
            "unpickling runs code chosen by whoever wrote it); pass trust_pickles=True to "
            "connect() or Settings, or set RUNSTATE_TRUST_PICKLES=1, only for a server "
            "whose writers you trust"
        )
    return pickle.loads(base64.b64decode(str(view.inline)))  # gated by trust_pickles above


class Data:
    """The artifacts of one task attempt, by name: ``data.accuracy``, ``"model" in data``."""

    def __init__(self, client: Client, artifacts: dict[str, ArtifactView]) -> None:
        self._artifacts = {name: DataArtifact(client, view) for name, view in artifacts.items()}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        artifact = self._artifacts.get(name)
        if artifact is None:
            raise AttributeError(
                f"no artifact {name!r}; this task has {sorted(self._artifacts) or 'none'}"
            )
        return artifact.data

    def __contains__(self, name: object) -> bool:
        return name in self._artifacts

    def __iter__(self) -> Iterator[str]:
        return iter(self._artifacts)

    def __dir__(self) -> list[str]:
        return sorted(self._artifacts)

    def __len__(self) -> int:
        return len(self._artifacts)

    def __repr__(self) -> str:
        return f"<Data {sorted(self._artifacts)}>"

    def artifact(self, name: str) -> DataArtifact:
        try:
            return self._artifacts[name]
        except KeyError:
            raise NotFound(f"no artifact {name!r}") from None

    async def load(self, name: str) -> Any:
        """One artifact's value, fetching it from the object store if needed."""
        return await self.artifact(name).load()

    async def load_all(self) -> dict[str, Any]:
        """Every artifact's value by name."""
        return {name: await artifact.load() for name, artifact in self._artifacts.items()}
