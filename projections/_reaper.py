"""The heartbeat reaper: a running task or run that stopped heartbeating is marked crashed.

Only entities that have heartbeated at least once are watched (a worker
that never heartbeats cannot be told apart from a slow one). Ages use the
JetStream server's timestamps, not worker clocks.

The crash is appended with optimistic concurrency at the version the reaper
read from the log, so a real transition that lands first wins and the crash
is dropped. Its commit id is derived from (pathspec, attempt), so several
replicas reaping the same attempt store one crash event between them.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from runstate.engine._events import (
    RunStateChanged,
    RunStateChangedPayload,
    TaskAttemptStateChanged,
    TaskAttemptStatePayload,
)
from runstate.engine._logging import get_logger
from runstate.engine._names import Subjects, parse_pathspec
from runstate.engine._states import RunState, TaskState
from runstate.engine._worker import Writer
from runstate.engine.errors import ConflictError, NotFound, RunstateError

__all__ = ["Reaper"]

log = get_logger("runstate.reaper")


def crash_commit_id(pathspec: str, attempt: int | None) -> str:
    return "crash-" + hashlib.sha256(f"{pathspec}\0{attempt}".encode()).hexdigest()[:40]


class Reaper:
    """Watches heartbeats and appends ``crashed`` for running entities gone silent."""

    def __init__(
        self, nc: NATS, writer: Writer, *, timeout: float, interval: float | None = None
    ) -> None:
        self._nc = nc
        self._writer = writer
        self._subjects = Subjects(writer.log.settings.prefix)
        self.timeout = timeout
        self.interval = interval if interval is not None else max(0.1, timeout / 4)
        #: pathspec -> server time (seconds) of its latest heartbeat
        self._beats: dict[str, float] = {}
        self.crashed: list[str] = []

    async def run(self) -> None:
        """Track heartbeats and reap until cancelled."""
        sub = await self._subscribe()
        try:
            while True:
                await anyio.sleep(self.interval)
                await self.reap_once()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await sub.unsubscribe()
                except (nats.errors.Error, nats.js.errors.Error):
                    pass

    async def _subscribe(self) -> Any:
        js = self._nc.jetstream()

        async def on_beat(msg: Msg) -> None:
            try:
                pathspec = _heartbeat_pathspec(msg.subject, self._subjects.prefix)
                stamp = msg.metadata.timestamp.timestamp()
            except (ValueError, AttributeError, IndexError):
                return
            if stamp > self._beats.get(pathspec, 0.0):
                self._beats[pathspec] = stamp

        return await js.subscribe(
            self._subjects.all_heartbeats,
            cb=on_beat,
            stream=self._subjects.heartbeats_stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
        )

    async def reap_once(self, now: float | None = None) -> list[str]:
        """Crash every watched entity silent for longer than ``timeout``; return their pathspecs."""
        now = time.time() if now is None else now
        reaped = []
        for pathspec, beat in list(self._beats.items()):
            if now - beat <= self.timeout:
                continue
            try:
                done = await self._reap(pathspec, now - beat)
            except RunstateError as exc:
                log.warning("reaper.failed", pathspec=pathspec, error=exc.message)
                continue
            if done is not None:
                reaped.append(pathspec)
            # Finished or just crashed: nothing to watch until it beats again.
            self._beats.pop(pathspec, None)
        self.crashed.extend(reaped)
        return reaped

    async def _reap(self, pathspec: str, silent_for: float) -> str | None:
        path = parse_pathspec(pathspec, min_depth=2, max_depth=4)
        message = f"no heartbeat for {silent_for:.0f}s; the worker is presumed dead"
        try:
            if path.task is not None:
                task = await self._writer.task(pathspec)
                # Only a running attempt heartbeats; a pending one (say, awaiting its
                # retry) has nothing to be silent about.
                if task.state is not TaskState.RUNNING:
                    return None
                event: Any = TaskAttemptStateChanged(
                    pathspec=pathspec,
                    attempt=task.attempt,
                    actor="reaper",
                    payload=TaskAttemptStatePayload(
                        state=TaskState.CRASHED, label="Crashed", message=message
                    ),
                )
                version, attempt = task.version, task.attempt
            else:
                run = await self._writer.run(pathspec)
                if run.state not in (RunState.RUNNING, RunState.CANCELLING):
                    return None
                event = RunStateChanged(
                    pathspec=pathspec,
                    actor="reaper",
                    payload=RunStateChangedPayload(
                        state=RunState.CRASHED, label="Crashed", message=message
                    ),
                )
                version, attempt = run.version, None
        except NotFound:
            return None
        try:
            receipt = await self._writer.log.append(
                event, expected_version=version, commit_id=crash_commit_id(pathspec, attempt)
            )
        except ConflictError:
            log.info("reaper.lost_race", pathspec=pathspec)
            return None
        if not receipt.duplicate:
            log.warning("reaper.crashed", pathspec=pathspec, silent_for=round(silent_for, 1))
        return pathspec


def _heartbeat_pathspec(subject: str, prefix: str) -> str:
    # <prefix>.hb.<flow>.<run>.r  |  <prefix>.hb.<flow>.<run>.t.<step>.<task>
    tail = subject[len(prefix) + 4 :].split(".")
    if len(tail) == 3 and tail[2] == "r":
        return f"{tail[0]}/{tail[1]}"
    if len(tail) == 5 and tail[2] == "t":
        return f"{tail[0]}/{tail[1]}/{tail[3]}/{tail[4]}"
    raise ValueError(subject)
