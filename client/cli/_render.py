"""Rich text the CLI shares: states, durations, sizes, value previews and event lines.

Everything here is pure presentation: it takes views and events (no I/O) and
returns something rich can print, so the CLI, the demo and the tests render
the same thing. Run tables and trees are in ``_trees``, the live board in
``_board``.
"""

from __future__ import annotations

import pickletools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import RenderableType
from rich.pretty import Pretty
from rich.progress_bar import ProgressBar
from rich.text import Text

from runstate.engine._events import (
    ArtifactsRecorded,
    Event,
    Heartbeat,
    MetadataRecorded,
    RunCreated,
    RunStateChanged,
    RunTagsChanged,
    RunUpdated,
    TaskAttemptStateChanged,
    TaskCreated,
)

__all__ = [
    "STATE_STYLES",
    "counts_text",
    "event_line",
    "event_summary",
    "format_age",
    "format_duration",
    "format_size",
    "pickle_names",
    "pickled_preview",
    "preview_text",
    "state_text",
    "value_preview",
]

#: the colour of each run and task state (and of step statuses, which use the same words)
STATE_STYLES: dict[str, str] = {
    "scheduled": "grey58",
    "pending": "grey58",
    "running": "cyan",
    "cancelling": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "crashed": "magenta",
}

#: the order counts by state are listed in
_STATE_ORDER = ("completed", "running", "pending", "failed", "crashed", "cancelled")


# -- small pieces ------------------------------------------------------------


def state_text(state: str, label: str | None = None) -> Text:
    """A state in its colour, with its label when it has one: ``pending (AwaitingRetry)``."""
    value = str(state)
    text = Text(value, style=STATE_STYLES.get(value, ""))
    if label:
        text.append(f" ({label})", style="dim")
    return text


def format_duration(seconds: float | None) -> str:
    """``0.4s``, ``12.3s``, ``3m04s``, ``2h05m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_age(when: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``when`` was (``12s ago``, ``3m04s ago``), or the local date beyond a day."""
    if when is None:
        return "-"
    now = now or datetime.now(UTC)
    seconds = int(max(0.0, (now - when).total_seconds()))
    if seconds >= 86_400:
        return when.astimezone().strftime("%Y-%m-%d %H:%M")
    if seconds < 1:
        return "just now"
    if seconds < 60:
        return f"{seconds}s ago"
    return f"{format_duration(seconds)} ago"


def format_size(size: int) -> str:
    """``312 B``, ``4.2 kB``, ``1.3 MB``."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover - the loop always returns


def counts_text(counts: Mapping[str, int]) -> Text:
    """Task counts by state in their colours: ``10 completed · 1 running · 1 failed``."""
    text = Text()
    ordered = [s for s in _STATE_ORDER if counts.get(s)] + sorted(
        s for s in counts if s not in _STATE_ORDER and counts[s]
    )
    for i, state in enumerate(ordered):
        if i:
            text.append(" · ", style="dim")
        text.append(f"{counts[state]} {state}", style=STATE_STYLES.get(state, ""))
    return text


def _bar(done: int, total: int, width: int = 18) -> RenderableType:
    return ProgressBar(total=max(total, 1), completed=done if total else 0, width=width)


def _shorten(value: str, limit: int) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return ((end or datetime.now(UTC)) - start).total_seconds()


def preview_text(value: Any, limit: int = 60) -> str:
    """A one-line preview of a value (an artifact's, in a task tree)."""
    return _shorten(repr(value), limit)


def value_preview(value: Any) -> RenderableType:
    """A value in full, pretty-printed (an artifact's, on its own)."""
    return Pretty(value, max_length=50, max_string=2000)


#: the opcodes that push a string (the module and name a STACK_GLOBAL takes)
_PICKLE_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})


def pickle_names(data: bytes, limit: int = 3) -> list[str]:
    """The globals a pickle would import (``posix.system``), read from its opcodes, none run.

    Best effort (a name taken from the memo is missed): it says what a pickle
    refers to without unpickling it, which would run whatever it names.
    """
    names: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in _PICKLE_STRINGS:
                strings.append(str(arg))
            elif opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # a truncated or corrupt pickle: say what was read before it
        pass
    unique = list(dict.fromkeys(names))
    return unique[:limit] + (["..."] if len(unique) > limit else [])


