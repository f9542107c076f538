"""The feeder: a child process that reads a stretch of the events stream for a catch-up.

Receiving a message through nats-py costs a replica about a third of its
time in a catch-up, on the one core its event loop runs on. For a long
backlog the projector therefore starts a feeder process
(``feeder_command()``). The feeder reads the sequences it is given with an
ordered consumer and writes each message to its stdout as a frame: a
header of the stream sequence and the lengths of the subject and the data,
then the subject and the data. While the pipe is full its writes block,
and flow control holds the rest on the server. The projector only splits
frames. It checks every sequence as it always does, and on any failure of
the feeder it goes on with its own consumer from where it got.

The projector writes the settings and the sequences to the feeder's stdin
(pickled: parent and child are the same program). To stop the feeder early
it stops reading: the feeder's next write fails and it exits.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys

import anyio
import anyio.abc
import structlog

from runstate.engine._settings import Settings

__all__ = ["FeederError", "FrameReader", "encode_frame", "encode_request", "feeder_command"]

log = structlog.get_logger("runstate.feeder")

#: stream sequence, subject length, data length
_HEADER = struct.Struct(">QHI")
#: a longer subject or larger message is not a frame the feeder wrote
_MAX_SUBJECT = 4096
_MAX_DATA = 64 * 1024 * 1024
#: frames written to the pipe at a time (bytes)
_WRITE_BYTES = 256 * 1024


class FeederError(Exception):
    """The feeder stopped early or wrote something that is not a frame."""


def feeder_command() -> list[str]:
    """How the projector starts a feeder (``-m`` would warn: the package imports this module)."""
    return [sys.executable, "-c", "from runstate.projections._feeder import main; main()"]


def encode_frame(sequence: int, subject: str, data: bytes) -> bytes:
    name = subject.encode()
    return _HEADER.pack(sequence, len(name), len(data)) + name + data


class FrameReader:
    """Splits the feeder's output, which arrives in chunks of any size, into deliveries."""

    def __init__(self) -> None:
        self._pending = b""

    @property
    def partial(self) -> bool:
        """Bytes of an unfinished frame are held."""
        return bool(self._pending)

    def feed(self, chunk: bytes) -> list[tuple[int, str, bytes]]:
        data = self._pending + chunk if self._pending else chunk
        size = _HEADER.size
        end = len(data)
        deliveries: list[tuple[int, str, bytes]] = []
        position = 0
        while end - position >= size:
            sequence, subject_length, data_length = _HEADER.unpack_from(data, position)
            if subject_length > _MAX_SUBJECT or data_length > _MAX_DATA or sequence == 0:
                raise FeederError(
                    f"not a frame at byte {position} of a chunk: sequence {sequence}, "
                    f"subject of {subject_length} bytes, data of {data_length} bytes"
                )
            start = position + size
            stop = start + subject_length + data_length
            if stop > end:
                break
            subject = data[start : start + subject_length].decode()
            deliveries.append((sequence, subject, data[start + subject_length : stop]))
            position = stop
        self._pending = data[position:]
        return deliveries


# -- the child process -------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _feed(settings: Settings, start: int, stop: int) -> None:
    """Write the frames of sequences ``start``..``stop`` to stdout, in order."""
    from nats.aio.msg import Msg

    from runstate.engine._connection import open_nats
    from runstate.engine._names import Subjects
    from runstate.projections._projector import _stream_sequence, subscribe_events

    subjects = Subjects(settings.prefix)
    out = sys.stdout.fileno()
    frames: list[bytes] = []
    held = 0
    following = start
    done = anyio.Event()
    failed: list[OSError] = []

    async def on_msg(msg: Msg) -> None:
        nonlocal held, following
        sequence = _stream_sequence(msg)
        if sequence != following:  # the ordered consumer starts over after a gap
            return
        frame = encode_frame(sequence, msg.subject, msg.data)
        frames.append(frame)
        held += len(frame)
        following += 1
        if held >= _WRITE_BYTES or sequence == stop:
            # Blocks this loop while the pipe is full: the projector is behind, and
            # flow control then holds the rest on the server.
            try:
                _write_all(out, b"".join(frames))
            except OSError as exc:  # the projector stopped reading
                failed.append(exc)
                done.set()
            frames.clear()
            held = 0
        if sequence == stop:
            done.set()

    nc = await open_nats(settings, name="runstate-feeder")
    try:
        sub = await subscribe_events(nc.jetstream(), subjects, on_msg, start)
        await done.wait()
        await sub.unsubscribe()
        if failed:
            raise failed[0]
    finally:
        with anyio.CancelScope(shield=True):
            await nc.close()


async def _serve() -> None:
    stdin = sys.stdin.buffer
    settings, start, stop = pickle.loads(stdin.read(int(stdin.readline())))
    await _feed(settings, start, stop)


def encode_request(settings: Settings, start: int, stop: int) -> bytes:
    """What the projector writes to the feeder's stdin."""
    body = pickle.dumps((settings, start, stop))
    return b"%d\n" % len(body) + body


def main() -> None:
    from runstate.engine._logging import configure_logging

    configure_logging("warning", force=True)
    try:
        anyio.run(_serve)
    except OSError:  # the projector stopped reading: it has what it needs, or it went away
        sys.exit(1)
