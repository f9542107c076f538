"""Metaflow's namespaces: which runs reads see by default.

A namespace is a tag: ``user:alice`` (the default, the current user) or
``production:...``. ``namespace(None)`` sees every run. The setting is
process-wide, as in Metaflow; a ``Client`` may override it for itself.
"""

from __future__ import annotations

from typing import Final

from runstate.engine._settings import _default_user as user_of_process

__all__ = ["default_namespace", "get_namespace", "namespace"]


class _Default:
    def __repr__(self) -> str:
        return "<default namespace>"


DEFAULT: Final = _Default()

_current: str | _Default | None = DEFAULT
_default_user: str | None = None


def set_default_user(user: str) -> None:
    """Set the user whose ``user:<name>`` tag is the default namespace."""
    global _default_user
    _default_user = user


def namespace(ns: str | None) -> str | None:
    """Switch the namespace for reads (``None`` = all runs); returns the new namespace."""
    global _current
    if ns is not None and (not isinstance(ns, str) or not ns):
        raise ValueError("a namespace is a tag such as 'user:alice', or None for all runs")
    _current = ns
    return ns


def get_namespace() -> str | None:
    """The namespace reads use now."""
    if isinstance(_current, _Default):
        return default_namespace_value()
    return _current


def default_namespace() -> str | None:
    """Go back to the default namespace (``user:<current user>``) and return it."""
    global _current
    _current = DEFAULT
    return default_namespace_value()


def default_namespace_value() -> str | None:
    if _default_user is None:
        return f"user:{user_of_process()}"
    return f"user:{_default_user}"
