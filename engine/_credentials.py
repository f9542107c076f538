"""Credentials for the roles: generated (``runstate auth init``) and read back to connect.

``write_authorization`` makes one NATS user per role, with an nkey (the
default: the server keeps only the public key) or a password, and writes:

- ``auth.conf``: a nats-server ``authorization`` block with every user and
  its permissions (``runstate.engine._roles``), for a server config to
  ``include``;
- ``<role>.nk`` (an nkey seed, nats-py's ``nkeys_seed``) or ``<role>.pass``
  (``user:`` and ``password:`` lines): one credentials file per role, and
  ``projector-queries.nk`` (or ``.pass``): the projector's second user, which
  answers queries in the clients' account (``queries_beside`` finds it).

All are 0600 in a 0700 directory: each holds a secret. ``connection_options``
turns any credentials file runstate accepts (those two, or a NATS ``.creds``
file with a user JWT) into nats-py's ``connect`` options.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]

from runstate.engine._private import PRIVATE_FILE, private_dir
from runstate.engine._roles import (
    INBOX,
    JETSTREAM_SERVICES,
    QUERIES_USER,
    ROLES,
    Permissions,
    accounts,
    admin_subjects,
    in_streams_account,
    query_permissions,
    role_permissions,
    stored_subjects,
)
from runstate.engine.errors import ConfigurationError

__all__ = [
    "AUTH_CONF",
    "RoleCredential",
    "connect_fields",
    "connection_options",
    "new_credentials",
    "queries_beside",
    "render_authorization",
    "write_authorization",
]

#: the authorization block's file name in the output directory
AUTH_CONF = "auth.conf"

_SEED = re.compile(r"SU[A-Z2-7]{56}")
_JWT_MARK = "-----BEGIN NATS USER JWT-----"


@dataclass(frozen=True, slots=True)
class RoleCredential:
    """One role's user: its name, its nkey (seed and public key) or its password.

    ``role`` names the user (and its file): a role, or ``projector-queries``.
    """

    role: str
    permissions: Permissions
    seed: str | None = None
    public_key: str | None = None
    password: str | None = None
    #: whether the user signs in to JetStream's own account (``in_streams_account``)
    streams_account: bool = False

    @property
    def file_name(self) -> str:
        """The role's credentials file: ``<role>.nk`` or ``<role>.pass``."""
        return f"{self.role}.nk" if self.seed is not None else f"{self.role}.pass"

    def file_text(self) -> str:
        if self.seed is not None:
            return self.seed + "\n"
        return (
            f"# runstate credentials of the {self.role} role\n"
            f"user: {self.role}\npassword: {self.password}\n"
        )


def new_credentials(
    prefix: str = "rs",
    *,
    writer_flows: Sequence[str] | None = None,
    passwords: bool = False,
) -> list[RoleCredential]:
    """A fresh user for every role (new nkeys, or new random passwords), and the
    projector's second one (``QUERIES_USER``), last."""
    made = []
    for role in (*ROLES, QUERIES_USER):
        if role == QUERIES_USER:
            permissions, streams = query_permissions(prefix), False
        else:
            permissions = role_permissions(role, prefix, writer_flows=writer_flows)
            streams = in_streams_account(role, writer_flows)
        if passwords:
            password = secrets.token_urlsafe(24)
            made.append(
                RoleCredential(role, permissions, password=password, streams_account=streams)
            )
            continue
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        public = nkeys.from_seed(bytearray(seed)).public_key.decode()
        made.append(
            RoleCredential(
                role, permissions, seed=seed.decode(), public_key=public, streams_account=streams
            )
        )
    return made


