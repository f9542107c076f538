"""A throwaway certificate authority for TLS tests: a CA, a server certificate for loopback
and client certificates, written as PEM files (made with the ``cryptography`` package)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    usages: list[x509.ObjectIdentifier] | None = None,
    loopback: bool = False,
) -> x509.Certificate:
    """A certificate of ``key`` for ``subject``, signed by ``issuer`` (None: a CA signing
    itself), valid from an hour ago for a day."""
    now = datetime.now(UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if loopback:
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def make_pki(directory: Path) -> Pki:
    """A CA in ``directory`` with a server certificate for 127.0.0.1 and localhost (for
    serving clients and for the routes between nodes, so it may act as either end) and a
    client certificate; and a client pair of another, untrusted CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _certificate("runstate test CA", ca_key, None)
    ca_path, _ = _write(directory, "ca", ca, ca_key)
    issuer = (ca.subject, ca_key)
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    server_key = _key()
    server = _certificate("nats", server_key, issuer, usages=both, loopback=True)
    server_paths = _write(directory, "server", server, server_key)
    client_key = _key()
    client = _certificate(
        "runstate-client", client_key, issuer, usages=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    client_paths = _write(directory, "client", client, client_key)
    other_key = _key()
    other_ca = _certificate("another CA", other_key, None)
    stranger_key = _key()
    stranger = _certificate(
        "stranger",
        stranger_key,
        (other_ca.subject, other_key),
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    stranger_paths = _write(directory, "stranger", stranger, stranger_key)
    return Pki(ca_path, *server_paths, *client_paths, *stranger_paths)
