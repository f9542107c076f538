"""Blobs in a JetStream object store."""

from __future__ import annotations

from typing import Any

import nats.js.errors
from nats.aio.client import Client as NATS

from runstate.engine._names import Subjects
from runstate.engine._refusals import refusable
from runstate.engine._retry import retry
from runstate.engine._settings import Settings
from runstate.engine.errors import NotFound, Unavailable

__all__ = ["JetStreamBlobStore"]


class JetStreamBlobStore:
    """Blobs in the ``<prefix>_blobs`` JetStream object store, named by their sha256."""

    def __init__(self, nc: NATS, settings: Settings) -> None:
        self._nc = nc
        self._settings = settings
        self._bucket = Subjects(settings.prefix).blobs_bucket
        self._store: Any = None

    async def _object_store(self) -> Any:
        if self._store is None:
            self._store = await self._nc.jetstream().object_store(self._bucket)
        return self._store

    async def put(self, name: str, data: bytes) -> None:
        async def attempt() -> None:
            store = await self._object_store()
            try:
                await store.get_info(name)
            except nats.js.errors.ObjectNotFoundError:
                await store.put(name, data)

        with refusable(self._nc, f"store blob {name}", "$JS.API.>", f"$O.{self._bucket}.>"):
            await retry(
                attempt,
                budget=self._settings.retry_budget,
                give_up=lambda exc: Unavailable(
                    f"could not store blob {name} in {self._bucket} ({type(exc).__name__})"
                ),
                what="blob.put",
            )

    async def get(self, name: str) -> bytes:
        async def attempt() -> bytes:
            store = await self._object_store()
            try:
                result = await store.get(name)
            except nats.js.errors.ObjectNotFoundError:
                raise NotFound(f"blob {name} is missing from {self._bucket}") from None
            data: bytes = result.data
            return data

        with refusable(self._nc, f"read blob {name}", "$JS.API.>", f"$O.{self._bucket}.>"):
            return await retry(
                attempt,
                budget=self._settings.retry_budget,
                give_up=lambda exc: Unavailable(
                    f"could not read blob {name} from {self._bucket} ({type(exc).__name__})"
                ),
                what="blob.get",
            )
