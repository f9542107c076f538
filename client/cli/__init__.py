"""runstate.client.cli: the ``runstate`` command line, its terminal rendering, the demo and the
benchmarks.

``main`` is the console script; ``cli`` the click group, for embedding or testing
(``click.testing.CliRunner().invoke(cli, [...])``). The library itself is
``runstate.client``, which imports nothing from here.
"""

from runstate.client.cli._main import cli as cli
from runstate.client.cli._main import main as main

__all__ = ["cli", "main"]