def pickled_preview(size: int, data: bytes | None) -> str:
    """What the command line shows of a pickled artifact: its type and size, never its value.

    Unpickling runs code chosen by whoever wrote the artifact, so the command
    line never does it to display one, whatever ``trust_pickles`` says.
    """
    text = f"(a pickle of {format_size(size)}, not unpickled"
    names = pickle_names(data) if data is not None else []
    if names:
        text += "; it names " + ", ".join(names)
    return text + ")"


# -- events ------------------------------------------------------------------


def event_summary(event: Event) -> str:
    """What one event did, in a few words: ``-> failed: RuntimeError: out of memory``."""
    if isinstance(event, RunCreated):
        created = event.payload
        parts = [f"created ({created.state.value})"]
        if created.user:
            parts.append(f"by {created.user}")
        if created.parameters:
            parts.append("params " + ", ".join(f"{k}={v}" for k, v in created.parameters.items()))
        if created.tags:
            parts.append("tags " + ", ".join(created.tags))
        return _shorten("; ".join(parts), 120)
    if isinstance(event, RunStateChanged | TaskAttemptStateChanged):
        change = event.payload
        text = f"→ {change.state.value}"
        if change.label:
            text += f" ({change.label})"
        if isinstance(event, RunStateChanged) and event.payload.resume:
            text += " [resume]"
        if change.message:
            text += f": {change.message}"
        return _shorten(text, 120)
    if isinstance(event, RunTagsChanged):
        tags = event.payload
        if tags.replace is not None:
            return "tags = " + (", ".join(tags.replace) or "(none)")
        return " ".join([*(f"+{t}" for t in tags.add), *(f"-{t}" for t in tags.remove)]) or "tags"
    if isinstance(event, RunUpdated):
        update = event.payload
        parts = [f"{label} = {getattr(update, label)!r}" for label in update.changes]
        parts += [f"config {', '.join(update.config)}"] if update.config else []
        parts += [f"summary {', '.join(update.summary)}"] if update.summary else []
        return _shorten("; ".join(parts), 120)
    if isinstance(event, TaskCreated):
        task = event.payload
        text = "created"
        frame = task.foreach_stack[-1] if task.foreach_stack else None
        if frame is not None and frame.num_splits:
            text += f", foreach {frame.index + 1}/{frame.num_splits}"
        elif task.foreach_index is not None:
            text += f", foreach index {task.foreach_index}"
        if task.parent_tasks:
            n = len(task.parent_tasks)
            text += f", {n} parent{'s' if n != 1 else ''}"
        return text
    if isinstance(event, ArtifactsRecorded):
        items = ", ".join(f"{a.name} ({format_size(a.size)})" for a in event.payload.artifacts)
        return _shorten(f"saved {items}", 120)
    if isinstance(event, MetadataRecorded):
        items = ", ".join(f"{m.name}={m.value}" for m in event.payload.entries)
        return _shorten(f"metadata {items}", 120)
    if isinstance(event, Heartbeat):
        return "heartbeat"
    return event.type  # pragma: no cover - every event type is listed above


def _event_style(event: Event) -> str:
    if isinstance(event, RunStateChanged | TaskAttemptStateChanged):
        return STATE_STYLES.get(event.payload.state.value, "")
    return ""


def event_line(sequence: int, event: Event, *, index: int = 0) -> Text:
    """One event as a line: sequence, local time, type, pathspec, attempt, summary."""
    when = event.occurred_at.astimezone().strftime("%H:%M:%S.%f")[:-3]
    seq = f"{sequence}" if index == 0 else f"{sequence}.{index}"
    text = Text()
    text.append(f"{seq:>7}  ", style="dim")
    text.append(f"{when}  ", style="dim")
    text.append(f"{event.type:<24}", style="blue")
    text.append(f"{event.pathspec}")
    if event.attempt is not None and event.type.startswith("task."):
        text.append(f" #{event.attempt}", style="dim")
    text.append("  ")
    text.append(event_summary(event), style=_event_style(event))
    return text
