"""The package type-checks under mypy --strict and passes ruff, as STYLE.md asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_package_passes_mypy_strict(tmp_path: Path) -> None:
    """mypy --strict finds no issue in runstate.engine, .projections and .client."""
    # mypy cannot follow setuptools' editable import hook, so give it the
    # package layout the package-dir mapping describes, as symlinks.
    package = tmp_path / "runstate"
    package.mkdir()
    for folder in ("engine", "projections", "client"):
        (package / folder).symlink_to(ROOT / folder, target_is_directory=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "-p",
            "runstate",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_passes_ruff() -> None:
    """ruff (with the ASYNC, B and UP rule sets) finds nothing in the code or the tests."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "engine", "projections", "client", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
