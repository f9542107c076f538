"""The feeder: a child process that reads and folds a stretch of the events stream.

For a long backlog (a catch-up) the projector starts a feeder process
(``feeder_command()``) and the two fold the stretch between them, one core
each. The feeder takes the runs whose pathspec hashes into its share
(``FeedRequest.share``); every view an event touches belongs to the
event's run, so each view has one writer.

- The other runs' messages it writes to its stdout as frames: a header of
  the stream sequence and the lengths of the subject and the data, then
  the subject and the data.
- Its own runs' messages it decodes and folds (``ShardFolder``). Every
  ``mark_every`` sequences it writes a *mark*: the sequences it folded
  since the last mark and the rows of the views they changed (pickled).
- The projector folds the frames up to a mark, checks that frames and
  folded sequences cover every sequence since its checkpoint once, and
  writes its rows and the feeder's in one transaction with the mark as
  checkpoint. Then it writes the mark's sequence to the feeder's stdin.
  Until then the feeder keeps the views it changed, which the store has
  yet to see; views not in its cache it reads from the store
  (``ViewLoader``).

The feeder reads a push consumer off a socket of its own (``_wire``, signed
in as the settings say: token, credentials file, TLS), and through nats-py's
ordered consumer once that socket fails. While the pipe is full its writes block, and flow
control holds the rest on the server. On any failure of the feeder the
projector goes on with its own consumer from the last mark it committed.

The projector writes the request to the feeder's stdin first (pickled:
parent and child are the same program). To stop the feeder early it stops
reading: the feeder's next write fails and it exits.
"""

from __future__ import annotations

import gc
import os
import pickle
import struct
import sys
import threading
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from runstate.engine._connection import open_nats
from runstate.engine._jetstream import JetStreamEventLog
from runstate.engine._logging import configure_logging, get_logger
from runstate.engine._names import Subjects
from runstate.engine._settings import Settings
from runstate.engine.errors import InvalidEvent, InvalidName
from runstate.projections._folding import CommitDecoder, FoldPlan, ViewCache
from runstate.projections._gc import keep_heap_frozen, tune_gc_for_projection
from runstate.projections._store_write import ViewLoader, prepare_commit

if TYPE_CHECKING:
    from runstate.engine._events import Event
    from runstate.projections._store_write import PreparedCommit
    from runstate.projections._views import RunView, TaskView

__all__ = [
    "FeedRequest",
    "FeederError",
    "FrameReader",
    "Mark",
    "ShardFolder",
    "encode_acknowledgement",
    "encode_frame",
    "encode_mark",
    "encode_request",
    "feeder_command",
]

log = get_logger("runstate.feeder")

#: stream sequence, subject length, data length
_HEADER = struct.Struct(">QHI")
#: a longer subject or larger message is not a frame the feeder wrote
_MAX_SUBJECT = 4096
#: the subject length of a mark (which has no subject)
_MARK = 0xFFFF
_MAX_DATA = 64 * 1024 * 1024
_STDIN = 0
#: frames written to the pipe at a time (bytes)
_WRITE_BYTES = 256 * 1024
#: while the feeder folds runs, the youngest generation is collected every this many
#: allocations (as in the projector's process while it is fed)
_FOLDING_YOUNG_COLLECTIONS = 50_000


class FeederError(Exception):
    """The feeder stopped early or wrote something that is not a frame."""


def feeder_command() -> list[str]:
    """How the projector starts a feeder (``-m`` would warn: the package imports this module)."""
    return [sys.executable, "-c", "from runstate.projections._feeder import main; main()"]


@dataclass(frozen=True, slots=True)
class FeedRequest:
    """What the projector asks of a feeder."""

    settings: Settings
    #: the stream sequences to feed
    start: int
    stop: int
    #: the share of runs (0 to 1) the feeder folds itself
    share: float = 0.0
    #: the store the feeder reads views from, if it folds any
    store_path: str | None = None
    #: sequences between two marks
    mark_every: int = 5000
    #: views the feeder caches beyond those the store has yet to see
    cache_size: int = 20_000


