"""The worker API: create runs and tasks, move them through their states, save artifacts.

::

    run = await writer.create_run("Train", parameters={"lr": 0.1}, tags=["nightly"])
    async with run.running():                       # running; completed or failed at exit
        async with run.task("train", index=3) as task:  # pending, running, heartbeating
            await task.save(accuracy=0.93, model=model)

``Writer`` creates runs and loads handles (``runstate.engine._handles``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from runstate.engine._artifacts import ArtifactStore
from runstate.engine._commits import Commit, Receipt
from runstate.engine._events import (
    Event,
    Heartbeat,
    RunCreated,
    RunCreatedPayload,
    decode_commit,
    encode_commit,
    encode_event,
)
from runstate.engine._handles import RunHandle, TaskHandle, check_tags
from runstate.engine._logging import get_logger
from runstate.engine._names import (
    check_flow_name,
    check_id,
    parse_pathspec,
)
from runstate.engine._states import (
    RunState,
    check_run_transition,
)
from runstate.engine._system_metrics import check_sampler
from runstate.engine._typing import EventLog
from runstate.engine._values import check_json_value
from runstate.engine.errors import (
    ConflictError,
    IdempotencyKeyReused,
    InvalidEvent,
    NotFound,
)

__all__ = ["Writer"]

log = get_logger("runstate.worker")


def _system_tags(user: str, extra: Iterable[str]) -> list[str]:
    tags = [f"user:{user}"]
    tags.extend(t for t in extra if t not in tags)
    return tags


class Writer:
    """Creates runs and loads handles; the write half of a runstate client."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.subjects = log.subjects
        self.artifacts = ArtifactStore(log.blobs, log.settings)
        #: the events stream's sequence of the latest commit appended through this writer
        #: or its handles: a read's ``after=`` that sees every one of them
        self.last_sequence = 0
        check_sampler(log)

    @property
    def user(self) -> str:
        return self.log.settings.user

    async def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
        across_run: bool = False,
        commit_id: str | None = None,
    ) -> Receipt:
        """Append a commit to the log (see ``EventLog.append``) and note its sequence."""
        receipt = await self.log.append(
            events, expected_version=expected_version, across_run=across_run, commit_id=commit_id
        )
        self.last_sequence = max(self.last_sequence, receipt.sequence)
        return receipt

    async def append_atomic(self, commits: Sequence[Commit]) -> list[Receipt]:
        """Append commits all or none (see ``EventLog.append_atomic``); note the last one."""
        receipts = await self.log.append_atomic(commits)
        if receipts:
            self.last_sequence = max(self.last_sequence, receipts[-1].sequence)
        return receipts

    async def create_run(
        self,
        flow: str,
        *,
        run_id: str | int | None = None,
        parameters: Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        system_tags: Iterable[str] = (),
        user: str | None = None,
        idempotency_key: str | None = None,
        scheduled_at: datetime | None = None,
        script_name: str | None = None,
        state: RunState = RunState.PENDING,
    ) -> RunHandle:
        """Create a run of ``flow`` and return its handle.

        Without ``run_id`` the run gets the flow's next integer id, allocated
        atomically. With ``idempotency_key`` the run is created once, ever: a
        repeat returns the existing run (Prefect's semantics). Raises
        ``InvalidName``, ``IllegalTransition`` or ``ConflictError`` (a given
        ``run_id`` that exists).
        """
        check_flow_name(flow)
        check_run_transition(f"{flow}/(new)", None, state)
        given = check_id(run_id, "run id") if run_id is not None else None
        # every value checked before a run id is taken
        check_json_value(dict(parameters or {}), "parameters")
        if scheduled_at is not None and scheduled_at.tzinfo is None:
            raise InvalidEvent(
                "scheduled_at has no timezone; use an aware datetime, e.g. datetime.now(UTC)"
            )
        who = user or self.user
        payload = dict(
            flow=flow,
            parameters=dict(parameters or {}),
            tags=check_tags(tags),
            system_tags=check_tags(_system_tags(who, system_tags)),
            user=who,
            idempotency_key=idempotency_key,
            scheduled_at=scheduled_at,
            script_name=script_name,
            state=state,
        )
        if idempotency_key is not None:
            return await self._create_once(flow, given, payload, idempotency_key)
        while True:
            rid = given or str(await self.log.increment(self.subjects.run_counter(flow)))
            event = self._run_created(flow, rid, payload)
            try:
                receipt = await self.append(event, expected_version=0, across_run=True)
            except ConflictError:
                if given is not None:
                    raise ConflictError(f"{flow}/{given}", 0, -1) from None
                continue  # an id someone gave explicitly; take the next
            return RunHandle(self, event.payload, receipt.sequence, receipt)

    def _run_created(self, flow: str, rid: str, payload: dict[str, Any]) -> RunCreated:
        return RunCreated(
            pathspec=f"{flow}/{rid}",
            actor=self.user,
            payload=RunCreatedPayload(run_id=rid, **payload),
        )

    async def _create_once(
        self, flow: str, given: str | None, payload: dict[str, Any], key: str
    ) -> RunHandle:
        # The key is claimed with the creation event before the run is appended, so a
        # writer that dies in between leaves the event for the next one to append.
        claim = f"{flow}\0{key}"
        # a key holding anything but a run's creation (someone else's junk) is as if
        # absent: the claim replaces it
        stored = await self.log.read_key(claim, valid=_is_creation)
        if stored is None:
            rid = given or str(await self.log.increment(self.subjects.run_counter(flow)))
            stored = await self.log.claim_key(
                claim, encode_commit([self._run_created(flow, rid, payload)]), valid=_is_creation
            )
        event = decode_commit(stored)[0]
        assert isinstance(event, RunCreated)
        _check_same_request(key, event, given, payload)
        # Created before, maybe by a writer that died before appending: append
        # the recorded creation again; the log keeps one.
        commit_id = hashlib.sha256(stored).hexdigest()[:32]
        try:
            receipt = await self.append(
                event, expected_version=0, across_run=True, commit_id=commit_id
            )
        except ConflictError:
            return await self.run(event.pathspec)
        return RunHandle(self, event.payload, receipt.sequence, receipt)

    async def run(self, pathspec: str) -> RunHandle:
        """Load the handle of an existing run (its state and version) from the log."""
        path = parse_pathspec(pathspec, min_depth=2, max_depth=2)
        assert path.run is not None
        commits = await self.log.read_entity(self.subjects.run(path.flow, path.run))
        if not commits:
            raise NotFound(f"run {path} does not exist")
        return RunHandle.from_commits(self, commits)

    async def task(self, pathspec: str) -> TaskHandle:
        """Load the handle of an existing task (its latest attempt, state and version)."""
        path = parse_pathspec(pathspec, min_depth=4, max_depth=4)
        assert path.run is not None and path.step is not None and path.task is not None
        subject = self.subjects.task(path.flow, path.run, path.step, path.task)
        commits = await self.log.read_entity(subject)
        if not commits:
            raise NotFound(f"task {path} does not exist")
        return TaskHandle.from_commits(self, path, commits)

    async def heartbeat(self, pathspec: str) -> None:
        """Record that the run or task at ``pathspec`` is alive (latest value only)."""
        path = parse_pathspec(pathspec, min_depth=2, max_depth=4)
        event = Heartbeat(pathspec=str(path), actor=self.user)
        await self.log.beat(self.subjects.heartbeat(path), encode_event(event))


