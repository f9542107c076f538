"""What the objects of the client's model share: identity by type and pathspec, and the
moment an object read ``as_of`` shows."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from runstate.projections._as_of import Moment

if TYPE_CHECKING:
    from runstate.client._client import Client

__all__: list[str] = []


class _Object:
    _client: Client
    pathspec: str
    id: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.pathspec}')"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.pathspec == self.pathspec

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.pathspec))


class _AsOf:
    """What an object read ``as_of`` a moment knows of it: the moment, which its navigation
    stays at. Objects read without ``as_of`` show the replica's latest views."""

    _moment: Moment | None = None

    @property
    def as_of(self) -> int | datetime | None:
        """The sequence or time the object was read as of (None: the latest views)."""
        moment = self._moment
        if moment is None:
            return None
        return moment.time if moment.time is not None else moment.sequence

    @property
    def as_of_sequence(self) -> int | None:
        """The log sequence the object shows the views after (a time's last sequence by then)."""
        return None if self._moment is None else self._moment.sequence
