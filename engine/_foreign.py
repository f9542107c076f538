"""Messages runstate did not write, where it writes: appends and keys step over them.

Anything a client may publish on can hold a message that is not runstate's:
JetStream's answer to a request that named an event subject or a key as its
reply (on a server whose authorization keeps JetStream in the users' own
account), or a writer's junk. The projector dead-letters such a message and
goes on; but it moves the entity's version, so the next append expecting the
old one would fail with ``ConflictError`` for ever, and an idempotency key
holding junk would make every ``create_run`` with that key fail.

So, on the conflict path only (the happy path reads nothing more), an append
looks at what came after the version it expects: if none of it is a commit of
the entity, it appends again expecting the last of them. And a key holding
what its claimer says is not valid is treated as absent and replaced with a
compare-and-set on its revision. Both event logs (JetStream, in memory) use
these rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import nats.js.errors

from runstate.engine._commits import EncodedCommit
from runstate.engine._events import decode_commit
from runstate.engine._names import Subjects
from runstate.engine._retry import TransientRefusal
from runstate.engine.errors import InvalidEvent, InvalidName

__all__ = [
    "FOREIGN_LOOKAHEAD",
    "Found",
    "KeyCheck",
    "held_or_replaced",
    "is_commit_of",
    "past_foreign",
]

#: how many messages after the version an append expects it looks at, on a conflict,
#: before calling it a real conflict: junk comes one message at a time
FOREIGN_LOOKAHEAD = 16

#: what a key's claimer says is a value of its own (not junk)
KeyCheck = Callable[[bytes], bool]

#: (sequence, subject, data) of a message, or None
Found = tuple[int, str, bytes] | None

#: the first message on a subject (filter) after a sequence, read for the commit of an id
#: (which an error names)
NextAfter = Callable[[str, str, int], Awaitable[Found]]


def is_commit_of(subjects: Subjects, subject: str, data: bytes) -> bool:
    """Whether ``data`` on ``subject`` is a runstate commit of that subject's entity.

    The projector dead-letters anything else (and, beside, events of a kind that
    does not belong on the subject: a rule of its own, above the log).
    """
    try:
        path = subjects.pathspec_of(subject)
        events = decode_commit(data)
    except (InvalidEvent, InvalidName):
        return False
    entity = str(path)
    return all(event.pathspec == entity for event in events)


async def past_foreign(
    subjects: Subjects, encoded: EncodedCommit, next_after: NextAfter
) -> EncodedCommit | None:
    """``encoded`` expecting another version, if every message after the one it expects is
    foreign: the last of them; else None (a real conflict).

    ``next_after(commit_id, where, sequence)`` gives the first message on ``where``
    (the entity's subject, or the run's subjects for an across-run check) after
    ``sequence``. None too if there is none after the expected version, or more than
    ``FOREIGN_LOOKAHEAD``.
    """
    commit, path = encoded.commit, encoded.path
    if commit.expected_version is None or path.run is None:
        return None
    where = subjects.run_all(path.flow, path.run) if commit.across_run else encoded.subject
    last = None
    after = commit.expected_version
    for _ in range(FOREIGN_LOOKAHEAD):
        found = await next_after(commit.commit_id, where, after)
        if found is None:
            break
        sequence, subject, data = found
        if is_commit_of(subjects, subject, data):
            return None
        last = after = sequence
    else:
        return None
    if last is None:
        return None
    return dataclasses.replace(encoded, commit=dataclasses.replace(commit, expected_version=last))


async def held_or_replaced(kv: Any, key: str, value: bytes, valid: KeyCheck | None) -> bytes:
    """What the key-value entry ``key`` (created already) holds; junk there (empty, or not
    ``valid``) is replaced by ``value`` with a compare-and-set on its revision, and
    ``value`` returned.

    ``TransientRefusal`` (to try the claim again) if the entry cannot be read yet or
    changed in between.
    """
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        raise TransientRefusal(f"key {key} was claimed and is not readable yet") from None
    if entry.value and (valid is None or valid(entry.value)):
        return bytes(entry.value)
    try:
        await kv.update(key, value, last=entry.revision)
    except nats.js.errors.KeyWrongLastSequenceError:
        raise TransientRefusal(f"key {key} changed while its junk was replaced") from None
    return value
