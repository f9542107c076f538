"""Many appends in flight on JetStream, confirmed together."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from nats.aio.msg import Msg

from runstate.engine._acks import Ack, parse_ack
from runstate.engine._commits import Commit, EncodedCommit, Receipt
from runstate.engine._events import Event
from runstate.engine._retry import TRANSIENT, TransientRefusal
from runstate.engine.errors import ConflictError, RunstateError, Unavailable

if TYPE_CHECKING:
    from runstate.engine._jetstream import JetStreamEventLog

__all__ = ["JetStreamPipeline"]


@dataclass(slots=True)
class _Entry:
    encoded: EncodedCommit
    headers: dict[str, str]
    receipt: Receipt | None = None
    error: RunstateError | None = None
    needs_resend: bool = False
    # the server's refusal, until flush tells a real conflict from our own retry
    ack: Ack | None = None


class JetStreamPipeline:
    """Many appends in flight at once, confirmed together by ``flush``.

    ``append`` returns as soon as the commit is sent (waiting only when
    ``max_in_flight`` commits await their acks); ``flush`` waits for every
    ack and returns the receipts in append order. A commit whose ack does not
    come is re-sent with its commit id through the log's own retry. Errors
    (conflicts, refusals) are raised by ``flush`` as the first one met;
    every other commit's outcome is in ``results``.
    """

    def __init__(self, log: JetStreamEventLog, max_in_flight: int) -> None:
        self._log = log
        self._nc = log.nc
        self._max_in_flight = max_in_flight
        self._room = anyio.Event()
        self._room.set()
        self._tokens = itertools.count()
        self._inbox = ""
        self._sub: Any = None
        self._entries: list[_Entry] = []
        # the entries of the last flush, so ``results`` still has them after it raised
        self._flushed: list[_Entry] = []
        self._waiting: dict[str, _Entry] = {}
        self._all_done = anyio.Event()
        self._all_done.set()

    async def __aenter__(self) -> JetStreamPipeline:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox + ".*", cb=self._on_reply)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                await self.flush()
        finally:
            if self._sub is not None:
                await self._sub.unsubscribe()
                self._sub = None

    async def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
        across_run: bool = False,
        commit_id: str | None = None,
    ) -> None:
        """Send one commit without waiting for its ack; see ``EventLog.append``."""
        await self.append_commit(Commit.of(events, expected_version, across_run, commit_id))

    async def append_commit(self, commit: Commit) -> None:
        if self._sub is None:
            raise RuntimeError("use the pipeline as 'async with log.pipeline() as p:'")
        encoded = self._log.encode(commit)
        while len(self._waiting) >= self._max_in_flight:
            self._room = anyio.Event()
            with anyio.move_on_after(self._log.settings.request_timeout) as waited:
                await self._room.wait()
            if waited.cancelled_caught:
                # acks lost with a crashed server never come: re-send those commits
                await self._resend_unconfirmed()
        token = str(next(self._tokens))
        entry = _Entry(encoded, self._log.headers(encoded))
        self._entries.append(entry)
        self._waiting[token] = entry
        if self._all_done.is_set():
            self._all_done = anyio.Event()
        try:
            await self._nc.publish(
                encoded.subject, encoded.data, reply=f"{self._inbox}.{token}", headers=entry.headers
            )
        except TRANSIENT:
            pass  # flush re-sends it

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        entry = self._waiting.pop(token, None)
        if entry is None:
            return
        if not self._room.is_set():
            self._room.set()
        if not msg.data:  # a status message (no responders): re-sent by flush
            entry.needs_resend = True
        else:
            ack = parse_ack(msg.data)
            if ack.error is None:
                commit = entry.encoded.commit
                entry.receipt = Receipt(
                    ack.sequence,
                    entry.encoded.subject,
                    commit.commit_id,
                    len(commit.events),
                    ack.duplicate,
                )
            elif ack.conflict:
                entry.ack = ack  # settled by flush: it may be this commit's own retry
            else:
                entry.needs_resend = True
        if not self._waiting:
            self._all_done.set()

    @property
    def results(self) -> list[Receipt | RunstateError | None]:
        """The outcome of each commit of the last flush and of those sent since, in order."""
        return [entry.receipt or entry.error for entry in (*self._flushed, *self._entries)]

    async def flush(self) -> list[Receipt]:
        """Wait for every commit sent so far; return their receipts in order.

        Raises the first ``ConflictError`` met (every other outcome is in
        ``results``), or ``Unavailable`` when NATS stays out of reach for the
        retry budget: the unconfirmed commits are kept, and calling ``flush``
        again re-sends them with their commit ids.
        """
        with anyio.move_on_after(self._log.settings.request_timeout):
            await self._all_done.wait()
        for entry in self._entries:
            if entry.ack is not None:
                ack, entry.ack = entry.ack, None
                try:
                    entry.receipt = await self._log.receipt(entry.encoded, ack)
                except ConflictError as exc:
                    entry.error = exc
                except TransientRefusal:  # undecided: sent again below
                    entry.needs_resend = True
        await self._resend_unconfirmed()
        entries, self._entries = self._entries, []
        self._flushed = entries
        for entry in entries:
            if entry.error is not None:
                raise entry.error
        return [entry.receipt for entry in entries if entry.receipt is not None]

    async def _resend_unconfirmed(self) -> None:
        """Re-send, one by one with their commit ids, the commits whose ack has not come.

        Raises ``Unavailable`` naming every unconfirmed commit when NATS stays
        out of reach for the retry budget.
        """
        for token, entry in list(self._waiting.items()):
            self._waiting.pop(token, None)
            entry.needs_resend = True
        self._all_done.set()
        self._room.set()
        for entry in self._entries:
            if entry.needs_resend and entry.receipt is None and entry.error is None:
                try:
                    entry.receipt = await self._log.send(entry.encoded)
                except ConflictError as exc:
                    entry.error = exc
                except Unavailable as exc:
                    unconfirmed = [
                        e.encoded.commit.commit_id
                        for e in self._entries
                        if e.receipt is None and e.error is None
                    ]
                    raise Unavailable(
                        f"{len(unconfirmed)} pipelined commits are unconfirmed ({exc.message}); "
                        "nothing is lost: call flush() again to re-send them with the same "
                        "commit ids",
                        commit_ids=unconfirmed,
                    ) from None
