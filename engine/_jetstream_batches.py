"""A side stream on JetStream (metric points, log lines): batches appended with a commit id,
read and followed.

A batch's commit id is its ``Nats-Msg-Id``, so a flush retried after a lost
ack (or a server restart) is stored once within the duplicate window.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from runstate.engine._acks import parse_ack
from runstate.engine._batches import BatchReceipt, SideStream
from runstate.engine._commits import Delivery
from runstate.engine._jetstream_follow import JetStreamFollow
from runstate.engine._jetstream_read import read_stream
from runstate.engine._replies import Replies
from runstate.engine._retry import TransientRefusal, retry
from runstate.engine._settings import Settings
from runstate.engine.errors import RunstateError, Unavailable

__all__ = ["JetStreamBatchLog"]

#: bytes a read asks the server for at most in one fetch
_FETCH_BYTES = 16 * 1024 * 1024


class JetStreamBatchLog:
    """Appends batches to one side stream (``<PREFIX>_METRICS``, ``<PREFIX>_LOGS``) and reads
    them back."""

    def __init__(self, nc: NATS, settings: Settings, replies: Replies, side: SideStream) -> None:
        self._nc = nc
        self._settings = settings
        self._replies = replies
        self._js = nc.jetstream(timeout=settings.request_timeout)
        self._side = side
        self.prefix = settings.prefix
        self.stream = side.name

    async def append(self, subject: str, data: bytes, commit_id: str) -> BatchReceipt:
        """Store one batch; transient faults are retried with ``commit_id`` within the
        retry budget, then ``Unavailable`` (the batch may be sent again with its id)."""
        headers = {"Nats-Msg-Id": commit_id}
        what = self._side.what

        async def attempt() -> BatchReceipt:
            try:
                msg = await self._replies.request(
                    subject,
                    data,
                    headers,
                    timeout=self._settings.request_timeout,
                    operation=f"store {what} on {subject}",
                )
            except nats.errors.ConnectionClosedError:
                raise Unavailable(
                    f"the NATS connection closed before {what} batch {commit_id} was "
                    "confirmed; send it again with the same commit id",
                    commit_id=commit_id,
                ) from None
            ack = parse_ack(msg.data)
            if ack.error is None:
                return BatchReceipt(ack.sequence, subject, commit_id, ack.duplicate)
            if ack.transient:
                raise TransientRefusal(f"JetStream refused for now: {ack.error.get('description')}")
            raise RunstateError(
                f"JetStream refused {what} on {subject}: {ack.error.get('description')} "
                f"(code {ack.error.get('err_code')})"
            )

        def give_up(exc: BaseException) -> Unavailable:
            return Unavailable(
                f"could not store {what} on {subject} within "
                f"{self._settings.retry_budget:.0f}s ({exc or type(exc).__name__}); "
                f"send them again with commit id {commit_id}",
                commit_id=commit_id,
            )

        return await retry(
            attempt, budget=self._settings.retry_budget, give_up=give_up, what=f"{what}.append"
        )

    async def last_sequence(self) -> int:
        """The last sequence of the stream (0 when empty)."""
        info = await retry(
            lambda: self._js.stream_info(self.stream),
            budget=self._settings.retry_budget,
            give_up=lambda exc: Unavailable(
                f"could not read the stream {self.stream} ({type(exc).__name__})"
            ),
            what=f"{self._side.what}.stream_info",
        )
        return int(info.state.last_seq)

    async def read(
        self, subject_filter: str | None = None, *, start: int = 1
    ) -> AsyncIterator[Delivery]:
        """Batches matching ``subject_filter`` from ``start`` up to the end of the stream
        when reading began, as ``(sequence, subject, data)``."""
        subject = subject_filter or self._side.subjects

        def give_up(exc: BaseException) -> Unavailable:
            return Unavailable(
                f"could not read {self._side.what} of {subject} ({type(exc).__name__})"
            )

        # a batch may be as large as the server's payload limit: a fetch of 512 of them
        # (hundreds of MB) would not arrive within a request's time
        batch = max(1, min(512, _FETCH_BYTES // max(1, self._nc.max_payload)))
        async for msg in read_stream(
            self._js,
            self._settings,
            self.stream,
            subject,
            start=start,
            limit=None,
            give_up=give_up,
            batch=batch,
        ):
            yield (int(msg.metadata.sequence.stream), msg.subject, msg.data)

    def follow(self, subject_filter: str | None = None, *, start: int = 1) -> JetStreamFollow:
        """A live read of batches from ``start``: see ``Follow``."""
        return JetStreamFollow(
            self._nc,
            self._settings,
            subject_filter or self._side.subjects,
            start,
            stream=self.stream,
        )
