"""What a refused conditional append on JetStream really means.

JetStream refuses an append whose expected version is not the subject's last
sequence. That refusal is not always a conflict:

- the server checks the expected version before it de-duplicates, so a retry
  (ours, or the caller's after ``Unavailable``) whose first try was stored
  meets a conflict with itself: its receipt is the original one;
- on a cluster, a stream leader refuses without comparing anything while
  another conditional write to the subject is in flight (10164, "wrong last
  sequence" with no number), and clears that mark only after acknowledging
  that write: a writer's very next append to an entity can meet it. Nothing
  is decided, so the append is asked again;
- only junk (no commit of the entity) may have come after the expected
  version (``engine/_foreign.py``): the append steps over it.

Everything else is a ``ConflictError``. Every read here goes to the stream
leader: a direct get may be answered by a replica that has not stored the
message yet.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import nats.js.errors
from nats.js.api import RawStreamMsg
from nats.js.client import JetStreamContext

from runstate.engine._acks import conflict_sequence, header
from runstate.engine._commits import EncodedCommit, Receipt
from runstate.engine._foreign import Found, past_foreign
from runstate.engine._names import Subjects
from runstate.engine._retry import TransientRefusal, retry
from runstate.engine._settings import Settings
from runstate.engine.errors import ConflictError, Unavailable

__all__ = ["ConflictSettler"]


class ConflictSettler:
    """Settles the conflicts of one events stream's appends."""

    def __init__(
        self, js: JetStreamContext, stream: str, settings: Settings, subjects: Subjects
    ) -> None:
        self._js = js
        self._stream = stream
        self._settings = settings
        self._subjects = subjects

    async def settle(
        self,
        encoded: EncodedCommit,
        error: dict[str, Any],
        send: Callable[[EncodedCommit], Awaitable[Receipt]],
    ) -> Receipt:
        """The receipt of ``encoded`` if it is stored already; ``send``'s receipt for it
        stepped over junk; ``TransientRefusal`` if the refusal decided nothing; else
        ``ConflictError``."""
        commit = encoded.commit
        current = conflict_sequence(error)
        if current < 0:
            # The form without the sequence (10164): what matters is the checked
            # subject's last commit, so read it.
            checked = encoded.subject
            if commit.across_run and encoded.path.run is not None:
                checked = self._subjects.run_all(encoded.path.flow, encoded.path.run)
            current, last_id = await self._last_commit(checked, commit.commit_id)
            ours = last_id == commit.commit_id
            if not ours and current <= (commit.expected_version or 0):
                # Not past the version this commit expects: the write in flight was the
                # one that made that version (often the caller's own, acknowledged a moment
                # ago) or one that has not landed yet. Nothing is decided: ask again.
                raise TransientRefusal(f"another write to {encoded.entity} was in flight")
        else:
            ours = await self._holds_commit(current, commit.commit_id)
        if ours:
            return Receipt(current, encoded.subject, commit.commit_id, len(commit.events), True)
        moved = await past_foreign(self._subjects, encoded, self._next_after)
        if moved is not None:  # only junk came after the version it expected: step over it
            return await send(moved)
        raise ConflictError(encoded.entity, commit.expected_version or 0, current)

    async def _next_after(self, commit_id: str, where: str, seq: int) -> Found:
        msg = await self._leader_get(commit_id, after=seq, subject=where)
        return None if msg is None else (int(msg.seq or 0), msg.subject or "", msg.data or b"")

    async def _leader_get(self, commit_id: str, **where: Any) -> RawStreamMsg | None:
        """A message from the stream leader; None if there is none; ``Unavailable`` if it
        cannot tell."""

        async def attempt() -> RawStreamMsg | None:
            try:
                if "after" in where:  # the first message on the subject after a sequence
                    seq, subject = where["after"] + 1, where["subject"]
                    return await self._js.get_msg(self._stream, seq=seq, subject=subject, next=True)
                if "subject" in where:
                    return await self._js.get_last_msg(self._stream, where["subject"])
                return await self._js.get_msg(self._stream, seq=where["seq"])
            except nats.js.errors.NotFoundError:
                return None

        def give_up(exc: BaseException) -> Unavailable:
            return Unavailable(
                f"could not check whether commit {commit_id} is stored "
                f"({type(exc).__name__}); nothing is lost: retry with commit id {commit_id}",
                commit_id=commit_id,
            )

        budget = min(self._settings.retry_budget, self._settings.request_timeout)
        return await retry(attempt, budget=budget, give_up=give_up, what="leader_get")

    async def _last_commit(self, subject: str, commit_id: str) -> tuple[int, str | None]:
        """(sequence, commit id) of the last message on ``subject`` ((0, None): none)."""
        msg = await self._leader_get(commit_id, subject=subject)
        if msg is None:
            return 0, None
        return int(msg.seq or 0), header(msg, "Nats-Msg-Id")

    async def _holds_commit(self, sequence: int, commit_id: str) -> bool:
        """True if the message at ``sequence`` is the commit ``commit_id``."""
        if sequence <= 0:
            return False
        msg = await self._leader_get(commit_id, seq=sequence)
        return msg is not None and header(msg, "Nats-Msg-Id") == commit_id
