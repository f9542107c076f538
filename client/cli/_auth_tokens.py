"""``runstate auth token create|list|revoke``: the HTTP gateway's bearer tokens.

They edit the token registry (``runstate.client._gateway_tokens``): the data
directory's ``gateway-tokens.json`` unless ``--tokens PATH`` names another
(the file a Kubernetes Secret holds, say). A running gateway sees a change
within a second. Nothing here needs NATS or the web extra.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from runstate.client._gateway_tokens import OWNER_TOKEN_FILE, ROLES, GatewayTokens, is_loopback
from runstate.client.cli._app import current_options, global_options, reporting_errors
from runstate.engine.errors import ConfigurationError

__all__ = [
    "announce_access",
    "gateway_tokens",
    "owner_token",
    "token",
    "tokens_option",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def tokens_option(flag: str = "--tokens", dest: str = "path") -> Callable[[_F], _F]:
    """The ``--tokens PATH`` option (``runstate web`` and ``runstate server`` take it too)."""
    return click.option(
        flag,
        dest,
        type=click.Path(dir_okay=False, path_type=Path),
        help="The gateway's token registry. Default: <data-dir>/gateway-tokens.json.",
    )


def _registry(path: Path | None) -> GatewayTokens:
    if path is not None:
        return GatewayTokens(path)
    return GatewayTokens.in_data_dir(current_options().settings().data_dir)


@click.group()
def token() -> None:
    """The HTTP gateway's bearer tokens: create, list, revoke.

    A token has a role: reader (reads, event streams, pages, /metrics),
    writer (also writes) or admin (everything). Only its SHA-256 is
    stored; the token itself is printed once, by create.
    """


@token.command()
@global_options()
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the token may do.")
@click.option("--name", help="How list and revoke name it. Default: <role>-<n>.")
@tokens_option()
@reporting_errors
def create(role: str, name: str | None, path: Path | None) -> None:
    """Create a token and print it (only this once: it is stored hashed).

    \b
    Examples:
      runstate auth token create --role reader --name grafana
      TOKEN=$(runstate auth token create --role writer --name ci)
      curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8480/api/v1/flows
    """
    click.echo(_registry(path).create(role, name))


@token.command("list")
@global_options()
@tokens_option()
@reporting_errors
def list_tokens(path: Path | None) -> None:
    """List the tokens: name, role, when created (never the tokens themselves)."""
    for entry in _registry(path).entries():
        click.echo(f"{entry.name}\t{entry.role}\t{entry.created_at}")


@token.command()
@global_options()
@click.argument("name")
@tokens_option()
@reporting_errors
def revoke(name: str, path: Path | None) -> None:
    """Revoke the token named NAME: gateways refuse it within a second."""
    entry = _registry(path).revoke(name)
    click.echo(f"revoked {entry.name} ({entry.role})")


# -- what runstate web and runstate server ask for --------------------------------------


def gateway_tokens(
    data_dir: Path, path: Path | None, *, no_auth: bool, host: str, flag: str = "--no-auth"
) -> GatewayTokens | None:
    """The registry a gateway on ``host`` checks tokens against; None with ``no_auth``,
    which only a loopback host may have (``ConfigurationError`` otherwise)."""
    if no_auth:
        if not is_loopback(host):
            raise ConfigurationError(
                f"{flag} is for loopback only: on {host} anyone who reaches the gateway could "
                "read and write every run. Leave it out and give clients tokens "
                "(runstate auth token create --role reader)"
            )
        return None
    return GatewayTokens(path) if path is not None else GatewayTokens.in_data_dir(data_dir)


def owner_token(tokens: GatewayTokens | None, data_dir: Path, path: Path | None) -> str | None:
    """With the data directory's registry, the owner's token, made if need be (before the
    gateway is announced, so a client that reads the announcement finds it made): the
    owner's web view works with no set-up."""
    return tokens.owner_token(data_dir) if tokens is not None and path is None else None


def announce_access(
    tokens: GatewayTokens | None, owner: str | None, data_dir: Path, path: Path | None, url: str
) -> None:
    """Print how to get in: the owner's token (``owner_token``) as a sign-in link on a
    terminal (as Jupyter does) or as the file that holds it; or the registry given."""
    if tokens is None:
        click.echo("  no authentication (--no-auth): every local user may read and write")
        return
    if owner is not None:
        if sys.stdout.isatty():
            click.echo(f"  sign in: {url}/login?token={owner}")
        else:
            click.echo(f"  sign in with the token in {data_dir / OWNER_TOKEN_FILE}")
        return
    click.echo(f"  tokens: {path}")
    if not tokens.entries():
        click.echo(f"  no tokens yet: runstate auth token create --tokens {path} --role reader")
