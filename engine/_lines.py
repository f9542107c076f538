"""Task log lines: their subjects and their message format.

A task's stdout and stderr go to a stream of their own (``<PREFIX>_LOGS``,
subjects ``<prefix>.lg.<flow>.<run>.t.<step>.<task>``: tasks only, as
Metaflow keeps logs per task), with their own retention, and are read from
that stream (they are not projected). One message is one batch of lines of
one task attempt::

    {"v":1,"p":"Train/42/train/3","a":0,
     "l":[[1733480000.25,1,"epoch 1\\n"],[1733480000.26,2,"warning: ...\\n"], ...]}

Each line is ``[wall time, stream, text]``: the time its first character
was written (seconds since the epoch), the stream as its file descriptor
(1 stdout, 2 stderr), and the text as written, ending in a newline unless
the line was cut: a block that ended mid-line, or a line longer than
``max_line_chars`` split in pieces (concatenating a stream's texts gives
back exactly what was written).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from runstate.engine._batches import SideStream
from runstate.engine._names import Pathspec, parse_pathspec
from runstate.engine.errors import InvalidEvent, InvalidName

__all__ = [
    "LINES_SCHEMA_VERSION",
    "STDERR",
    "STDOUT",
    "LineBatch",
    "all_lines",
    "decode_lines",
    "encode_lines",
    "lines_side",
    "lines_stream",
    "lines_subject",
    "max_line_chars",
    "stream_number",
]

LINES_SCHEMA_VERSION = 1

#: the streams of a task's output, by their file descriptors
STDOUT, STDERR = 1, 2
_NUMBERS = {"stdout": STDOUT, "stderr": STDERR}

#: a line is cut in pieces of at most this many characters
MAX_LINE = 64 * 1024
#: bytes a character may take in a message at most (orjson writes a control character as
#: ``\\u001f``), and bytes left for the envelope and a line's time and stream
_BYTES_PER_CHAR = 6
_ENVELOPE = 1024


def lines_stream(prefix: str) -> str:
    """The name of the log lines stream of ``prefix`` (``RS_LOGS``)."""
    return f"{prefix.upper()}_LOGS"


def all_lines(prefix: str) -> str:
    """The subjects of every log line of ``prefix`` (``rs.lg.>``)."""
    return f"{prefix}.lg.>"


def lines_side(prefix: str) -> SideStream:
    """The log lines stream of ``prefix`` as a ``SideStream``."""
    return SideStream(lines_stream(prefix), all_lines(prefix), "log lines")


def lines_subject(prefix: str, path: Pathspec) -> str:
    """The log lines subject of a task pathspec; ``InvalidName`` for anything else."""
    if path.task is None or path.artifact is not None:
        raise InvalidName(f"log lines belong to a task (Flow/run/step/task), not to {path}")
    return f"{prefix}.lg.{path.flow}.{path.run}.t.{path.step}.{path.task}"


def stream_number(stream: str) -> int:
    """The number of ``"stdout"`` or ``"stderr"``; ``InvalidEvent`` for anything else."""
    number = _NUMBERS.get(stream) if isinstance(stream, str) else None
    if number is None:
        raise InvalidEvent(f"a log stream is 'stdout' or 'stderr', not {stream!r}")
    return number


def max_line_chars(max_payload: int) -> int:
    """The longest piece of a line that always fits in a message of ``max_payload`` bytes."""
    return max(1, min(MAX_LINE, (max_payload - _ENVELOPE) // _BYTES_PER_CHAR))


@dataclass(frozen=True, slots=True)
class LineBatch:
    """A decoded lines message: ``[time, stream, text]`` lines of one task attempt."""

    pathspec: str
    attempt: int
    lines: list[list[Any]]


def encode_lines(pathspec: str, attempt: int, lines: list[list[Any]]) -> bytes:
    """One lines message of ``[time, stream, text]`` lines."""
    return orjson.dumps({"v": LINES_SCHEMA_VERSION, "p": pathspec, "a": attempt, "l": lines})


def decode_lines(data: bytes) -> LineBatch:
    """Decode a lines message; ``InvalidEvent`` when it is not one."""
    try:
        message = orjson.loads(data)
        if message["v"] != LINES_SCHEMA_VERSION:
            raise InvalidEvent(f"lines schema version {message['v']} is not known to this reader")
        attempt = message["a"]
        lines = message["l"]
        if type(attempt) is not int or type(lines) is not list:
            raise TypeError("the attempt is not an int or the lines not a list")
        parse_pathspec(message["p"], min_depth=4, max_depth=4)
        return LineBatch(message["p"], attempt, lines)
    except InvalidEvent:
        raise
    except (
        orjson.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        InvalidName,
    ) as exc:
        raise InvalidEvent(f"not a lines message: {type(exc).__name__}: {exc}") from None
