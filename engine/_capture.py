"""Capturing a task's output inside its block: ``print``, ``sys.stdout``/``sys.stderr`` and
``logging``, each write routed to the task whose block is running.

The task is found by a context variable, set for the block: anyio tasks
started inside it inherit it, and so do threads started with the block's
context (``anyio.to_thread.run_sync``, ``contextvars.copy_context().run``),
so tasks running concurrently in one process never mix their output. A
write with no task in its context is left alone.

- ``sys.stdout`` and ``sys.stderr`` are replaced, while any block captures,
  by tees that write to the real stream first (users still see their
  output) and then to the task's ``LogBuffer``. They are put back when the
  last capturing block exits, unless something else replaced them since.
- One ``logging`` handler on the root logger writes each record that
  reaches it to the task's stderr, formatted as ``logging.basicConfig``
  does. A ``logging.StreamHandler`` writing that record to ``sys.stderr``
  would make the tee capture it a second time, so the tees leave writes
  made by the ``logging`` module to the handler. Where the handler is the
  only one a record reaches, the record still goes to the terminal as
  logging's last resort would have sent it.
- runstate's own records (loggers ``runstate.*``) are not a task's output,
  and a task's lines are sent outside its context (``not_capturing``), so
  nothing runstate does while sending is captured again.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, TextIO

from runstate.engine._lines import STDERR, STDOUT
from runstate.engine._log_writer import LogBuffer

__all__ = ["capturing", "not_capturing"]

_current: ContextVar[LogBuffer | None] = ContextVar("runstate_task_output", default=None)

#: the globals of the ``logging`` module: a write made from its code is a record's
_LOGGING = vars(logging)


class _Tee:
    """Stands for ``sys.stdout`` or ``sys.stderr``: writes to the real stream, then to the
    task of the writer's context."""

    def __init__(self, real: TextIO, stream: int) -> None:
        self.real = real
        self._stream = stream

    def write(self, text: str) -> int:
        written = self.real.write(text)
        buffer = _current.get()
        if buffer is not None and sys._getframe(1).f_globals is not _LOGGING:
            buffer.write(self._stream, text)
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _TaskHandler(logging.Handler):
    """Writes each record of a task's context to the task's stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(logging.BASIC_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        buffer = _current.get()
        if buffer is None or record.name == "runstate" or record.name.startswith("runstate."):
            return
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        buffer.write_lines(STDERR, text)
        last_resort = logging.lastResort
        if (
            last_resort is not None
            and record.levelno >= last_resort.level
            and not self._others_handle(record)
        ):
            last_resort.handle(record)

    def _others_handle(self, record: logging.LogRecord) -> bool:
        """Whether a handler besides this one gets ``record`` (else logging would have
        used its last resort)."""
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


_guard = threading.Lock()
_users = 0
_tees: list[_Tee] = []
_handler = _TaskHandler()


def _install() -> None:
    global _users
    with _guard:
        _users += 1
        if _users > 1:
            return
        if sys.stdout is not None:
            sys.stdout = _Tee(sys.stdout, STDOUT)
            _tees.append(sys.stdout)
        if sys.stderr is not None:
            sys.stderr = _Tee(sys.stderr, STDERR)
            _tees.append(sys.stderr)
        logging.getLogger().addHandler(_handler)


def _uninstall() -> None:
    global _users
    with _guard:
        _users -= 1
        if _users:
            return
        for tee in _tees:
            if sys.stdout is tee:
                sys.stdout = tee.real
            elif sys.stderr is tee:
                sys.stderr = tee.real
        _tees.clear()
        logging.getLogger().removeHandler(_handler)


@contextlib.contextmanager
def capturing(buffer: LogBuffer) -> Iterator[None]:
    """Send what the block's context writes to stdout, stderr and ``logging`` to ``buffer``
    (and still to the terminal); end its unfinished lines at the exit."""
    _install()
    token = _current.set(buffer)
    try:
        yield
    finally:
        try:
            _current.reset(token)
        except ValueError:  # left in another context than it was entered in
            _current.set(None)
        _uninstall()
        buffer.end_lines()


@contextlib.contextmanager
def not_capturing() -> Iterator[None]:
    """Capture nothing in this context while the block runs (runstate sending lines)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)
