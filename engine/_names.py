"""Names, pathspecs and the NATS subjects they map to.

A name that reaches a subject must not change its meaning: a ``.``, ``*``,
``>`` or space would, so names are checked here before anything is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runstate.engine.errors import InvalidName

__all__ = [
    "Pathspec",
    "Subjects",
    "check_flow_name",
    "check_id",
    "check_prefix",
    "check_step_name",
    "parse_pathspec",
    "subject_matches",
]

_FLOW_OR_STEP = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ARTIFACT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,32}")


def check_flow_name(name: str) -> str:
    """Return ``name`` if it is a valid flow name, else raise ``InvalidName``."""
    if not isinstance(name, str) or not _FLOW_OR_STEP.fullmatch(name):
        raise InvalidName(
            f"invalid flow name {name!r}: use a letter or _ then up to 127 letters, digits or _"
        )
    return name


def check_step_name(name: str) -> str:
    """Return ``name`` if it is a valid step name, else raise ``InvalidName``."""
    if not isinstance(name, str) or not _FLOW_OR_STEP.fullmatch(name):
        raise InvalidName(
            f"invalid step name {name!r}: use a letter or _ then up to 127 letters, digits or _"
        )
    return name


def check_id(value: str | int, what: str = "id") -> str:
    """Return a run or task id as a string if valid, else raise ``InvalidName``."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidName(f"invalid {what} {value!r}: give a string or an integer")
    text = str(value)
    if not _ID.fullmatch(text):
        raise InvalidName(f"invalid {what} {text!r}: use 1 to 64 letters, digits, '_' or '-'")
    return text


def check_artifact_name(name: str) -> str:
    """Return ``name`` if it is a valid artifact name (a Python identifier), else raise."""
    if not isinstance(name, str) or not _ARTIFACT.fullmatch(name):
        raise InvalidName(
            f"invalid artifact name {name!r}: use a Python identifier of up to 128 characters"
        )
    return name


