"""Task log lines: their subjects and their message format.

A task's stdout and stderr go to a stream of their own (``<PREFIX>_LOGS``,
subjects ``<prefix>.lg.<flow>.<run>.t.<step>.<task>``: tasks only, as
Metaflow keeps logs per task), with their own retention, and are read from
that stream (they are not projected). One message is one batch of lines of
one task attempt, by column::

    {"v":1,"p":"Train/42/train/3","a":0,
     "t":[1733480000.25,1733480000.26],"s":[1,2],"n":[8,20],
     "x":"epoch 1\\nwarning: it is slow\\n"}

Line ``i`` was begun at wall time ``t[i]`` (seconds since the epoch), on
stream ``s[i]`` (its file descriptor: 1 stdout, 2 stderr), and its text is
the next ``n[i]`` characters of ``x``: the text as written, ending in a
newline unless the line was cut (a block that ended mid-line, or a line
longer than ``max_line_chars`` split in pieces), so that concatenating a
stream's texts gives back exactly what was written. By column, because a
task's output is mostly read whole: a batch's text of one stream is then
one string as decoded, with no object made per line (a list per line made
decoding three times slower than the read's target allows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from runstate.engine._batches import SideStream
from runstate.engine._names import Pathspec, parse_pathspec
from runstate.engine.errors import InvalidEvent, InvalidName

__all__ = [
    "LINES_SCHEMA_VERSION",
    "STDERR",
    "STDOUT",
    "Line",
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

#: a line as written: (wall time, stream, text)
Line = tuple[float, int, str]

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
    """A decoded lines message: the lines of one task attempt, by column."""

    pathspec: str
    attempt: int
    times: list[float]
    streams: list[int]
    lengths: list[int]
    #: the lines' texts, one after the other
    text: str

    def lines(self) -> list[Line]:
        """Each line as ``(time, stream, text)``."""
        text = self.text
        lines: list[Line] = []
        end = 0
        for at, stream, length in zip(self.times, self.streams, self.lengths, strict=True):
            start, end = end, end + length
            lines.append((at, stream, text[start:end]))
        return lines

    def text_of(self, stream: int) -> str:
        """What the batch's lines of ``stream`` hold, one after the other."""
        streams = self.streams
        if stream not in streams:
            return ""
        other = STDERR if stream == STDOUT else STDOUT
        if other not in streams:  # one stream only: the common case, with no walk
            return self.text
        return "".join(line[2] for line in self.lines() if line[1] == stream)


def encode_lines(pathspec: str, attempt: int, lines: Sequence[Line]) -> bytes:
    """One lines message of ``(time, stream, text)`` lines."""
    times, streams, texts = zip(*lines, strict=True) if lines else ((), (), ())
    return orjson.dumps(
        {
            "v": LINES_SCHEMA_VERSION,
            "p": pathspec,
            "a": attempt,
            "t": times,
            "s": streams,
            "n": list(map(len, texts)),
            "x": "".join(texts),
        }
    )


def decode_lines(data: bytes) -> LineBatch:
    """Decode a lines message; ``InvalidEvent`` when it is not one."""
    try:
        message = orjson.loads(data)
        if message["v"] != LINES_SCHEMA_VERSION:
            raise InvalidEvent(f"lines schema version {message['v']} is not known to this reader")
        batch = LineBatch(
            message["p"], message["a"], message["t"], message["s"], message["n"], message["x"]
        )
        if (
            type(batch.attempt) is not int
            or type(batch.text) is not str
            or not len(batch.times) == len(batch.streams) == len(batch.lengths)
            or sum(batch.lengths) != len(batch.text)
        ):
            raise ValueError("its columns do not agree")
        parse_pathspec(batch.pathspec, min_depth=4, max_depth=4)
        return batch
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
