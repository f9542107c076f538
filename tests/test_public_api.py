"""The public surface: each exported name importable and exported once; modules declare __all__."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest

PUBLIC_MODULES = [
    "runstate.engine",
    "runstate.engine.errors",
    "runstate.projections",
    "runstate.client",
    "runstate.client.compat",
    "runstate.client.cli",
]

PACKAGES = ["runstate.engine", "runstate.projections", "runstate.client", "runstate.client.cli"]


def _all_modules() -> list[str]:
    names = list(PACKAGES)
    for package in PACKAGES:
        module = importlib.import_module(package)
        names += [f"{package}.{info.name}" for info in pkgutil.iter_modules(module.__path__)]
    return names


def _public(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exported_names_are_importable_and_unique(name: str) -> None:
    """Each name in a public module's __all__ is exported once and resolves to an object."""
    module = importlib.import_module(name)
    exported = module.__all__
    duplicates = sorted({n for n in exported if exported.count(n) > 1})
    assert not duplicates, f"{name}.__all__ repeats {duplicates}"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names {missing}, which it does not define"
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)
    assert set(exported) <= set(namespace)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exported_names_are_sorted(name: str) -> None:
    """A public module's __all__ is sorted, so a repeat or a gap shows in review."""
    exported = importlib.import_module(name).__all__
    assert exported == sorted(exported)


def test_every_public_module_declares_all() -> None:
    """Every module without a leading underscore in its name declares __all__."""
    public = [name for name in _all_modules() if _public(name)]
    assert set(PUBLIC_MODULES) <= set(public)
    lacking = [n for n in public if not isinstance(getattr(_module(n), "__all__", None), list)]
    assert not lacking, f"public modules without __all__: {lacking}"


def test_private_modules_export_only_what_they_define() -> None:
    """A private module that declares __all__ lists only names it defines, each once."""
    for name in _all_modules():
        if _public(name) or name.endswith("__main__"):
            continue
        module = _module(name)
        exported = module.__dict__.get("__all__")
        if exported is None:
            continue
        assert len(set(exported)) == len(exported), f"{name}.__all__ has repeats"
        missing = [n for n in exported if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names {missing}, which it does not define"


def test_packages_reexport_their_public_names_from_private_modules() -> None:
    """What a package exports is the object its private module defines, not a copy."""
    import runstate.client as client
    import runstate.client._objects as objects
    import runstate.engine as engine
    import runstate.engine._commits as commits
    import runstate.engine._typing as typing

    assert client.Run is objects.Run and client.Flow is objects.Flow
    assert engine.EventLog is typing.EventLog and client.Receipt is commits.Receipt


def test_client_exports_every_exception() -> None:
    """Every RunstateError subclass is importable from runstate.client and named in its __all__."""
    import runstate.client as client
    import runstate.engine.errors as errors

    exceptions = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.RunstateError)
    }
    assert "NotFound" in exceptions and "RunstateError" in exceptions
    missing = sorted(exceptions - set(client.__all__))
    assert not missing, f"runstate.client does not export {missing}"
    assert all(getattr(client, name) is getattr(errors, name) for name in exceptions)


def test_importing_the_client_loads_no_command_line_dependency() -> None:
    """``import runstate.client`` (and its compat facade) loads neither click nor rich, nor
    the web gateway's FastAPI, Starlette or uvicorn."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, runstate.client, runstate.client.compat\n"
            "print(sorted(m for m in ('click', 'rich', 'fastapi', 'starlette', 'uvicorn')"
            " if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_command_line_loads_no_test_dependency() -> None:
    """The command line, ``runstate bench`` included, imports no dev-only pytest or hypothesis."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, runstate.client.cli._main\n"
            "print(sorted(m for m in ('pytest', 'hypothesis') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)
