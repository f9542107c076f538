"""The gateway's token registry: tokens stored hashed in a 0600 file, mapped to roles, revoked
at once for the registry that revokes and within a second for a gateway reading the file; and
``runstate auth token create|list|revoke``."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from runstate.client._gateway_tokens import (
    OWNER_TOKEN_FILE,
    ROLES,
    TOKENS_FILE,
    GatewayTokens,
    is_loopback,
    may,
)
from runstate.client.cli._main import cli
from runstate.engine.errors import BadFilter, ConfigurationError, NotFound


def test_a_token_is_stored_only_as_its_sha256_in_a_private_file(tmp_path: Path) -> None:
    """create returns a token the registry maps to its role; the file (0600) holds its
    SHA-256 and not the token."""
    registry = GatewayTokens(tmp_path / "conf" / TOKENS_FILE)
    token = registry.create("reader", "grafana")
    assert token.startswith("rs_") and len(token) > 40
    text = registry.path.read_text()
    assert token not in text and hashlib.sha256(token.encode()).hexdigest() in text
    assert stat.S_IMODE(registry.path.stat().st_mode) == 0o600
    assert registry.role_of(token) == "reader"
    assert registry.role_of(token + "x") is None
    assert [(e.name, e.role) for e in registry.entries()] == [("grafana", "reader")]


def test_names_default_by_role_and_must_be_new(tmp_path: Path) -> None:
    """Unnamed tokens are <role>-<n>; a name in use, an empty name or an unknown role is
    a BadFilter and changes nothing."""
    registry = GatewayTokens(tmp_path / TOKENS_FILE)
    registry.create("writer")
    registry.create("writer")
    assert [e.name for e in registry.entries()] == ["writer-1", "writer-2"]
    for role, name in [("writer", "writer-1"), ("writer", ""), ("owner", None)]:
        with pytest.raises(BadFilter):
            registry.create(role, name)
    assert len(registry.entries()) == 2


def test_revoking_refuses_the_token_and_a_gateway_notices_within_a_second(
    tmp_path: Path,
) -> None:
    """A revoked token has no role for the registry that revoked it at once, and for
    another reader of the file (a running gateway) after its next look; revoking a name
    that is not there is NotFound."""
    path = tmp_path / TOKENS_FILE
    editor, gateway = GatewayTokens(path), GatewayTokens(path)
    token = editor.create("admin", "me")
    assert gateway.role_of_now(token) == "admin"
    assert editor.revoke("me").role == "admin"
    assert editor.role_of(token) is None
    deadline = time.monotonic() + 10
    while gateway.role_of(token) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.role_of(token) is None
    with pytest.raises(NotFound, match="no gateway token is named 'me'"):
        editor.revoke("me")


def test_editors_at_once_lose_no_token(tmp_path: Path) -> None:
    """Tokens created from many threads at once (each with its own registry object, as
    separate commands have) are all kept."""
    path = tmp_path / TOKENS_FILE
    made: list[str] = []

    def create(n: int) -> None:
        made.append(GatewayTokens(path).create("reader", f"t{n}"))

    threads = [threading.Thread(target=create, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    registry = GatewayTokens(path)
    assert sorted(e.name for e in registry.entries()) == sorted(f"t{n}" for n in range(16))
    assert all(registry.role_of(token) == "reader" for token in made)


def test_the_owner_token_is_made_once_and_remade_when_revoked(tmp_path: Path) -> None:
    """owner_token writes an admin token to gateway-token (0600) and gives the same one
    later; once revoked it is replaced by a new one."""
    registry = GatewayTokens.in_data_dir(tmp_path)
    first = registry.owner_token(tmp_path)
    assert registry.role_of(first) == "admin"
    owner_file = tmp_path / OWNER_TOKEN_FILE
    assert owner_file.read_text().strip() == first
    assert stat.S_IMODE(owner_file.stat().st_mode) == 0o600
    assert registry.owner_token(tmp_path) == first
    registry.revoke("owner")
    second = registry.owner_token(tmp_path)
    assert second != first and registry.role_of(second) == "admin"
    assert [e.name for e in registry.entries()] == ["owner"]


def test_a_file_that_is_not_a_registry_is_a_configuration_error(tmp_path: Path) -> None:
    """A registry path holding something else is refused, saying what to do."""
    path = tmp_path / TOKENS_FILE
    path.write_text("not json")
    with pytest.raises(ConfigurationError, match="not a gateway token registry"):
        GatewayTokens(path)


def test_roles_are_ordered_and_loopback_is_recognised() -> None:
    """An admin may what a writer may, a writer what a reader may, not the other way;
    loopback addresses are 127/8, ::1 and localhost."""
    assert ROLES == ("reader", "writer", "admin")
    assert may("admin", "writer") and may("writer", "reader") and may("reader", "reader")
    assert not may("reader", "writer") and not may("writer", "admin")
    for host in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", ""):
        assert not is_loopback(host), host


def test_the_token_commands_create_list_and_revoke(tmp_path: Path) -> None:
    """runstate auth token create prints a token stored in the data directory's registry
    (or --tokens PATH); list shows names and roles, never tokens; revoke removes one."""
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data")]
    created = runner.invoke(
        cli, ["auth", "token", "create", "--role", "reader", "--name", "ci", *data]
    )
    assert created.exit_code == 0, created.output
    token = created.output.strip()
    registry = GatewayTokens.in_data_dir(tmp_path / "data")
    assert registry.role_of(token) == "reader"
    listed = runner.invoke(cli, ["auth", "token", "list", *data])
    assert listed.output.startswith("ci\treader\t") and token not in listed.output
    elsewhere = tmp_path / "secret" / "tokens.json"
    other = runner.invoke(
        cli, ["auth", "token", "create", "--role", "admin", "--tokens", str(elsewhere)]
    )
    assert (
        other.exit_code == 0 and GatewayTokens(elsewhere).role_of(other.output.strip()) == "admin"
    )
    again = runner.invoke(
        cli, ["auth", "token", "create", "--role", "reader", "--name", "ci", *data]
    )
    assert again.exit_code == 2 and "exists already" in again.output
    revoked = runner.invoke(cli, ["auth", "token", "revoke", "ci", *data])
    assert revoked.exit_code == 0 and "revoked ci (reader)" in revoked.output
    assert GatewayTokens.in_data_dir(tmp_path / "data").role_of(token) is None
    bad_role = runner.invoke(cli, ["auth", "token", "create", "--role", "root", *data])
    assert bad_role.exit_code == 2 and "'root' is not one of" in bad_role.output


def test_no_auth_is_refused_off_loopback(tmp_path: Path) -> None:
    """runstate web --no-auth and runstate server --no-http-auth on a host that is not
    loopback stop at once as bad input (exit status 2), saying why; nothing is started."""
    runner = CliRunner()
    env = {"RUNSTATE_DATA_DIR": str(tmp_path)}
    web = runner.invoke(cli, ["web", "--no-auth", "--host", "0.0.0.0"], env=env)
    assert web.exit_code == 2 and "--no-auth is for loopback only" in web.output
    server = runner.invoke(cli, ["server", "--no-http-auth", "--http-host", "10.1.2.3"], env=env)
    assert server.exit_code == 2 and "--no-http-auth is for loopback only" in server.output
    assert not os.listdir(tmp_path)