def _is_creation(data: bytes) -> bool:
    """Whether an idempotency key holds what ``create_run`` claims it with: a run's creation."""
    try:
        events = decode_commit(data)
    except InvalidEvent:
        return False
    return len(events) == 1 and isinstance(events[0], RunCreated)


def _check_same_request(
    key: str, created: RunCreated, given: str | None, payload: dict[str, Any]
) -> None:
    """``IdempotencyKeyReused`` if a repeat with ``key`` asks for another run than the first."""
    first = created.payload
    differing = []
    if given is not None and given != first.run_id:
        differing.append(f"run_id ({first.run_id!r}, now {given!r})")
    before = orjson.dumps(first.parameters, option=orjson.OPT_SORT_KEYS)
    now = orjson.dumps(payload["parameters"], option=orjson.OPT_SORT_KEYS, default=str)
    if before != now:
        names = sorted(
            name
            for name in {*first.parameters, *payload["parameters"]}
            if first.parameters.get(name, _ABSENT) != payload["parameters"].get(name, _ABSENT)
        )
        differing.append(f"parameters {', '.join(names) or '(their types)'}")
    if differing:
        raise IdempotencyKeyReused(
            f"idempotency key {key!r} created {created.pathspec} with other values: "
            f"{'; '.join(differing)} differ. A key stands for one request: use a new key "
            "for new parameters, or repeat the first request unchanged",
            key=key,
            run=created.pathspec,
        )


_ABSENT = object()