def check_prefix(prefix: str) -> str:
    """Return a subject prefix if valid (one token of letters, digits, '_' or '-')."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise InvalidName(
            f"invalid subject prefix {prefix!r}: use 1 to 32 letters, digits, '_' or '-'"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class Pathspec:
    """A parsed Metaflow pathspec: ``Flow[/run[/step[/task[/artifact]]]]``."""

    flow: str
    run: str | None = None
    step: str | None = None
    task: str | None = None
    artifact: str | None = None

    @property
    def depth(self) -> int:
        """1 for a flow, 2 a run, 3 a step, 4 a task, 5 an artifact."""
        return 1 + sum(part is not None for part in (self.run, self.step, self.task, self.artifact))

    @property
    def kind(self) -> str:
        """``flow``, ``run``, ``step``, ``task`` or ``artifact``."""
        return ("flow", "run", "step", "task", "artifact")[self.depth - 1]

    def __str__(self) -> str:
        parts = [self.flow, self.run, self.step, self.task, self.artifact]
        return "/".join(part for part in parts if part is not None)

    @property
    def run_pathspec(self) -> str:
        """The pathspec of the run this object belongs to."""
        if self.run is None:
            raise InvalidName(f"{self} is a flow, it has no run")
        return f"{self.flow}/{self.run}"

    @property
    def task_pathspec(self) -> str:
        """The pathspec of the task this object belongs to."""
        if self.task is None:
            raise InvalidName(f"{self} is not inside a task")
        return f"{self.flow}/{self.run}/{self.step}/{self.task}"


def parse_pathspec(text: str, *, min_depth: int = 1, max_depth: int = 5) -> Pathspec:
    """Parse and check a pathspec such as ``Train/42/train/7``.

    Raises ``InvalidName`` naming the bad part, or when the depth is outside
    ``min_depth..max_depth`` (1 flow .. 5 artifact).
    """
    if not isinstance(text, str) or not text:
        raise InvalidName(
            f"invalid pathspec {text!r}: expected Flow[/run[/step[/task[/artifact]]]]"
        )
    parts = text.split("/")
    if not min_depth <= len(parts) <= max_depth:
        kinds = (
            "Flow",
            "Flow/run",
            "Flow/run/step",
            "Flow/run/step/task",
            "Flow/run/step/task/artifact",
        )
        wanted = " or ".join(kinds[min_depth - 1 : max_depth])
        raise InvalidName(f"invalid pathspec {text!r}: expected {wanted}")
    flow = check_flow_name(parts[0])
    run = check_id(parts[1], "run id") if len(parts) > 1 else None
    step = check_step_name(parts[2]) if len(parts) > 2 else None
    task = check_id(parts[3], "task id") if len(parts) > 3 else None
    artifact = check_artifact_name(parts[4]) if len(parts) > 4 else None
    return Pathspec(flow, run, step, task, artifact)


@dataclass(frozen=True, slots=True)
class Subjects:
    """The subjects and stream names for one prefix (default ``rs``).

    ``<p>.ev.<flow>.<run>.r`` holds run-level events and
    ``<p>.ev.<flow>.<run>.t.<step>.<task>`` task-level events, so
    ``<p>.ev.Train.42.>`` is one run and ``<p>.ev.*.*.r`` every run header.
    """

    prefix: str = "rs"

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    # streams and buckets -------------------------------------------------
    @property
    def events_stream(self) -> str:
        return f"{self.prefix.upper()}_EVENTS"

    @property
    def heartbeats_stream(self) -> str:
        return f"{self.prefix.upper()}_HEARTBEATS"

    @property
    def counters_stream(self) -> str:
        return f"{self.prefix.upper()}_COUNTERS"

    @property
    def deadletter_stream(self) -> str:
        return f"{self.prefix.upper()}_DEADLETTER"

    @property
    def idempotency_bucket(self) -> str:
        return f"{self.prefix}_idempotency"

    @property
    def blobs_bucket(self) -> str:
        return f"{self.prefix}_blobs"

    # subjects ------------------------------------------------------------
    @property
    def all_events(self) -> str:
        return f"{self.prefix}.ev.>"

    def run(self, flow: str, run: str) -> str:
        return f"{self.prefix}.ev.{flow}.{run}.r"

    def task(self, flow: str, run: str, step: str, task: str) -> str:
        return f"{self.prefix}.ev.{flow}.{run}.t.{step}.{task}"

    def run_all(self, flow: str, run: str) -> str:
        return f"{self.prefix}.ev.{flow}.{run}.>"

    def step_all(self, flow: str, run: str, step: str) -> str:
        return f"{self.prefix}.ev.{flow}.{run}.t.{step}.*"

    def flow_all(self, flow: str) -> str:
        return f"{self.prefix}.ev.{flow}.>"

    def for_pathspec(self, path: Pathspec) -> str:
        """The subject filter covering every event of the object at ``path``."""
        if path.run is None:
            return self.flow_all(path.flow)
        if path.step is None:
            return self.run_all(path.flow, path.run)
        if path.task is None:
            return self.step_all(path.flow, path.run, path.step)
        return self.task(path.flow, path.run, path.step, path.task)

    def pathspec_of(self, subject: str) -> Pathspec:
        """Map an events subject back to the pathspec of its run or task."""
        parts = subject.split(".")
        if parts[0] == self.prefix and len(parts) > 1 and parts[1] == "ev":
            if len(parts) == 5 and parts[4] == "r":
                return parse_pathspec(f"{parts[2]}/{parts[3]}")
            if len(parts) == 7 and parts[4] == "t":
                return parse_pathspec(f"{parts[2]}/{parts[3]}/{parts[5]}/{parts[6]}")
        raise InvalidName(f"{subject!r} is not a runstate events subject")

    @property
    def all_heartbeats(self) -> str:
        return f"{self.prefix}.hb.>"

    def heartbeat(self, path: Pathspec) -> str:
        """The latest-value-only heartbeat subject of a run or task."""
        if path.task is not None:
            return f"{self.prefix}.hb.{path.flow}.{path.run}.t.{path.step}.{path.task}"
        return f"{self.prefix}.hb.{path.flow}.{path.run}.r"

    def run_counter(self, flow: str) -> str:
        return f"{self.prefix}.ctr.runid.{flow}"

    def task_counter(self, flow: str, run: str) -> str:
        return f"{self.prefix}.ctr.taskid.{flow}.{run}"

    @property
    def all_counters(self) -> str:
        return f"{self.prefix}.ctr.>"

    @property
    def all_deadletters(self) -> str:
        return f"{self.prefix}.dlq.>"

    def deadletter(self, stream_sequence: int) -> str:
        return f"{self.prefix}.dlq.{stream_sequence}"

    @property
    def query_prefix(self) -> str:
        """Subjects of the query service endpoints start with this."""
        return f"{self.prefix}.q"

    @property
    def service_name(self) -> str:
        return f"{self.prefix}-query"


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` matches a NATS subject ``pattern`` (``*`` one token, ``>`` the rest)."""
    if pattern == subject:
        return True
    wanted = pattern.split(".")
    tokens = subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)