@dataclass(slots=True)
class Mark:
    """Every sequence up to ``sequence`` was fed: as a frame, or folded by the feeder."""

    sequence: int
    #: the sequences folded by the feeder since the last mark
    folded: list[int] = field(default_factory=list)
    #: the rows of the views it changed, and its dead letters
    prepared: PreparedCommit | None = None
    #: events it folded
    events: int = 0


def encode_frame(sequence: int, subject: str, data: bytes) -> bytes:
    name = subject.encode()
    return _HEADER.pack(sequence, len(name), len(data)) + name + data


def encode_mark(mark: Mark) -> bytes:
    body = pickle.dumps(mark, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(mark.sequence, _MARK, len(body)) + body


class FrameReader:
    """Splits the feeder's output, which arrives in chunks of any size, into deliveries."""

    def __init__(self) -> None:
        self._pending = b""

    @property
    def partial(self) -> bool:
        """Bytes of an unfinished frame are held."""
        return bool(self._pending)

    def feed(self, chunk: bytes) -> list[tuple[int, str, bytes] | Mark]:
        data = self._pending + chunk if self._pending else chunk
        size = _HEADER.size
        end = len(data)
        deliveries: list[tuple[int, str, bytes] | Mark] = []
        position = 0
        while end - position >= size:
            sequence, subject_length, data_length = _HEADER.unpack_from(data, position)
            if (
                (subject_length > _MAX_SUBJECT and subject_length != _MARK)
                or data_length > _MAX_DATA
                or sequence == 0
            ):
                raise FeederError(
                    f"not a frame at byte {position} of a chunk: sequence {sequence}, "
                    f"subject of {subject_length} bytes, data of {data_length} bytes"
                )
            start = position + size
            if subject_length == _MARK:
                stop = start + data_length
                if stop > end:
                    break
                try:  # written by the feeder, a child process of this same program
                    mark = pickle.loads(data[start:stop])
                except Exception:  # anything that does not unpickle
                    mark = None
                if not isinstance(mark, Mark) or mark.sequence != sequence:
                    raise FeederError(
                        f"not a frame at byte {position} of a chunk: a mark that is none"
                    )
                deliveries.append(mark)
                position = stop
                continue
            stop = start + subject_length + data_length
            if stop > end:
                break
            subject = data[start : start + subject_length].decode()
            deliveries.append((sequence, subject, data[start + subject_length : stop]))
            position = stop
        self._pending = data[position:]
        return deliveries


# -- the child process -------------------------------------------------------------


def _widen_pipe(fd: int) -> None:
    """Let the pipe hold up to 1 MiB (64 KiB by default on Linux), where the system allows."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ShardFolder:
    """Folds the feeder's share of the runs between two marks (in the feeder's process)."""

    def __init__(
        self, subjects: Subjects, share: float, loader: ViewLoader, cache_size: int = 20_000
    ) -> None:
        self._prefix = subjects.prefix
        self._permille = round(share * 1000)
        self._decode = CommitDecoder(subjects).decode
        self._loader = loader
        self._cache = ViewCache(cache_size)
        # views changed since the last mark the projector acknowledged, which the store
        # has yet to see and the cache must not lose: by key, and by mark
        self._unacknowledged: dict[tuple[str, str], RunView | TaskView] = {}
        self._marks: deque[tuple[int, dict[tuple[str, str], RunView | TaskView]]] = deque()
        self._written: dict[str, Any] = {}
        self._acknowledged = 0
        self._takes: dict[str, bool] = {}
        self._folded: list[int] = []
        self._commits: list[tuple[int, list[Event]]] = []
        self._deadletters: list[tuple[int, str, str, bytes]] = []

    def takes(self, subject: str) -> bool:
        """Whether this subject's run is the feeder's to fold (by a hash of its pathspec)."""
        taken = self._takes.get(subject)
        if taken is None:
            # <prefix>.ev.<flow>.<run>.r or <prefix>.ev.<flow>.<run>.t.<step>.<task>; any
            # other subject is the projector's, which sets it aside
            parts = subject.split(".", 4)
            taken = (
                len(parts) == 5
                and parts[0] == self._prefix
                and parts[1] == "ev"
                and zlib.crc32(f"{parts[2]}/{parts[3]}".encode()) % 1000 < self._permille
            )
            if len(self._takes) >= 100_000:
                self._takes.clear()
            self._takes[subject] = taken
        return taken

    def add(self, sequence: int, subject: str, data: bytes) -> None:
        self._folded.append(sequence)
        try:
            events = self._decode(subject, data)
        except (InvalidEvent, InvalidName) as exc:
            self._deadletters.append((sequence, subject, exc.message, bytes(data)))
            return
        self._commits.append((sequence, events))

    def mark(self, sequence: int) -> Mark:
        """Fold what was added since the last mark; the mark, with the rows of what changed."""
        self._forget_acknowledged()
        plan = FoldPlan.of(self._commits, self._lookup)
        if plan.missing_runs or plan.missing_tasks:
            plan.loaded(
                self._loader.load_runs(plan.missing_runs),
                self._loader.load_tasks(plan.missing_tasks),
            )
        changed = plan.fold()
        plan.views.update(changed)
        self._cache.put(plan.views)
        self._unacknowledged.update(changed)
        self._marks.append((sequence, changed))
        runs = [view for key, view in changed.items() if key[0] == "run"]
        tasks = [view for key, view in changed.items() if key[0] == "task"]
        prepared = prepare_commit(
            runs,  # type: ignore[arg-type]
            tasks,  # type: ignore[arg-type]
            sequence,
            self._deadletters,
            self._written,
        )
        mark = Mark(
            sequence, self._folded, prepared, sum(len(events) for _, events in self._commits)
        )
        self._folded, self._commits, self._deadletters = [], [], []
        return mark

    def acknowledge(self, sequence: int) -> None:
        """The projector has committed the marks up to ``sequence`` (from any thread)."""
        self._acknowledged = sequence  # one assignment: the folder reads it at the next mark

    def _forget_acknowledged(self) -> None:
        """The store has the views of acknowledged marks: the cache need not keep them."""
        sequence = self._acknowledged
        while self._marks and self._marks[0][0] <= sequence:
            _, changed = self._marks.popleft()
            for key, view in changed.items():
                if self._unacknowledged.get(key) is view:
                    del self._unacknowledged[key]

    def _lookup(self, key: tuple[str, str]) -> Any:
        view = self._unacknowledged.get(key)
        return view if view is not None else self._cache.lookup(key)


class _Output:
    """What the feeder writes to stdout: frames, and marks, in order; how far it got."""

    def __init__(self, request: FeedRequest, folder: ShardFolder | None) -> None:
        self._request = request
        self._folder = folder
        self._out = sys.stdout.fileno()
        _widen_pipe(self._out)
        self._frames: list[bytes] = []
        self._held = 0
        self._last_mark = request.start - 1
        #: the next sequence to deliver
        self.following = request.start

    @property
    def done(self) -> bool:
        return self.following > self._request.stop

    def deliver(self, sequence: int, subject: str, data: bytes) -> None:
        """Frame (or fold) the next sequence; write a mark every ``mark_every`` sequences.

        Blocks while the pipe is full: the projector is behind, and flow
        control then holds the rest on the server. ``OSError``: the
        projector stopped reading.
        """
        self.following += 1
        folder = self._folder
        if folder is not None and folder.takes(subject):
            folder.add(sequence, subject, data)
        else:
            frame = encode_frame(sequence, subject, data)
            self._frames.append(frame)
            self._held += len(frame)
        if sequence - self._last_mark >= self._request.mark_every or sequence == self._request.stop:
            mark = folder.mark(sequence) if folder is not None else Mark(sequence)
            self._frames.append(encode_mark(mark))
            self._last_mark = sequence
            self._flush()
        elif self._held >= _WRITE_BYTES:
            self._flush()

    def _flush(self) -> None:
        _write_all(self._out, b"".join(self._frames))
        self._frames.clear()
        self._held = 0


async def _feed(request: FeedRequest) -> None:
    """Write the frames and marks of sequences ``start``..``stop`` to stdout, in order."""
    settings = request.settings
    subjects = Subjects(settings.prefix)
    folder: ShardFolder | None = None
    if request.share > 0 and request.store_path is not None:
        folder = ShardFolder(
            subjects, request.share, ViewLoader.open(request.store_path), request.cache_size
        )
        # it holds views, as a replica does: the same care with the collector (with the
        # defaults, collections of the older generations took half of the feeder's time)
        tune_gc_for_projection()
        gc.set_threshold(_FOLDING_YOUNG_COLLECTIONS, *gc.get_threshold()[1:])
    output = _Output(request, folder)

    def deliver(sequence: int, subject: str, data: bytes) -> bool:
        output.deliver(sequence, subject, data)
        return output.done

    nc = await open_nats(settings, name="runstate-feeder")
    try:
        async with anyio.create_task_group() as tg:
            if folder is not None:
                # a daemon thread: blocked in a read of stdin, it must not keep the feeder
                # from exiting (the projector holds stdin open until it has all it wants)
                threading.Thread(
                    target=_read_acknowledgements,
                    args=(folder,),
                    name="runstate-feeder-acknowledgements",
                    daemon=True,
                ).start()
                tg.start_soon(keep_heap_frozen)
            await JetStreamEventLog(nc, settings).drain(deliver, start=output.following)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await nc.close()


def _read_acknowledgements(folder: ShardFolder) -> None:
    """Hand the folder each acknowledgement the projector writes to stdin, until it closes it.

    Reads the file descriptor itself: a daemon thread blocked inside
    ``sys.stdin``'s buffer would hold its lock as the interpreter exits.
    """
    pending = b""
    while chunk := os.read(_STDIN, 4096):
        *lines, pending = (pending + chunk).split(b"\n")
        if lines:
            folder.acknowledge(int(lines[-1]))


def _read_request() -> FeedRequest:
    """The request at the start of stdin: its length on a line, then the pickle."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(_STDIN, 1)
        if not byte:
            raise FeederError("stdin ended before the request")
        line += byte
    body = b""
    length = int(line)
    while len(body) < length:
        chunk = os.read(_STDIN, length - len(body))
        if not chunk:
            raise FeederError("stdin ended inside the request")
        body += chunk
    request = pickle.loads(body)
    if not isinstance(request, FeedRequest):
        raise FeederError(f"a {type(request).__name__} is not a request")
    return request


async def _serve() -> None:
    await _feed(_read_request())


def encode_request(request: FeedRequest) -> bytes:
    """What the projector writes to the feeder's stdin first (acknowledgements follow)."""
    body = pickle.dumps(request)
    return b"%d\n" % len(body) + body


def encode_acknowledgement(sequence: int) -> bytes:
    """What the projector writes to the feeder's stdin once a mark is committed."""
    return b"%d\n" % sequence


def main() -> None:
    configure_logging("warning", force=True)
    try:
        anyio.run(_serve)
    except Exception as exc:
        if not all(isinstance(error, OSError) for error in _leaves(exc)):
            # the projector goes on from the last mark with its own consumer
            log.warning("feeder.failed", error=repr(exc))
        # (an OSError alone: the projector stopped reading, it has what it needs or went away)
        sys.exit(1)


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions in ``error``, out of any exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
