"""The ``runstate`` group with every command on it, and the console script."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from runstate.client.cli._app import cli
from runstate.client.cli._auth import auth, provision
from runstate.client.cli._auth_tokens import token
from runstate.client.cli._bench import bench
from runstate.client.cli._demo_command import demo
from runstate.client.cli._logs_command import logs
from runstate.client.cli._read import events, runs, show, watch
from runstate.client.cli._serve import projector, server
from runstate.client.cli._web import web

__all__ = ["cli", "main"]

for _command in (
    server,
    projector,
    provision,
    auth,
    web,
    demo,
    runs,
    show,
    watch,
    events,
    logs,
    bench,
):
    cli.add_command(_command)
auth.add_command(token)  # runstate auth token: the gateway's bearer tokens


def main(argv: Sequence[str] | None = None) -> None:
    """The ``runstate`` console script."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="runstate")
    finally:
        _flush_stdout()


def _flush_stdout() -> None:
    """Flush what is left for stdout; a reader that went away (``| head``) is no error."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # the interpreter flushes again on exit: let that go nowhere, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
