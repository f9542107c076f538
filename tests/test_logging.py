"""Logging: importing runstate configures nothing; as a library it is quiet unless configured.

Each check runs in a fresh interpreter, since logging configuration is
process-wide and pytest's own capture would hide what a user sees.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def _python(code: str, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


#: starts and stops a nats-server, which logs "nats-server started" and "stopped" at info
_SERVER_ROUND_TRIP = """
    from runstate.engine._server import NatsServer

    with NatsServer(DATA):
        pass
"""


def test_importing_runstate_configures_no_logging(tmp_path: Path) -> None:
    """Importing engine, projections and client leaves structlog and stdlib logging unconfigured."""
    result = _python(
        """
        import logging
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        import runstate.engine, runstate.projections, runstate.client, runstate.client.compat
        import structlog
        assert not structlog.is_configured(), "structlog was configured"
        assert root.handlers == handlers and root.level == level, "the root logger changed"
        assert not logging.getLogger("runstate").handlers, "runstate added a handler"
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr


def test_library_info_logs_are_silent_by_default(tmp_path: Path) -> None:
    """A library call that logs at info prints nothing on stderr when nobody configured logging."""
    code = f"DATA = {str(tmp_path / 'nats')!r}\n" + textwrap.dedent(_SERVER_ROUND_TRIP)
    result = _python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_library_logs_reach_stdlib_logging_when_the_user_configures_it(tmp_path: Path) -> None:
    """With ``logging.basicConfig(level=INFO)`` the same call's info lines show, key=value."""
    code = (
        "import logging\nlogging.basicConfig(level=logging.INFO)\n"
        f"DATA = {str(tmp_path / 'nats')!r}\n" + textwrap.dedent(_SERVER_ROUND_TRIP)
    )
    result = _python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "INFO:runstate.server:nats-server started" in result.stderr
    assert "pid=" in result.stderr


def test_library_logs_go_through_structlog_once_the_application_configures_it(
    tmp_path: Path,
) -> None:
    """An application's structlog configuration receives runstate's events with their fields."""
    code = (
        "import structlog\nfrom structlog.testing import LogCapture\ncapture = LogCapture()\n"
        "structlog.configure(processors=[capture])\n"
        f"DATA = {str(tmp_path / 'nats')!r}\n"
        + textwrap.dedent(_SERVER_ROUND_TRIP)
        + "events = [e['event'] for e in capture.entries]\n"
        "assert events == ['nats-server started', 'nats-server stopped'], events\n"
        "assert capture.entries[0]['log_level'] == 'info'\n"
    )
    result = _python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_warnings_reach_stderr_by_default() -> None:
    """Unconfigured, a runstate warning reaches stderr through stdlib's last resort."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from runstate.engine._logging import get_logger\n"
            "get_logger('runstate.test').warning('disk.low', free=3)\n"
            "get_logger('runstate.test').info('hidden')\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "disk.low free=3\n"
