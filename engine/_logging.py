"""Logging: quiet as a library, structlog key-value lines when an entry point configures it.

Every runstate module logs through ``get_logger(name)``. Importing runstate
configures nothing. Until someone configures structlog, a log call goes to
the stdlib ``logging`` logger of that name, so stdlib's defaults apply
(warnings and errors reach stderr, the rest is dropped) and an
application's ``logging.basicConfig(level=logging.DEBUG)`` shows
everything. Once structlog is configured (by the application, or by a
runstate entry point through ``configure_logging``), calls go through
structlog. structlog itself is imported only by ``configure_logging``:
it loads rich, which a library user may not want.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["Logger", "configure_logging", "get_logger"]


class Logger:
    """A logger of one name that picks structlog or stdlib ``logging`` at each call.

    The choice is made per call, so a module-level ``log = get_logger(...)``
    follows whatever the application configures later.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (its traceback)."""
        fields.setdefault("exc_info", True)
        self._log(logging.ERROR, event, fields)

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        # not imported: then nobody configured it (and importing it would load rich)
        structlog = sys.modules.get("structlog")
        if structlog is not None and structlog.is_configured():
            method = logging.getLevelName(level).lower()
            getattr(structlog.get_logger(self.name), method)(event, **fields)
            return
        std = logging.getLogger(self.name)
        if not std.isEnabledFor(level):
            return
        exc_info = fields.pop("exc_info", None)
        message = " ".join([event, *(f"{key}={value!r}" for key, value in fields.items())])
        std.log(level, "%s", message, exc_info=exc_info, stacklevel=3)


def get_logger(name: str) -> Logger:
    """The logger runstate module ``name`` logs through (``runstate.projector``, ...)."""
    return Logger(name)


def configure_logging(
    level: str | None = None, *, json: bool | None = None, force: bool = False
) -> None:
    """Configure structlog for the whole process; for entry points only, never at import.

    ``level`` defaults to ``RUNSTATE_LOG_LEVEL`` or ``info``; ``json`` defaults
    to "stderr is not a tty". Does nothing when structlog is configured
    already (by the application), unless ``force=True``.
    """
    import structlog

    if structlog.is_configured() and not force:
        return
    name = (level or os.environ.get("RUNSTATE_LOG_LEVEL") or "info").upper()
    threshold = logging.getLevelNamesMapping().get(name, logging.INFO)
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
