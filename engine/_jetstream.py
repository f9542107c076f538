"""The event log on NATS JetStream: commits as messages, versions as subject sequences.

Every append may name the version it expects, the stream sequence of the
entity's last commit (0 for "no commit yet"); a mismatch is a
``ConflictError`` carrying the current version. The commit's id is its
``Nats-Msg-Id`` so a retried append is stored once.

nats-server checks the expected sequence *before* de-duplication, so a retry
whose first try was stored (but whose ack was lost) comes back as a conflict
at a sequence that holds our own commit; ``ConflictSettler`` (``_jetstream_conflicts``)
recognises that case, and the others that are not conflicts, and returns the
original receipt instead of a conflict.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from runstate.engine._acks import Ack, conflict_sequence, header, parse_ack
from runstate.engine._commits import (
    Commit,
    CommitEncoder,
    Delivery,
    EncodedCommit,
    Receipt,
    StoredCommit,
    check_atomic_size,
    check_read_time,
    new_commit_id,
)
from runstate.engine._events import Event, decode_commit
from runstate.engine._foreign import KeyCheck, held_or_replaced, is_commit_of
from runstate.engine._jetstream_batches import JetStreamBatchLog
from runstate.engine._jetstream_blobs import JetStreamBlobStore
from runstate.engine._jetstream_conflicts import ConflictSettler
from runstate.engine._jetstream_follow import BUFFER_LIMIT, JetStreamFollow, drain
from runstate.engine._jetstream_pipeline import JetStreamPipeline
from runstate.engine._jetstream_read import read_stream, rfc3339_ns
from runstate.engine._lines import lines_side
from runstate.engine._names import Subjects
from runstate.engine._points import points_side
from runstate.engine._refusals import refusable
from runstate.engine._replies import Replies
from runstate.engine._retry import TRANSIENT, TransientRefusal, retry, transient_api_error
from runstate.engine._settings import Settings
from runstate.engine.errors import ConflictError, InvalidEvent, RunstateError, Unavailable

__all__ = ["JetStreamEventLog"]

# "atomic publish batch contains duplicate message id"
_BATCH_DUPLICATE_CODE = 10201
_HEADER_OVERHEAD = 512
_NOT_FOUND_OR_TRANSIENT: tuple[type[BaseException], ...] = (
    nats.js.errors.NotFoundError,
    *TRANSIENT,
)
_PUBLISH_FAULTS: tuple[type[BaseException], ...] = (nats.errors.Error, *TRANSIENT)


class JetStreamEventLog:
    """Appends commits to the events stream and reads them back.

    One per NATS connection; safe to share between tasks.
    """

    def __init__(self, nc: NATS, settings: Settings) -> None:
        self._nc = nc
        self.settings = settings
        self.subjects = Subjects(settings.prefix)
        self._stream = self.subjects.events_stream
        self._js = nc.jetstream(timeout=settings.request_timeout)
        self._encoder = CommitEncoder(self.subjects)
        self._replies = Replies(nc)
        self._blobs = JetStreamBlobStore(nc, settings)
        self._points = JetStreamBatchLog(nc, settings, self._replies, points_side(settings.prefix))
        self._lines = JetStreamBatchLog(nc, settings, self._replies, lines_side(settings.prefix))
        self._kv: Any = None
        self._conflicts = ConflictSettler(self._js, self._stream, settings, self.subjects)

    @property
    def nc(self) -> NATS:
        return self._nc

    @property
    def blobs(self) -> JetStreamBlobStore:
        return self._blobs

    @property
    def points(self) -> JetStreamBatchLog:
        """The metric points stream, beside the commits."""
        return self._points

    @property
    def lines(self) -> JetStreamBatchLog:
        """The task log lines stream, beside the commits."""
        return self._lines

    @property
    def max_payload(self) -> int:
        return self._nc.max_payload - _HEADER_OVERHEAD

    def encode(self, commit: Commit) -> EncodedCommit:
        """Check and encode a commit for this log (its payload limit)."""
        return self._encoder.encode(commit, self.max_payload)

    def headers(self, encoded: EncodedCommit) -> dict[str, str]:
        """The headers that carry a commit's id and expected version."""
        commit = encoded.commit
        headers = {"Nats-Msg-Id": commit.commit_id}
        if commit.expected_version is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(commit.expected_version)
            if commit.across_run:
                path = encoded.path
                assert path.run is not None
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = self.subjects.run_all(
                    path.flow, path.run
                )
        return headers

    # -- append ------------------------------------------------------------

    async def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
        across_run: bool = False,
        commit_id: str | None = None,
    ) -> Receipt:
        """Append one commit and wait for JetStream to store it.

        Transient faults are retried with the same commit id for
        ``settings.retry_budget`` seconds. Raises ``ConflictError``,
        ``PayloadTooLarge``, ``InvalidEvent`` or ``Unavailable``.
        """
        return await self.send(
            self.encode(Commit.of(events, expected_version, across_run, commit_id))
        )

    async def append_commit(self, commit: Commit) -> Receipt:
        """Append a prepared ``Commit``; see ``append``."""
        return await self.send(self.encode(commit))

    async def send(self, encoded: EncodedCommit) -> Receipt:
        """Store an encoded commit, retrying transient faults with its commit id."""
        headers = self.headers(encoded)
        commit = encoded.commit

        async def attempt() -> Receipt:
            try:
                msg = await self._replies.request(
                    encoded.subject,
                    encoded.data,
                    headers,
                    timeout=self.settings.request_timeout,
                    operation=f"append to {encoded.entity}",
                )
            except nats.errors.ConnectionClosedError:
                # the request may have reached the server before the close
                raise Unavailable(
                    f"the NATS connection closed before {encoded.entity} was confirmed; nothing "
                    f"is lost: retry with commit id {commit.commit_id} on a new connection",
                    commit_id=commit.commit_id,
                ) from None
            return await self.receipt(encoded, parse_ack(msg.data))

        def give_up(exc: BaseException) -> Unavailable:
            return Unavailable(
                f"could not append to {encoded.entity} within "
                f"{self.settings.retry_budget:.0f}s ({exc or type(exc).__name__}); nothing is "
                f"lost: retry with commit id {commit.commit_id}",
                commit_id=commit.commit_id,
            )

        return await retry(
            attempt, budget=self.settings.retry_budget, give_up=give_up, what="append"
        )

    async def receipt(self, encoded: EncodedCommit, ack: Ack) -> Receipt:
        """The receipt an ack stands for; ``ConflictError``, ``TransientRefusal`` or a refusal."""
        commit = encoded.commit
        if ack.error is None:
            return Receipt(
                ack.sequence, encoded.subject, commit.commit_id, len(commit.events), ack.duplicate
            )
        if ack.conflict:
            return await self._conflicts.settle(encoded, ack.error, self.send)
        if ack.transient:
            raise TransientRefusal(f"JetStream refused for now: {ack.error.get('description')}")
        raise RunstateError(
            f"JetStream refused the append to {encoded.entity}: {ack.error.get('description')} "
            f"(code {ack.error.get('err_code')})"
        )

    def pipeline(self, max_in_flight: int = 2048) -> JetStreamPipeline:
        """Many appends in flight, confirmed together by ``flush``."""
        return JetStreamPipeline(self, max_in_flight)

    async def append_atomic(self, commits: Sequence[Commit]) -> list[Receipt]:
        """Append commits of several entities as one JetStream atomic batch: all or none.

        Each commit keeps its own expected version; if any check fails nothing
        is stored and ``ConflictError`` is raised. At most 1000 commits.
        """
        if not commits:
            return []
        check_atomic_size(commits)
        encoded = [self.encode(commit) for commit in commits]

        async def attempt() -> list[Receipt]:
            ack = parse_ack(await self._publish_batch(new_commit_id(), encoded))
            if ack.error is None:
                first = ack.sequence - len(commits) + 1
                return [
                    Receipt(first + i, enc.subject, enc.commit.commit_id, len(enc.commit.events))
                    for i, enc in enumerate(encoded)
                ]
            code = ack.error.get("err_code")
            if ack.conflict or code == _BATCH_DUPLICATE_CODE:
                # A retry (ours, or the caller's after Unavailable) whose first try was
                # stored: within the duplicate window the server refuses the batch for its
                # commit ids (10201), after it for the expected versions (10071).
                stored = await self._find_stored_batch(encoded)
                if stored is not None:
                    return stored
                if ack.in_flight:
                    raise TransientRefusal(f"{ack.error.get('description')}")
                if code == _BATCH_DUPLICATE_CODE:
                    raise RunstateError(
                        "JetStream refused the atomic batch: some of its commit ids are already "
                        "stored, but not as this batch; give new commits new ids"
                    )
                raise ConflictError("atomic batch", -1, conflict_sequence(ack.error))
            if ack.transient:
                raise TransientRefusal(f"{ack.error.get('description')}")
            raise RunstateError(
                f"JetStream refused the atomic batch: {ack.error.get('description')} (code {code})"
            )

        def give_up(exc: BaseException) -> Unavailable:
            return Unavailable(
                "could not append an atomic batch within the retry budget "
                f"({exc or type(exc).__name__}); retry with the same commits (commit ids)"
            )

        subjects = [enc.subject for enc in encoded]
        with refusable(self._nc, f"append an atomic batch to {encoded[0].entity}", *subjects):
            return await retry(
                attempt, budget=self.settings.retry_budget, give_up=give_up, what="append_atomic"
            )

    async def _publish_batch(self, batch_id: str, encoded: list[EncodedCommit]) -> bytes:
        last = len(encoded)
        for index, enc in enumerate(encoded[:-1], start=1):
            await self._nc.publish(
                enc.subject,
                enc.data,
                headers={
                    **self.headers(enc),
                    "Nats-Batch-Id": batch_id,
                    "Nats-Batch-Sequence": str(index),
                },
            )
        enc = encoded[-1]
        msg = await self._nc.request(
            enc.subject,
            enc.data,
            timeout=self.settings.request_timeout,
            headers={
                **self.headers(enc),
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(last),
                "Nats-Batch-Commit": "1",
            },
        )
        data: bytes = msg.data
        return data

    async def _find_stored_batch(self, encoded: list[EncodedCommit]) -> list[Receipt] | None:
        try:
            msg = await self._js.get_last_msg(self._stream, encoded[-1].subject)
        except _NOT_FOUND_OR_TRANSIENT:
            return None
        if header(msg, "Nats-Msg-Id") != encoded[-1].commit.commit_id:
            return None
        first = int(msg.seq or 0) - len(encoded) + 1
        return [
            Receipt(first + i, enc.subject, enc.commit.commit_id, len(enc.commit.events), True)
            for i, enc in enumerate(encoded)
        ]

    # -- counters, keys, heartbeats, dead letters -----------------------------

    async def increment(self, subject: str, by: int = 1) -> int:
        """Atomically add ``by`` to a JetStream counter subject and return the new value."""
        msg_id = new_commit_id()

        async def attempt() -> int:
            msg = await self._nc.request(
                subject,
                b"",
                timeout=self.settings.request_timeout,
                headers={"Nats-Incr": f"+{by}", "Nats-Msg-Id": msg_id},
            )
            reply = orjson.loads(msg.data)
            error = reply.get("error")
            if error is not None:
                if transient_api_error(error):
                    raise TransientRefusal(str(error.get("description")))
                raise RunstateError(f"counter {subject} refused: {error.get('description')}")
            if "val" not in reply:
                # a duplicate: the counter's value at that message, from the leader
                stored = await self._js.get_msg(
                    self.subjects.counters_stream, seq=int(reply["seq"])
                )
                return int(orjson.loads(stored.data or b"{}")["val"])
            return int(reply["val"])

        with refusable(self._nc, f"increment the counter {subject}", subject):
            return await retry(
                attempt,
                budget=self.settings.retry_budget,
                give_up=lambda exc: Unavailable(
                    f"could not increment {subject} within the retry budget ({exc})"
                ),
                what="increment",
            )

    async def _key_value(self) -> Any:
        if self._kv is None:
            self._kv = await self._js.key_value(self.subjects.idempotency_bucket)
        return self._kv

    @staticmethod
    def _key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    async def read_key(self, key: str, *, valid: KeyCheck | None = None) -> bytes | None:
        async def attempt() -> bytes | None:
            kv = await self._key_value()
            try:
                entry = await kv.get(self._key(key))
            except nats.js.errors.KeyNotFoundError:
                return None
            ok = entry.value and (valid is None or valid(entry.value))
            return bytes(entry.value) if ok else None  # not valid: junk, claim_key replaces it

        return await retry(
            attempt,
            budget=self.settings.retry_budget,
            give_up=lambda exc: Unavailable(
                f"could not read key {key!r} within {self.settings.retry_budget:.0f}s "
                f"({type(exc).__name__}); nothing was written: try again"
            ),
            what="read_key",
        )

    async def claim_key(self, key: str, value: bytes, *, valid: KeyCheck | None = None) -> bytes:
        async def attempt() -> bytes:
            kv = await self._key_value()
            try:
                await kv.create(self._key(key), value)
                return value
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            except nats.js.errors.APIError as exc:
                if exc.err_code != 10071:
                    if exc.err_code is not None and transient_api_error(
                        {"err_code": exc.err_code, "code": exc.code}
                    ):
                        raise TransientRefusal(str(exc.description)) from None
                    raise RunstateError(f"key {key!r} refused: {exc.description}") from None
            return await held_or_replaced(kv, self._key(key), value, valid)

        keys = f"$KV.{self.subjects.idempotency_bucket}.>"
        with refusable(self._nc, f"claim the idempotency key {key!r}", keys, "$JS.API.>"):
            return await retry(
                attempt,
                budget=self.settings.retry_budget,
                give_up=lambda exc: Unavailable(
                    f"could not claim key {key!r} within {self.settings.retry_budget:.0f}s "
                    f"({type(exc).__name__}); retry with the same key"
                ),
                what="claim_key",
            )

    async def beat(self, subject: str, data: bytes) -> None:
        try:
            await self._nc.publish(subject, data)
        except _PUBLISH_FAULTS as exc:
            raise Unavailable(f"could not publish a heartbeat on {subject}: {exc}") from None

    async def publish_deadletter(
        self, sequence: int, subject: str, reason: str, data: bytes
    ) -> None:
        try:
            await self._nc.publish(
                self.subjects.deadletter(sequence),
                data,
                headers={
                    "Nats-Msg-Id": f"dlq-{sequence}",
                    "Runstate-Reason": reason[:1000],
                    "Runstate-Subject": subject,
                },
            )
        except nats.errors.Error:  # the read store keeps it; the subject is a courtesy
            pass

    # -- reading -----------------------------------------------------------

    async def last_sequence(self, subject: str) -> int:
        """The sequence of the last commit on a subject or a subject filter, 0 if none.

        Asked of the stream leader: on a cluster a direct get may be answered
        by a replica that has not stored an acknowledged commit yet, and a
        read ``as_of`` that commit would then stop short of it.
        """

        async def attempt() -> int:
            try:
                msg = await self._js.get_last_msg(self._stream, subject)
            except nats.js.errors.NotFoundError:
                return 0
            return int(msg.seq or 0)

        return await retry(
            attempt,
            budget=self.settings.retry_budget,
            give_up=lambda exc: Unavailable(
                f"could not read the version of {subject} ({type(exc).__name__})"
            ),
            what="last_sequence",
        )

    async def sequence_at(self, when: datetime) -> int:
        """The last sequence stored at ``when`` by the server's clock (0 if none).

        The stream's last sequence is read first, then the first message
        stored after ``when`` is asked of the stream leader: its sequence less
        one, since the events stream has no gaps. If there is none, every
        message stored by then was stored at or before ``when``, the last
        sequence first read included; a message stored since, after it, is
        later than ``when`` if ``when`` is past.
        """
        last = await self.stream_last_sequence()
        after = rfc3339_ns(check_read_time(when), plus_ns=1)
        request = orjson.dumps({"start_time": after})
        subject = f"{self._js._prefix}.STREAM.MSG.GET.{self._stream}"

        async def attempt() -> int:
            msg = await self._nc.request(subject, request, timeout=self.settings.request_timeout)
            reply = orjson.loads(msg.data)
            error = reply.get("error")
            if error is None:
                return int(reply["message"]["seq"]) - 1
            if error.get("code") == 404:
                return last
            if transient_api_error(error):
                raise TransientRefusal(str(error.get("description")))
            raise RunstateError(f"the stream refused a read by time: {error.get('description')}")

        return await retry(
            attempt,
            budget=self.settings.retry_budget,
            give_up=lambda exc: Unavailable(
                f"could not find the log's sequence at {when.isoformat()} ({type(exc).__name__})"
            ),
            what="sequence_at",
        )

    async def _stream_info(self) -> Any:
        return await retry(
            lambda: self._js.stream_info(self._stream),
            budget=self.settings.retry_budget,
            give_up=lambda exc: Unavailable(
                f"could not read the stream {self._stream} ({type(exc).__name__})"
            ),
            what="stream_info",
        )

    async def stream_last_sequence(self) -> int:
        """The last sequence of the events stream (0 when empty)."""
        return int((await self._stream_info()).state.last_seq)

    async def stream_identity(self) -> int:
        """The stream's creation time in microseconds: it changes when it is made again."""
        created = (await self._stream_info()).created
        return int(created.timestamp() * 1_000_000) if created is not None else 0

    async def read(
        self,
        subject_filter: str | None = None,
        *,
        start: int = 1,
        limit: int | None = None,
        batch: int = 512,
    ) -> AsyncIterator[StoredCommit]:
        """Yield stored commits matching ``subject_filter`` from sequence ``start``, oldest first.

        Stops at the end of the log as it was when reading began. Commits
        that cannot be decoded raise ``InvalidEvent`` naming their sequence.
        """
        subject = subject_filter or self.subjects.all_events

        def give_up(exc: BaseException) -> Unavailable:
            return Unavailable(
                f"could not read {subject_filter or 'the log'} within "
                f"{self.settings.retry_budget:.0f}s; is the stream available?"
            )

        async for msg in read_stream(
            self._js,
            self.settings,
            self._stream,
            subject,
            start=start,
            limit=limit,
            give_up=give_up,
            batch=batch,
        ):
            yield self._stored(msg)

    def _stored(self, msg: Msg) -> StoredCommit:
        seq = int(msg.metadata.sequence.stream)
        try:
            events = decode_commit(msg.data)
        except InvalidEvent as exc:
            raise InvalidEvent(
                f"commit at sequence {seq} on {msg.subject}: {exc.message}"
            ) from None
        return StoredCommit(seq, msg.subject, events, header(msg, "Nats-Msg-Id"))

    async def read_entity(self, subject: str) -> list[StoredCommit]:
        """All commits of one entity subject (a run header or a task), oldest first."""
        if await self.last_sequence(subject) == 0:
            return []
        msgs = read_stream(
            self._js, self.settings, self._stream, subject, start=1, limit=None, give_up=_lost
        )
        # a message that is no commit of the entity is someone else's junk, not its history
        return [
            self._stored(m) async for m in msgs if is_commit_of(self.subjects, m.subject, m.data)
        ]

    def follow(
        self,
        subject_filter: str | None = None,
        *,
        start: int = 1,
        buffer_limit: int | None = None,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> JetStreamFollow:
        """A live read from ``start``: an ordered consumer that resumes after reconnects."""
        return JetStreamFollow(
            self._nc,
            self.settings,
            subject_filter or self.subjects.all_events,
            start,
            buffer_limit=buffer_limit or BUFFER_LIMIT,
            on_delivery=on_delivery,
        )

    async def drain(
        self,
        deliver: Callable[[int, str, bytes], bool],
        *,
        start: int,
        subject_filter: str | None = None,
    ) -> None:
        """A bulk read from ``start`` until ``deliver`` returns True; see ``drain``."""
        await drain(
            self._nc, self.settings, subject_filter or self.subjects.all_events, start, deliver
        )


def _lost(exc: BaseException) -> Unavailable:
    return Unavailable(f"could not read an entity's commits ({type(exc).__name__})")
