"""runstate.client.cli: the ``runstate`` command line, its terminal rendering, the demo and the
benchmarks.

``main`` is the console script; ``cli`` the click group, for embedding or testing
(``click.testing.CliRunner().invoke(cli, [...])``). The library itself is
``runstate.client``, which imports nothing from here.

Both load every command on first use, not on import: the local runstate a
client starts (``python -m runstate.client.cli._serve``) imports only the
server's modules, and answers sooner for it.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runstate.client.cli._main import cli as cli
    from runstate.client.cli._main import main as main

__all__ = ["cli", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from runstate.client.cli import _main

        return getattr(_main, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
