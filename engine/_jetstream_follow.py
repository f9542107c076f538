"""Following the events stream live, and draining it in bulk.

``JetStreamFollow`` is nats-py's ordered consumer: it re-creates itself
after a gap or a reconnect, and deliveries are handed on in batches, each
sequence once. ``drain`` reads a long stretch as fast as the machine allows:
off a socket of its own (``_wire``) on a plain connection, through nats-py's
ordered consumer otherwise or when the socket fails, from where it got.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from runstate.engine._acks import delivery_sequence
from runstate.engine._commits import Delivery
from runstate.engine._logging import get_logger
from runstate.engine._names import Subjects
from runstate.engine._retry import retry
from runstate.engine._settings import Settings
from runstate.engine._tls_files import client_tls_context
from runstate.engine._wire import Endpoint, WireConsumer, WireError, new_inbox
from runstate.engine.errors import Unavailable

__all__ = ["JetStreamFollow", "drain", "ordered_consumer"]

log = get_logger("runstate.follow")

#: deliveries handed on at most per batch
_BATCH = 5000

#: deliveries held, not yet handed on, at which the consumer is stopped until all but a
#: fifth of them are taken, then resumed after the last one: a catch-up of a long log
#: otherwise held most of the log in memory (0.8 GB for 1,000,000 events), since
#: nats-py answers flow control as soon as it hands a message on
BUFFER_LIMIT = 50_000


async def ordered_consumer(
    nc: NATS,
    subjects: Subjects,
    subject: str,
    start: int,
    on_msg: Callable[[Msg], Awaitable[None]],
    stream: str | None = None,
) -> Any:
    """An ordered push consumer of ``subject`` from stream sequence ``start``
    (of the events stream unless ``stream`` names another)."""
    return await nc.jetstream().subscribe(
        subject,
        cb=on_msg,
        stream=stream or subjects.events_stream,
        ordered_consumer=True,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start),
            idle_heartbeat=1.0,  # a lost consumer is remade after two missed beats
            flow_control=True,
        ),
        pending_msgs_limit=1_000_000,
        pending_bytes_limit=1024 * 1024 * 1024,
    )


async def _stop(
    nc: NATS, subjects: Subjects, sub: Any, settings: Settings, stream: str | None = None
) -> None:
    """Unsubscribe and delete the server's consumer now rather than at its inactivity
    threshold; bounded and shielded, so a lost connection cannot hold the caller."""
    with anyio.CancelScope(shield=True):
        try:
            await sub.unsubscribe()
        except (nats.errors.Error, nats.js.errors.Error):
            pass
        with anyio.move_on_after(settings.request_timeout):
            try:
                await nc.jetstream().delete_consumer(
                    stream or subjects.events_stream, sub._consumer
                )
            except (nats.errors.Error, nats.js.errors.Error, AttributeError):
                pass


class JetStreamFollow:
    """Deliveries of ``subject`` from ``start`` on, in batches, each sequence once."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        subject: str,
        start: int,
        *,
        buffer_limit: int = BUFFER_LIMIT,
        on_delivery: Callable[[Delivery], None] | None = None,
        stream: str | None = None,
    ) -> None:
        self._nc = nc
        #: the stream followed (None: the events stream)
        self._stream = stream
        self._listener = on_delivery
        self._settings = settings
        self._subjects = Subjects(settings.prefix)
        self._subject = subject
        self._start = start
        self._buffer: deque[Delivery] = deque()
        self._arrived = anyio.Event()
        self._buffer_limit = buffer_limit
        # handed on at a time: the hold-back check runs between batches
        self._batch = max(1, min(_BATCH, buffer_limit // 5))
        self._sub: Any = None
        #: the last sequence handed on
        self.delivered = start - 1
        #: times the consumer was stopped because ``buffer_limit`` deliveries were held
        self.pauses = 0

    async def __aenter__(self) -> JetStreamFollow:
        self._sub = await self._subscribe(self._start)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await _stop(self._nc, self._subjects, sub, self._settings, self._stream)
        self._buffer.clear()

    async def _on_msg(self, msg: Msg) -> None:
        if self._listener is not None:
            sequence = delivery_sequence(msg.reply)
            if sequence > self.delivered:  # else delivered again after a consumer reset
                self.delivered = sequence
                self._listener((sequence, msg.subject, msg.data))
            return
        # plain tuples, which the garbage collector stops scanning, unlike nats-py's
        # Msg objects (during a catch-up hundreds of thousands wait here)
        self._buffer.append((delivery_sequence(msg.reply), msg.subject, msg.data))
        if not self._arrived.is_set():
            self._arrived.set()

    async def _subscribe(self, start: int) -> Any:
        return await retry(
            lambda: ordered_consumer(
                self._nc, self._subjects, self._subject, start, self._on_msg, self._stream
            ),
            budget=self._settings.retry_budget,
            give_up=lambda exc: Unavailable(
                f"could not follow {self._subject} from sequence {start} "
                f"({exc or type(exc).__name__}); is the stream available?"
            ),
            transient=(nats.errors.Error, nats.js.errors.Error, TimeoutError),
            first_delay=0.1,
            max_delay=2.0,
            what="follow",
        )

    def __aiter__(self) -> AsyncIterator[list[Delivery]]:
        if self._listener is not None:
            raise RuntimeError("this follow hands its deliveries to on_delivery")
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[Delivery]]:
        buffer = self._buffer
        while True:
            if not buffer:
                self._arrived = anyio.Event()
                if not buffer:
                    await self._arrived.wait()
                continue
            take = buffer.popleft
            last = self.delivered
            batch = []
            for _ in range(min(len(buffer), self._batch)):
                delivery = take()
                if delivery[0] > last:  # else delivered again after a consumer reset
                    batch.append(delivery)
                    last = delivery[0]
            self.delivered = last
            if batch:
                yield batch
            await self._hold_back()

    async def _hold_back(self) -> None:
        """Stop the consumer while ``buffer_limit`` deliveries wait; resume once most are taken.

        Messages still in flight when it stops are dropped by nats-py, so it
        resumes right after the last delivery held.
        """
        if self._sub is not None and len(self._buffer) >= self._buffer_limit:
            sub, self._sub = self._sub, None
            await _stop(self._nc, self._subjects, sub, self._settings, self._stream)
            self.pauses += 1
            log.debug("follow.paused", held=len(self._buffer), delivered=self.delivered)
        elif self._sub is None and len(self._buffer) <= self._buffer_limit // 5:
            resume = self._buffer[-1][0] + 1 if self._buffer else self.delivered + 1
            self._sub = await self._subscribe(resume)


class _Drained(Exception):
    """``deliver`` said it has all it wants."""


async def drain(
    nc: NATS,
    settings: Settings,
    subject: str,
    start: int,
    deliver: Callable[[int, str, bytes], bool],
) -> None:
    """Hand each delivery of ``subject`` from ``start`` to ``deliver`` until it returns True.

    Off a socket of its own where the connection is plain (``deliver`` then
    runs in a worker thread), through nats-py otherwise, and through nats-py
    from where it got if anything fails on the socket.
    """
    subjects = Subjects(settings.prefix)
    whole_stream = subject == subjects.all_events
    position = [start - 1]  # the last sequence delivered

    def hand_on(sequence: int, subject: str, data: bytes) -> bool:
        if sequence <= position[0]:
            return False  # delivered again
        if whole_stream and sequence != position[0] + 1:
            raise WireError(f"sequence {sequence} delivered where {position[0] + 1} was due")
        position[0] = sequence
        return deliver(sequence, subject, data)

    if await _drain_off_the_wire(nc, subjects, subject, position, hand_on, settings):
        return
    await _drain_through_nats_py(nc, subjects, subject, position, hand_on)


async def _drain_off_the_wire(
    nc: NATS,
    subjects: Subjects,
    subject: str,
    position: list[int],
    hand_on: Callable[[int, str, bytes], bool],
    settings: Settings,
) -> bool:
    """Drain from a push consumer read off a socket of our own; False if it failed first.

    It signs in as ``settings`` do: their token (the embedded server's, which the URL
    does not carry), credentials file and TLS files.
    """
    if nc.connected_url is None:
        return False
    endpoint = Endpoint.of(nc.connected_url)
    token = settings.token
    if token is not None and endpoint.token is None and endpoint.user is None:
        endpoint = dataclasses.replace(endpoint, token=token)
    tls = client_tls_context(settings.tls_ca, settings.tls_cert, settings.tls_key)
    endpoint = dataclasses.replace(endpoint, credentials=settings.credentials, tls=tls)
    inbox = new_inbox()
    js = nc.jetstream()
    consumer: str | None = None
    try:
        with WireConsumer(endpoint, inbox) as wire:
            await anyio.to_thread.run_sync(wire.open)
            info = await js.add_consumer(
                subjects.events_stream,
                ConsumerConfig(
                    deliver_subject=inbox,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=position[0] + 1,
                    filter_subject=subject,
                    ack_policy=AckPolicy.NONE,
                    flow_control=True,
                    idle_heartbeat=1.0,
                    mem_storage=True,
                    num_replicas=1,
                    inactive_threshold=30.0,
                ),
            )
            consumer = info.name

            def read() -> None:
                for sequence, delivered_on, data in wire.deliveries():
                    if hand_on(sequence, delivered_on, data):
                        return

            await anyio.to_thread.run_sync(read)
            return True
    except WireError as exc:
        log.warning("drain.wire_failed", error=str(exc), delivered=position[0])
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        log.warning("drain.wire_consumer_failed", error=str(exc), delivered=position[0])
    finally:
        if consumer is not None:
            with (
                anyio.CancelScope(shield=True),
                contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError),
            ):
                await js.delete_consumer(subjects.events_stream, consumer)
    return False


async def _drain_through_nats_py(
    nc: NATS,
    subjects: Subjects,
    subject: str,
    position: list[int],
    hand_on: Callable[[int, str, bytes], bool],
) -> None:
    """Drain through an ordered consumer of nats-py's, from where the drain got."""
    done = anyio.Event()
    failed: list[Exception] = []

    async def on_msg(msg: Msg) -> None:
        if done.is_set():
            return
        try:
            if hand_on(delivery_sequence(msg.reply), msg.subject, msg.data):
                done.set()
        except WireError:
            return  # a gap: the ordered consumer starts over after it
        except Exception as exc:  # the reader stopped reading, or folding failed
            failed.append(exc)
            done.set()

    sub = await ordered_consumer(nc, subjects, subject, position[0] + 1, on_msg)
    try:
        await done.wait()
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    if failed:
        raise failed[0]
