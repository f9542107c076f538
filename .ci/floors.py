"""Print pip constraints pinning runstate's core dependencies to their floors.

Each ``name>=X`` of ``[project] dependencies`` in pyproject.toml becomes
``name==X``, so CI can run the suite once against the lowest versions the
package claims to work with (``.ci/run``). Extras are left free: the floors
users get by ``pip install runstate`` are the core ones.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)")


def floors(pyproject: Path) -> list[str]:
    """``name==floor`` for every core dependency of ``pyproject`` (each must have a floor)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    pins = []
    for requirement in project["dependencies"]:
        match = _FLOOR.match(requirement)
        if match is None:
            sys.exit(f"{requirement!r} has no >= floor for CI to test")
        pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(floors(root / "pyproject.toml")))
