"""structlog set-up: key-value events on stderr, JSON when stderr is not a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog

__all__ = ["configure_logging"]


def configure_logging(
    level: str | None = None, *, json: bool | None = None, force: bool = False
) -> None:
    """Configure structlog for runstate unless the application already did.

    ``level`` defaults to ``RUNSTATE_LOG_LEVEL`` or ``info``; ``json`` defaults
    to "stderr is not a tty". Pass ``force=True`` to reconfigure.
    """
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
