"""Where ``runstate auth init --tls`` puts its TLS files, and the server's tls block of them.

Kept apart from ``runstate.engine._certificates`` (which makes them, with the
``cryptography`` package of the ``tls`` extra) so that a client finds a role's
files, and a server's config names them, without that package.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TypedDict

__all__ = [
    "CA_FILE",
    "SERVER_NAME",
    "TLS_CONF",
    "TlsFiles",
    "client_tls_context",
    "render_tls_block",
    "tls_beside",
]

#: the CA's certificate
CA_FILE = "ca.pem"
#: the server's pair: ``server.pem`` and ``server-key.pem``
SERVER_NAME = "server"
#: the server's ``tls {}`` block, which ``auth.conf`` includes
TLS_CONF = "tls.conf"


class TlsFiles(TypedDict, total=False):
    """Settings' TLS fields, all three or none (``tls_beside``)."""

    tls_ca: Path
    tls_cert: Path
    tls_key: Path


def render_tls_block(directory: Path | str) -> str:
    """The nats-server ``tls {}`` block of the files in ``directory`` (as the server sees it).

    nats-server reads certificate paths from its working directory, not the
    config's, hence a full path.
    """
    return "\n".join(
        [
            "# runstate's TLS (runstate auth init --tls): every client and route must show a",
            "# certificate signed by ca.pem. auth.conf includes this file (the clients' port);",
            "# a cluster node also includes it inside its cluster block (the routes).",
            "tls {",
            f'  cert_file: "{directory}/{SERVER_NAME}.pem"',
            f'  key_file: "{directory}/{SERVER_NAME}-key.pem"',
            f'  ca_file: "{directory}/{CA_FILE}"',
            "  verify: true",
            "  timeout: 2",
            "}",
            "",
        ]
    )


def tls_beside(credentials: Path | None) -> TlsFiles:
    """Settings' ``tls_ca``, ``tls_cert`` and ``tls_key`` for the role whose credentials file
    (``<role>.nk`` or ``<role>.pass``) this is, when ``runstate auth init --tls`` wrote them
    beside it; else nothing."""
    if credentials is None:
        return {}
    directory, role = credentials.parent, credentials.stem
    ca, cert, key = directory / CA_FILE, directory / f"{role}.pem", directory / f"{role}-key.pem"
    if not (ca.is_file() and cert.is_file() and key.is_file()):
        return {}
    return TlsFiles(tls_ca=ca, tls_cert=cert, tls_key=key)


def client_tls_context(
    ca: Path | None, cert: Path | None, key: Path | None
) -> ssl.SSLContext | None:
    """A client's TLS context: verifying the server with ``ca`` (else the system's CAs),
    presenting ``cert`` and ``key`` if given; None without a CA or a certificate (no TLS
    asked for: a server that requires it then refuses the connection)."""
    if ca is None and cert is None:
        return None
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context
