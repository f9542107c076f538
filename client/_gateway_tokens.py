"""The HTTP gateway's bearer tokens: each maps to a role, and only its hash is stored.

A token is 32 random bytes (``secrets.token_urlsafe``, prefixed ``rs_`` so
it is recognisable in a leaked file or log). Being that random, it needs no
slow password hash: nobody can guess one, so the stored SHA-256 only has to
keep a stolen registry from being used as tokens, and SHA-256 lets the
gateway check a request with one hash and one dict lookup (about a
microsecond) instead of the tens of milliseconds a slow hash would add to
every request.

The registry is a JSON file, 0600 (``gateway-tokens.json`` in the data
directory unless a path is given): ``runstate auth token create|list|revoke``
edit it, and a running gateway picks changes up within a second. The owner's
own token (``gateway-token`` beside it, 0600, the token itself) is what
``runstate server`` and ``runstate web`` create so that the web view on
loopback works for its owner with no set-up, as the embedded server's NATS
credential does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from runstate.engine._private import PRIVATE_FILE, private_dir
from runstate.engine.errors import BadFilter, ConfigurationError, NotFound

__all__ = [
    "OWNER_TOKEN_FILE",
    "ROLES",
    "TOKENS_FILE",
    "GatewayTokens",
    "TokenEntry",
    "is_loopback",
    "may",
    "token_hash",
]

#: the gateway's roles, each allowed what the one before it is and more
ROLES = ("reader", "writer", "admin")

#: the registry's name in a data directory
TOKENS_FILE = "gateway-tokens.json"

#: the owner's token's name in a data directory (the token itself, 0600)
OWNER_TOKEN_FILE = "gateway-token"

#: the owner's token's name in the registry
OWNER = "owner"

#: seconds between two looks at the registry file for changes
_RELOAD_EVERY = 1.0

_PREFIX = "rs_"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``: where
    only this machine's processes can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_hash(token: str) -> str:
    """The hex SHA-256 of a token: what the registry stores."""
    return hashlib.sha256(token.encode()).hexdigest()


def may(role: str, needed: str) -> bool:
    """Whether ``role`` is allowed what ``needed`` is (an admin may write and read)."""
    return ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One token of the registry (never the token itself)."""

    name: str
    role: str
    sha256: str
    created_at: str


class GatewayTokens:
    """The registry of gateway tokens in ``path`` (read when used; absent: no tokens).

    ``role_of(token)`` is the gateway's check; ``create``, ``revoke`` and
    ``entries`` are what ``runstate auth token`` does.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._roles: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None
        self._looked = -_RELOAD_EVERY
        self._reload()

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> GatewayTokens:
        """The registry of a data directory (``gateway-tokens.json``)."""
        return cls(data_dir / TOKENS_FILE)

    # -- the gateway's check -------------------------------------------------------------

    def role_of(self, token: str) -> str | None:
        """The role of ``token``, None if the registry does not hold it (or no longer)."""
        now = time.monotonic()
        if now - self._looked >= _RELOAD_EVERY:
            self._looked = now
            self._reload()
        return self._roles.get(token_hash(token))

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._roles, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._roles = {entry.sha256: entry.role for entry in self.entries()}
            self._stamp = stamp

    # -- editing -------------------------------------------------------------------------

    def entries(self) -> list[TokenEntry]:
        """Every token's entry, oldest first; ``ConfigurationError`` for a file that is not
        a registry."""
        try:
            data = orjson.loads(self.path.read_bytes())
            return [TokenEntry(**entry) for entry in data["tokens"]]
        except FileNotFoundError:
            return []
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"{self.path} is not a gateway token registry ({exc}); move it away and "
                "create the tokens again with runstate auth token create"
            ) from None

    def create(self, role: str, name: str | None = None) -> str:
        """A new token of ``role``, stored hashed under ``name`` (default: ``<role>-<n>``);
        the token itself is returned, once. ``BadFilter`` for an unknown role or a name
        already in use."""
        if role not in ROLES:
            raise BadFilter(f"a gateway role is one of {', '.join(ROLES)}, not {role!r}")
        with self._editing():
            return self._create(role, name)

    def _create(self, role: str, name: str | None) -> str:
        entries = self.entries()
        names = {entry.name for entry in entries}
        if name is None:
            free = (f"{role}-{n}" for n in range(1, len(entries) + 2))
            name = next(candidate for candidate in free if candidate not in names)
        elif not name or name in names:
            raise BadFilter(
                f"a token named {name!r} exists already: revoke it first, or choose another name"
                if name
                else "a token's name cannot be empty"
            )
        token = _PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        entries.append(TokenEntry(name, role, token_hash(token), created))
        self._write(entries)
        return token

    def revoke(self, name: str) -> TokenEntry:
        """Remove the token named ``name``; ``NotFound`` when there is none."""
        with self._editing():
            return self._revoke(name)

    def _revoke(self, name: str) -> TokenEntry:
        entries = self.entries()
        kept = [entry for entry in entries if entry.name != name]
        if len(kept) == len(entries):
            known = ", ".join(entry.name for entry in entries) or "none"
            raise NotFound(f"no gateway token is named {name!r} (tokens: {known})")
        self._write(kept)
        (gone,) = [entry for entry in entries if entry.name == name]
        return gone

    @contextlib.contextmanager
    def _editing(self) -> Iterator[None]:
        """Hold the registry's lock while reading and writing it, so two editors at once
        (a server making its owner's token while ``auth token create`` runs) lose nothing."""
        private_dir(self.path.parent, tighten=False)
        lock = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # and the lock with it

    def _write(self, entries: list[TokenEntry]) -> None:
        """Replace the registry at once (a gateway reading it sees the old or the new)."""
        data = {"version": 1, "tokens": [_as_dict(entry) for entry in entries]}
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with _created(partial) as fd:
            os.write(fd, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(partial, self.path)
        self._reload()

    # -- the owner's token ---------------------------------------------------------------

    def owner_token(self, data_dir: Path) -> str:
        """The owner's admin token of ``data_dir`` (``gateway-token``, 0600), made now if
        it is missing or no longer in this registry."""
        path = data_dir / OWNER_TOKEN_FILE
        with self._editing():
            with contextlib.suppress(FileNotFoundError):
                token = path.read_text().strip()
                if self.role_of_now(token) is not None:
                    return token
            with contextlib.suppress(NotFound):
                self._revoke(OWNER)
            token = self._create("admin", OWNER)
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            with _created(partial) as fd:
                os.write(fd, token.encode() + b"\n")
            os.replace(partial, path)
        return token

    def role_of_now(self, token: str) -> str | None:
        """``role_of`` after reading the registry file again."""
        self._reload()
        return self._roles.get(token_hash(token))


def _as_dict(entry: TokenEntry) -> dict[str, str]:
    return {
        "name": entry.name,
        "role": entry.role,
        "sha256": entry.sha256,
        "created_at": entry.created_at,
    }


@contextlib.contextmanager
def _created(path: Path) -> Iterator[int]:
    """A new file at ``path``, 0600 whatever the umask, open for writing."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        yield fd
    finally:
        os.close(fd)
