"""What ``runstate server`` serves besides its replica: its record and its control subjects,
and, when it runs in the background as the local runstate (``--detached``), its idle stop.

Once its query service answers and its projector has caught up with the
log, the server marks ``server.json`` ready (clients wait for that), and
answers ``runstate server status`` and ``stop`` over NATS, with the data
directory's token like any client. In the background it asks every few
seconds whether a client is connected (clients subscribe to
``PRESENCE_SUBJECT``; no subscriber is "no responders" at once) and stops
after ``Settings.local_idle_timeout`` seconds without one. It stops holding
``local.lock``, so no client joins a server on its way out, or starts
another on the same store before this one is gone.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime

import anyio
import anyio.abc
import nats.errors
import orjson
from nats.aio.msg import Msg

from runstate.client._client import Client
from runstate.client._local import PRESENCE_SUBJECT, STATUS_SUBJECT, STOP_SUBJECT
from runstate.engine._embedded import local_lock, runstate_version, update_record
from runstate.engine._logging import get_logger
from runstate.projections._replica import Replica

__all__ = ["LocalControl"]

log = get_logger("runstate.server")

#: seconds a server stopped by a signal waits for ``local.lock`` before stopping without it
#: (a client replacing a server that does not answer holds it, and waits for it to go)
_LOCK_WAIT = 2.0
#: seconds the server waits for its projector to catch up before it says it is ready
_CATCH_UP = 30.0


class LocalControl:
    """The record, status and stop of the server of a data directory, and its idle stop.

    ``stop`` ends the server (it cancels what runs it); ``shutdown`` is an
    exit stack that outlives the replica, holding ``local.lock`` while the
    replica stops when the stop should keep clients out.
    """

    def __init__(
        self,
        replica: Replica,
        *,
        detached: bool,
        stop: Callable[[], None],
        shutdown: contextlib.ExitStack,
    ) -> None:
        assert replica.embedded is not None, "a server of its own data directory"
        self.replica = replica
        self.detached = detached
        self.http: str | None = None
        self._stop = stop
        self._shutdown = shutdown
        self._locked = False
        self._started = time.monotonic()
        self._started_at = datetime.now(UTC)
        self._data_dir = replica.settings.data_dir
        self._nats_pid = replica.embedded.pid

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Answer status and stop, mark the record ready, then (detached) stop when idle."""
        nc = self.replica.nc
        await self._caught_up()
        await nc.subscribe(STATUS_SUBJECT, cb=self._on_status)
        await nc.subscribe(STOP_SUBJECT, cb=self._on_stop)
        await nc.flush()
        self._record(
            ready=True,
            detached=self.detached,
            projector=self.replica.projector is not None,
            prefix=self.replica.settings.prefix,
            http=None,
        )
        log.info("server.ready", data_dir=str(self._data_dir), detached=self.detached)
        task_status.started()
        try:
            idle = self.replica.settings.local_idle_timeout
            if self.detached and idle > 0:
                await self._stop_when_idle(idle)
            await anyio.sleep_forever()
        finally:
            if self.detached and not self._locked:
                with anyio.CancelScope(shield=True):
                    await self._lock(_LOCK_WAIT)

    def serving_http(self, url: str) -> None:
        """The HTTP gateway is up at ``url``: say so in the record and the status."""
        self.http = url
        self._record(http=url)

    def _record(self, **fields: object) -> None:
        assert self._nats_pid is not None
        update_record(self._data_dir, self._nats_pid, **fields)

    async def _caught_up(self) -> None:
        projector = self.replica.projector
        if projector is None:
            return
        client = Client.over_nats(self.replica.nc, self.replica.settings)
        last = await client.log.stream_last_sequence()
        with anyio.move_on_after(_CATCH_UP):
            await projector.wait_for(last, timeout=math.inf)

    def status(self) -> dict[str, object]:
        projector = self.replica.projector
        return {
            "pid": os.getpid(),
            "nats_pid": self._nats_pid,
            "url": self.replica.url,
            "http": self.http,
            "data_dir": str(self._data_dir),
            "version": runstate_version(),
            "started_at": self._started_at.isoformat(),
            "uptime": round(time.monotonic() - self._started, 3),
            "applied": projector.applied if projector is not None else None,
            "detached": self.detached,
            "idle_timeout": self.replica.settings.local_idle_timeout if self.detached else None,
        }

    async def _on_status(self, msg: Msg) -> None:
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.respond(orjson.dumps(self.status()))

    async def _on_stop(self, msg: Msg) -> None:
        try:
            asked = orjson.loads(msg.data) if msg.data else {}
        except orjson.JSONDecodeError:
            asked = {}
        log.info("server.stop_requested", data_dir=str(self._data_dir))
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.respond(orjson.dumps({"stopping": True, "pid": os.getpid()}))
        if isinstance(asked, dict) and asked.get("lock_held"):
            self._locked = True  # the one who asked holds it until this server is gone
        self._stop()

    async def _lock(self, wait: float) -> bool:
        """Take ``local.lock`` into the shutdown stack within ``wait`` seconds; whether it did."""
        attempt = contextlib.ExitStack()
        got = await anyio.to_thread.run_sync(
            attempt.enter_context, local_lock(self._data_dir, timeout=wait)
        )
        if not got:
            attempt.close()
            return False
        self._shutdown.enter_context(attempt.pop_all())
        self._locked = True
        return True

    async def _clients_connected(self) -> bool:
        try:
            await self.replica.nc.request(PRESENCE_SUBJECT, b"", timeout=1.0)
        except nats.errors.NoRespondersError:
            return False
        except (nats.errors.Error, OSError):
            return True  # subscribed, but slow to answer: still a client
        return True

    async def _stop_when_idle(self, idle: float) -> None:
        """Return once no client has been connected for ``idle`` seconds, holding the lock."""
        interval = min(max(idle / 4, 0.1), 5.0)
        last_seen = time.monotonic()
        while True:
            await anyio.sleep(interval)
            if await self._clients_connected():
                last_seen = time.monotonic()
                continue
            if time.monotonic() - last_seen < idle:
                continue
            if not await self._lock(0):  # a client is joining
                last_seen = time.monotonic()
                continue
            if await self._clients_connected():  # one joined before the lock was taken
                self._shutdown.close()
                self._locked = False
                last_seen = time.monotonic()
                continue
            log.info("server.idle_stop", data_dir=str(self._data_dir), idle=idle)
            self._stop()
            return
