"""A throwaway certificate authority for TLS tests: a CA, a server certificate for loopback
and client certificates, written as PEM files (made by ``runstate.engine._certificates``, what
``runstate auth init --tls`` uses)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from runstate.engine._certificates import issue, new_ca, write_pair
from runstate.engine._tls_files import CA_FILE

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA's certificate, the server's pair, a client's pair, and a pair
    from another CA that the servers do not trust."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def make_pki(directory: Path) -> Pki:
    """A CA in ``directory`` with a server certificate for 127.0.0.1 and localhost (for
    serving clients and for the routes between nodes, so it may act as either end) and a
    client certificate; and a client pair of another, untrusted CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = new_ca("runstate test CA", days=1)
    ca_path = directory / CA_FILE
    ca_path.write_bytes(ca.certificate.public_bytes(Encoding.PEM))
    server = issue(ca, "nats", server=True, hosts=["localhost", "127.0.0.1"], days=1)
    server_paths = write_pair(directory, "server", *server)
    client_paths = write_pair(directory, "client", *issue(ca, "runstate-client", days=1))
    other = new_ca("another CA", days=1)
    stranger_paths = write_pair(directory, "stranger", *issue(other, "stranger", days=1))
    return Pki(ca_path, *server_paths, *client_paths, *stranger_paths)
