"""``runstate auth init --tls``: a CA, the server's and each role's certificates and the server's
tls block, next to the roles' credentials. A real nats-server started with the generated
``auth.conf`` (which includes ``tls.conf``) serves each role with its certificate and refuses a
client without one at once."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from _drain import drained_off_the_wire
from click.testing import CliRunner
from cryptography import x509

from runstate.client import connect
from runstate.client.cli import cli
from runstate.engine import Settings
from runstate.engine._connection import open_nats, provision_server
from runstate.engine._roles import QUERIES_USER, ROLES
from runstate.engine._server import NatsServer
from runstate.engine.errors import ConfigurationError

pytestmark = pytest.mark.anyio

CERTIFICATES = ["ca.pem", "server.pem", "server-key.pem", "tls.conf"] + [
    f"{role}{suffix}" for role in ROLES for suffix in (".pem", "-key.pem")
]


def _init(out: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["auth", "init", "--out", str(out), "--tls", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_auth_init_tls_writes_private_certificates_for_every_role(tmp_path: Path) -> None:
    """Every file is 0600 in a 0700 directory; the server's certificate names loopback and the
    hosts given; each role's certificate is a client certificate with the role's name;
    auth.conf includes tls.conf, a verifying block of the directory's files."""
    out = tmp_path / "auth"
    output = _init(out, "--tls-host", "n1,n2", "--tls-host", "10.0.0.7")
    names = sorted(path.name for path in out.iterdir())
    nkeys = [f"{role}.nk" for role in (*ROLES, QUERIES_USER)]
    assert names == sorted(["auth.conf", *nkeys, *CERTIFICATES])
    assert out.stat().st_mode & 0o777 == 0o700
    assert {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()} == dict.fromkeys(
        names, 0o600
    )
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    alternative = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alternative.get_values_for_type(x509.DNSName) == ["localhost", "n1", "n2"]
    assert [str(a) for a in alternative.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "10.0.0.7",
    ]
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    for role in ROLES:
        certificate = x509.load_pem_x509_certificate((out / f"{role}.pem").read_bytes())
        certificate.verify_directly_issued_by(ca)
        assert certificate.subject.rfc4514_string() == f"CN={role}"
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (out / "auth.conf").read_text().endswith('include "tls.conf"\n')
    block = (out / "tls.conf").read_text()
    assert "verify: true" in block and f'ca_file: "{out.resolve()}/ca.pem"' in block
    assert f"RUNSTATE_TLS_CERT={out / 'writer'}.pem" in output


def test_tls_dir_sets_the_paths_the_server_reads(tmp_path: Path) -> None:
    """--tls-dir: tls.conf names the files where the server will find them."""
    _init(tmp_path / "auth", "--tls-dir", "/etc/runstate/auth")
    block = (tmp_path / "auth" / "tls.conf").read_text()
    assert 'cert_file: "/etc/runstate/auth/server.pem"' in block


def test_tls_host_without_tls_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["auth", "init", "--out", str(tmp_path / "a"), "--tls-host", "x"]
    )
    assert result.exit_code != 0 and "go with --tls" in result.output
    assert not (tmp_path / "a").exists()


def test_tls_without_cryptography_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the cryptography package, --tls says which extra to install, and writes nothing."""
    monkeypatch.setitem(sys.modules, "cryptography", None)
    result = CliRunner().invoke(cli, ["auth", "init", "--out", str(tmp_path / "a"), "--tls"])
    assert result.exit_code == 1
    assert "pip install 'runstate[tls]'" in result.output
    assert not (tmp_path / "a").exists()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[NatsServer, Path]]:
    """A nats-server whose config includes only the generated auth.conf; streams provisioned
    by the admin role with its certificate."""
    out = tmp_path / "auth"
    _init(out)
    config = tmp_path / "server.conf"
    config.write_text(
        f'jetstream {{ store_dir: "{tmp_path / "nats"}" }}\ninclude "auth/auth.conf"\n'
    )
    server = NatsServer(tmp_path / "nats", config_file=config)
    server.start()
    try:
        anyio.run(provision_server, _settings(server, out, "admin", tmp_path))
        yield server, out
    finally:
        server.stop()


def _settings(
    server: NatsServer, out: Path, role: str, tmp_path: Path, tls: bool = True
) -> Settings:
    files = (
        {
            "tls_ca": out / "ca.pem",
            "tls_cert": out / f"{role}.pem",
            "tls_key": out / f"{role}-key.pem",
        }
        if tls
        else {"tls_ca": out / "ca.pem"}
    )
    return Settings(
        nats_url=server.url,
        credentials=out / f"{role}.nk",
        data_dir=tmp_path / role,
        retry_budget=600,  # a refusal that were retried would fail the test's timeout
        **files,  # type: ignore[arg-type]
    )


async def test_each_role_connects_with_its_certificate_and_none_without(
    tls_server: tuple[NatsServer, Path], tmp_path: Path
) -> None:
    """Each role signs in over TLS with its certificate (the server requires and verifies
    them); the writer writes; a client with the role's nkey but no certificate is refused at
    once with a ConfigurationError."""
    server, out = tls_server
    with anyio.fail_after(60):
        for role in ROLES:
            nc = await open_nats(_settings(server, out, role, tmp_path))
            try:
                assert nc.is_connected and nc._server_info.get("tls_verify") is True
            finally:
                await nc.close()
        writer = _settings(server, out, "writer", tmp_path)
        async with connect(settings=writer, projector=False) as client:
            run = await client.create_run("Secure")
            assert run.pathspec == "Secure/1"
        bare = _settings(server, out, "writer", tmp_path, tls=False)
        with pytest.raises(ConfigurationError, match="asks for a client certificate"):
            async with connect(settings=bare, projector=False):
                pass


async def test_the_feeder_reads_off_its_own_socket_over_tls_with_its_nkey(
    tls_server: tuple[NatsServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica's feeder signs in to its socket as the projector (its certificate, and its
    nkey signing the server's nonce) instead of falling back to nats-py."""
    server, out = tls_server
    async with connect(settings=_settings(server, out, "writer", tmp_path), projector=False) as c:
        run = await c.create_run("Secure")
        async with run.running():
            pass
        last = run.receipt.sequence if run.receipt is not None else 0
    projector = _settings(server, out, "projector", tmp_path)
    received = await drained_off_the_wire(projector, monkeypatch)
    assert len(received) >= 3 and last in received
    assert received == list(range(1, len(received) + 1))


def test_keep_existing_keeps_the_first_credentials(tmp_path: Path) -> None:
    """--keep-existing writes the directory the first time and leaves it alone after."""
    out = tmp_path / "auth"
    runner = CliRunner()
    first = runner.invoke(cli, ["auth", "init", "--out", str(out), "--keep-existing"])
    assert first.exit_code == 0, first.output
    seed = (out / "writer.nk").read_text()
    again = runner.invoke(cli, ["auth", "init", "--out", str(out), "--keep-existing"])
    assert again.exit_code == 0 and "kept" in again.output
    assert (out / "writer.nk").read_text() == seed
    fresh = runner.invoke(cli, ["auth", "init", "--out", str(out)])
    assert fresh.exit_code == 0 and (out / "writer.nk").read_text() != seed
