"""TLS certificates for the roles: a CA, a server certificate and one client certificate per role.

``runstate auth init --tls`` calls ``write_certificates`` after writing the
roles' credentials (``runstate.engine._credentials``). It writes, beside them:

- ``ca.pem``: the certificate of a new CA (its key is not kept: running it
  again makes a new CA, and every certificate with it);
- ``server.pem`` and ``server-key.pem``: the nats-server's pair, for
  ``localhost``, ``127.0.0.1`` and the ``hosts`` given, usable at both ends of
  a route between cluster nodes (serverAuth and clientAuth);
- ``<role>.pem`` and ``<role>-key.pem``: each role's client certificate;
- ``tls.conf``: the nats-server ``tls {}`` block (``verify: true``: every
  client must show a certificate of the CA), which ``auth.conf`` then
  includes; a cluster's nodes include it once more inside their ``cluster``
  block, for the routes.

Every file is 0600. This module needs the ``cryptography`` package (the
``tls`` extra), imported here: import this module only when asked for TLS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runstate.engine._credentials import AUTH_CONF
from runstate.engine._private import PRIVATE_FILE, private_dir
from runstate.engine._tls_files import CA_FILE, SERVER_NAME, TLS_CONF, render_tls_block

__all__ = ["Issuer", "issue", "new_ca", "write_certificates", "write_pair"]

#: how long what ``write_certificates`` makes is valid, in days
CA_DAYS = 3650
CERTIFICATE_DAYS = 825

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issuer:
    """A CA that signs: its certificate and its key."""

    certificate: x509.Certificate
    key: Key


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject: str, key: Key, issuer_name: x509.Name, days: int) -> x509.CertificateBuilder:
    # valid from an hour ago: a clock slightly behind still accepts it
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
    )


def new_ca(common_name: str, days: int = CA_DAYS) -> Issuer:
    """A new self-signed CA that may sign certificates (and nothing else)."""
    key = _new_key()
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    certificate = (
        _builder(common_name, key, _name(common_name), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issuer(certificate, key)


def _alternative_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(
    issuer: Issuer,
    common_name: str,
    *,
    server: bool = False,
    hosts: Sequence[str] = (),
    days: int = CERTIFICATE_DAYS,
) -> tuple[x509.Certificate, Key]:
    """A new key and its certificate signed by ``issuer``.

    ``server``: for a nats-server, which also dials the other nodes of a
    cluster with it, so both serverAuth and clientAuth (else clientAuth only).
    ``hosts``: its subject alternative names (IP addresses or DNS names).
    """
    key = _new_key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        _builder(common_name, key, issuer.certificate.subject, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if hosts:
        names = [_alternative_name(host) for host in dict.fromkeys(hosts)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer.key, hashes.SHA256()), key


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=PRIVATE_FILE)
    path.chmod(PRIVATE_FILE)  # before the secret is in it, whatever the umask or an old mode
    path.write_bytes(data)


def _certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def write_pair(
    directory: Path, name: str, certificate: x509.Certificate, key: Key
) -> tuple[Path, Path]:
    """``name.pem`` (the certificate) and ``name-key.pem`` (the key, PKCS#8), both 0600."""
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    _write_private(cert_path, _certificate_pem(certificate))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_bytes)
    return cert_path, key_path


def write_certificates(
    out: Path,
    roles: Sequence[str],
    *,
    hosts: Sequence[str] = (),
    server_dir: Path | str | None = None,
) -> list[Path]:
    """Write a new CA, the server's pair, each role's pair and ``tls.conf`` to ``out``, and
    make ``out``'s ``auth.conf`` (if there is one) include ``tls.conf``.

    ``hosts``: names or addresses the server is reached by, besides
    ``localhost`` and ``127.0.0.1``. ``server_dir``: where the server will find
    these files, written into ``tls.conf`` (default: ``out``, made absolute).
    Returns the paths written: ``tls.conf``, ``ca.pem``, the server's pair, then
    each role's certificate and key in the order of ``roles``.
    """
    private_dir(out)
    ca = new_ca("runstate CA")
    ca_path = out / CA_FILE
    _write_private(ca_path, _certificate_pem(ca.certificate))
    server = issue(ca, "nats", server=True, hosts=["localhost", "127.0.0.1", *hosts])
    written = [out / TLS_CONF, ca_path, *write_pair(out, SERVER_NAME, *server)]
    for role in roles:
        written += write_pair(out, role, *issue(ca, role))
    where = server_dir if server_dir is not None else out.resolve()
    _write_private(written[0], render_tls_block(where).encode())
    auth = out / AUTH_CONF
    include = f'include "{TLS_CONF}"\n'
    if auth.is_file() and include not in auth.read_text():
        # includes are relative to the including file: auth.conf's own directory
        with auth.open("a") as file:
            file.write(f"# TLS with client certificates (runstate auth init --tls)\n{include}")
    return written
