"""Directories 0700 and files 0600: what runstate keeps on disk is its owner's alone.

A data directory holds the whole log (JetStream's files), the read store
(every run, parameter and artifact) and how to reach and control the
embedded server. Another local account must not read or change any of it,
so runstate creates what it stores with owner-only modes, whatever the
umask, and tightens a data directory made wider by an earlier version.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["PRIVATE_DIR", "PRIVATE_FILE", "PRIVATE_UMASK", "private_dir", "private_file"]

#: the mode of a directory runstate creates
PRIVATE_DIR = 0o700
#: the mode of a file runstate creates
PRIVATE_FILE = 0o600
#: the umask of processes runstate starts (nats-server's JetStream store and log)
PRIVATE_UMASK = 0o077


def private_dir(path: Path, *, tighten: bool = True) -> Path:
    """Create ``path`` (and its parents) with mode 0700; return it.

    ``tighten``: an existing directory this user owns is set to 0700 too (a
    data directory made by an earlier version was 0755). Parents created on
    the way get the usual modes: only the last directory holds runstate's data.
    """
    existed = path.is_dir()
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if tighten or not existed:  # mkdir's mode is masked by the umask: set it exactly
        _chmod_if_owned(path, PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist, else set it to 0600; return it.

    For a file another process opens afterwards (SQLite and its ``-wal`` and
    ``-shm`` files, which take the main file's mode). An existing file owned
    by another user is left as it is.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    os.close(fd)
    _chmod_if_owned(path, PRIVATE_FILE)
    return path


def _chmod_if_owned(path: Path, mode: int) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_uid == os.geteuid() and path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