def _quoted(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def _users(credentials: Sequence[RoleCredential]) -> list[str]:
    lines = ["    users = ["]
    for credential in credentials:
        who = (
            f'nkey: "{credential.public_key}"'
            if credential.public_key is not None
            else f'user: "{credential.role}", password: "{credential.password}"'
        )
        lines += [
            f"      # {credential.role}",
            f"      {{{who}, permissions: {{",
            f"        publish: {{allow: {_quoted(credential.permissions.publish)}}}",
            f"        subscribe: {{allow: {_quoted(credential.permissions.subscribe)}}}",
            "      }}",
        ]
    return [*lines, "    ]"]


def render_authorization(credentials: Sequence[RoleCredential], prefix: str = "rs") -> str:
    """The nats-server ``accounts`` block of these users: JetStream in an account of its own.

    The streams live in an account the admin, the projector and a writer of every
    flow sign in to (``in_streams_account``); readers and flow-limited writers are in
    the clients' account, which imports JetStream's API, acks and
    flow control and every stored subject as services, and the push consumers'
    deliveries (to inboxes) as a stream. A JetStream answer comes back to the
    clients' account on the reply subject the requester gave and goes no further,
    so a reader naming an event subject or a key as its reply stores nothing
    (``runstate.engine._roles.accounts``). Queries cross nothing: each account has
    a user of the projector's answering them (``projector`` and ``projector-queries``).
    """
    streams, clients = accounts(prefix)
    services = [*JETSTREAM_SERVICES, *stored_subjects(prefix), admin_subjects(prefix)]
    lines = [
        "# runstate roles (runstate auth init): one user per role, with exact permissions.",
        "# Generated; include it from the server's config: include auth.conf",
        "accounts {",
        "  # JetStream and every stream and bucket of runstate; the admin, the projector",
        "  # and a writer of every flow sign in here: what they move crosses no import",
        f"  {streams} {{",
        "    jetstream: enabled",
        "    exports = [",
    ]
    for subject in services:
        streamed = ", response_type: stream" if subject == "$JS.API.>" else ""
        lines.append(f'      {{service: "{subject}"{streamed}}}')
    lines += [f'      {{stream: "{INBOX}"}}', "    ]"]
    lines += _users([c for c in credentials if c.streams_account])
    lines += ["  }", f"  {clients} {{", "    imports = ["]
    for subject in services:
        lines.append(f'      {{service: {{account: {streams}, subject: "{subject}"}}}}')
    lines += [f'      {{stream: {{account: {streams}, subject: "{INBOX}"}}}}', "    ]"]
    lines += _users([c for c in credentials if not c.streams_account])
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.chmod(path, PRIVATE_FILE)  # an existing file keeps its mode through O_CREAT


def write_authorization(
    out: Path,
    prefix: str = "rs",
    *,
    writer_flows: Sequence[str] | None = None,
    passwords: bool = False,
) -> list[Path]:
    """Make a user per role and write ``auth.conf`` and a credentials file per role to ``out``.

    ``out`` is created 0700 and every file 0600. Returns the paths written,
    ``auth.conf`` first. Files already there are replaced: the old users are
    gone once the server loads the new block.
    """
    private_dir(out)
    credentials = new_credentials(prefix, writer_flows=writer_flows, passwords=passwords)
    written = [out / AUTH_CONF]
    _write_private(written[0], render_authorization(credentials, prefix))
    for credential in credentials:
        path = out / credential.file_name
        _write_private(path, credential.file_text())
        written.append(path)
    return written


def queries_beside(credentials: Path | None) -> Path | None:
    """The credentials of the projector's user in the clients' account, when
    ``runstate auth init`` wrote them beside ``credentials`` (the projector's
    ``projector.nk`` or ``.pass``): ``projector-queries.nk`` or ``.pass``; else None."""
    if credentials is None or credentials.stem != "projector":
        return None
    found = credentials.with_name(f"{QUERIES_USER}{credentials.suffix}")
    return found if found.is_file() else None


def connection_options(path: Path) -> dict[str, Any]:
    """nats-py's ``connect`` options for a credentials file runstate accepts.

    An nkey seed file (``<role>.nk``), a ``user:``/``password:`` file
    (``<role>.pass``), or a NATS ``.creds`` file (a user JWT and its seed).
    Raises ``ConfigurationError`` for anything else, before connecting.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the credentials file {path}: {exc}") from None
    if _JWT_MARK in text:
        return {"user_credentials": str(path)}
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if len(lines) == 1 and _SEED.fullmatch(lines[0]):
        return {"nkeys_seed": str(path)}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    user, password = fields.get("user", "").strip(), fields.get("password", "").strip()
    if user and password and set(fields) == {"user", "password"}:
        return {"user": user, "password": password}
    raise ConfigurationError(
        f"{path} is not a credentials file runstate knows: give an nkey seed file (one SU... "
        "line), a user:/password: file (both from runstate auth init) or a NATS .creds file"
    )


def connect_fields(path: Path, nonce: str | None) -> dict[str, Any]:
    """The fields of a NATS ``CONNECT`` that sign in with a credentials file runstate accepts,
    for a server whose ``INFO`` gave ``nonce``: what nats-py sends for the same file, for a
    client speaking the protocol itself (``runstate.engine._wire``).

    ``ConfigurationError`` as ``connection_options``, or when an nkey needs a nonce the
    server did not give.
    """
    options = connection_options(path)
    if "user" in options:
        return {"user": options["user"], "pass": options["password"]}
    text = path.read_text()
    fields: dict[str, Any] = {}
    if "user_credentials" in options:
        lines = [line.strip() for line in text.splitlines()]
        fields["jwt"] = lines[lines.index(_JWT_MARK) + 1]
        found = _SEED.search(text)
        if found is None:
            raise ConfigurationError(f"{path} has a user JWT but no nkey seed to sign with")
        seed = found.group(0)
    else:
        seed = text.strip()
    if nonce is None:
        raise ConfigurationError(f"the server asked for no signature: {path} cannot sign in")
    key = nkeys.from_seed(bytearray(seed.encode()))
    try:
        fields["sig"] = base64.b64encode(key.sign(nonce.encode())).decode()
        if "jwt" not in fields:
            fields["nkey"] = key.public_key.decode()
    finally:
        key.wipe()
    return fields
