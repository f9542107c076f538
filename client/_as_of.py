"""Time travel: a run, step or task as it was at a sequence of the log, or at a time.

The client folds the run's own commits with the projector's reducers
(``runstate.projections._as_of``), so what it returns equals what a reader
of the projected views (or a watcher) saw at that moment. It keeps the
timelines of the last few runs it was asked about: a second moment of a run
reads only the commits written since, and folds from a snapshot.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import TYPE_CHECKING

import anyio

from runstate.client._objects import Run, Step, Task
from runstate.engine._commits import check_read_time
from runstate.engine._names import Pathspec, parse_pathspec
from runstate.engine.errors import BadFilter, NotFound, NotInNamespace
from runstate.projections._as_of import Moment, RunTimeline

if TYPE_CHECKING:
    from runstate.client._client import Client

__all__ = [
    "AsOf",
    "check_as_of",
    "describe",
    "moment_of",
    "run_at",
    "step_at",
    "task_at",
]

#: a sequence of the events stream, or an aware time
AsOf = int | datetime

#: runs whose timelines a client keeps
_TIMELINES = 2


def check_as_of(as_of: object, after: object = None) -> AsOf:
    """``as_of`` if it is a sequence (an int >= 0) or an aware datetime; ``BadFilter`` if not,
    or if ``after`` is given too."""
    if after is not None:
        raise BadFilter(
            "as_of= reads the log as it was, and after= waits for a replica to reach a "
            "write: they do not go together; pass one of them"
        )
    if isinstance(as_of, datetime):
        return check_read_time(as_of)
    if isinstance(as_of, bool) or not isinstance(as_of, int):
        raise BadFilter(
            f"as_of is a sequence of the events stream (an int, such as a receipt's sequence) "
            f"or an aware datetime, not {as_of!r}"
        )
    if as_of < 0:
        raise BadFilter(f"as_of is a sequence of the events stream, 0 or more, not {as_of}")
    return as_of


def describe(as_of: AsOf) -> str:
    """``sequence 42`` or ``2026-11-22T09:30:00+00:00``: the moment, in words."""
    if isinstance(as_of, datetime):
        return as_of.isoformat()
    return f"sequence {as_of}"


async def moment_of(client: Client, path: Pathspec, as_of: AsOf) -> Moment:
    """The moment ``as_of`` of the run of ``path``, which must exist by then (``NotFound``)
    and be in the client's namespace then (``NotInNamespace``)."""
    timeline = await _timeline(client, path)
    if isinstance(as_of, datetime):
        moment = await timeline.at_time(as_of)
    else:
        moment = await timeline.at(as_of)
    run = moment.run_view
    if run is None:
        if timeline.first_sequence is None and not await _exists(client, path):
            raise NotFound(f"run {path.run_pathspec} does not exist")
        raise NotFound(
            f"run {path.run_pathspec} did not exist yet at {describe(as_of)}; "
            "read it as of a later sequence or time"
        )
    namespace = client.namespace
    if namespace is not None and namespace not in run.all_tags:
        raise NotInNamespace(
            f"{run.pathspec} was not in namespace {namespace!r} at {describe(as_of)}; "
            "use namespace(None) to see every run"
        )
    return moment


async def _exists(client: Client, path: Pathspec) -> bool:
    """Whether the run of ``path`` has any commit now."""
    assert path.run is not None
    return await client.log.last_sequence(client.subjects.run_all(path.flow, path.run)) > 0


async def _timeline(client: Client, path: Pathspec) -> RunTimeline:
    """The client's timeline of the run of ``path`` (the most recently used are kept)."""
    timelines: OrderedDict[str, RunTimeline] = client.__dict__.setdefault(
        "_timelines", OrderedDict()
    )
    lock: anyio.Lock = client.__dict__.setdefault("_timelines_lock", anyio.Lock())
    async with lock:
        key = path.run_pathspec
        timeline = timelines.get(key)
        if timeline is None:
            assert path.run is not None
            timeline = timelines[key] = RunTimeline(client.log, path.flow, path.run)
        timelines.move_to_end(key)
        while len(timelines) > _TIMELINES:
            timelines.popitem(last=False)
        return timeline


async def run_at(client: Client, pathspec: str, as_of: AsOf) -> Run:
    """See ``Client.run``."""
    path = parse_pathspec(pathspec, min_depth=2, max_depth=2)
    moment = await moment_of(client, path, as_of)
    return Run(client, moment.run_view, moment)  # type: ignore[arg-type]


async def step_at(client: Client, pathspec: str, as_of: AsOf) -> Step:
    """See ``Client.step``."""
    path = parse_pathspec(pathspec, min_depth=3, max_depth=3)
    moment = await moment_of(client, path, as_of)
    return Step(client, moment.step_view(path.step or ""), moment)


async def task_at(client: Client, pathspec: str, attempt: int | None, as_of: AsOf) -> Task:
    """See ``Client.task``."""
    path = parse_pathspec(pathspec, min_depth=4, max_depth=4)
    moment = await moment_of(client, path, as_of)
    return Task(client, moment.task_view(str(path), attempt), attempt, moment)
