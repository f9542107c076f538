"""``.ci/floors.py``: the constraints that pin the core dependencies to their floors, which
CI's second run (``.ci/run``) installs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _floors_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_floors", ROOT / ".ci" / "floors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_core_dependency_is_pinned_to_its_floor(tmp_path: Path) -> None:
    """``name>=X`` becomes ``name==X``, comments and markers aside, in order."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = [\n'
        '    "anyio>=4.4",\n    "nats-py >= 2.15",  # a comment\n'
        '    "pydantic>=2.7,<3",\n    "orjson>=3.10; python_version >= \'3.11\'",\n]\n'
        '[project.optional-dependencies]\ndev = ["pytest>=8.2"]\n'
    )
    assert _floors_module().floors(pyproject) == [
        "anyio==4.4",
        "nats-py==2.15",
        "pydantic==2.7",
        "orjson==3.10",
    ]


def test_a_dependency_without_a_floor_is_refused(tmp_path: Path) -> None:
    """CI cannot test the floor of a dependency that has none: it says which."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["anyio"]\n')
    with pytest.raises(SystemExit, match="'anyio' has no >= floor"):
        _floors_module().floors(pyproject)


def test_the_projects_floors_cover_every_core_dependency() -> None:
    """runstate's own pyproject: one pin per core dependency, anyio's and nats-py's among them."""
    import tomllib

    pins = _floors_module().floors(ROOT / "pyproject.toml")
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert len(pins) == len(dependencies)
    assert {pin.split("==")[0] for pin in pins} >= {"anyio", "nats-py", "pydantic", "structlog"}
