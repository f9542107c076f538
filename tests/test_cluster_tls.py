"""TLS with client certificates on a real 3-node cluster (issue 17): every client and every
route between the nodes is TLS with ``verify: true``; a client with a certificate of the
cluster's CA writes, reads and watches; one without a certificate, without the CA, or with a
certificate of another CA is refused at once with a ConfigurationError saying what to give
(not, after the retry budget, an Unavailable)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from _pki import Pki, make_pki

from runstate.client import connect
from runstate.engine import Settings
from runstate.engine._cluster import NatsCluster
from runstate.engine._connection import provision_server
from runstate.engine.errors import ConfigurationError

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

#: what a node's tls blocks say (client port and routes alike)
TLS_BLOCK = """
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  verify: true
  timeout: 2
}}
"""


class TlsCluster(NatsCluster):
    """``NatsCluster`` with TLS on its client port and its routes, certificates verified
    both ways (the nodes' own certificate serves routes at either end)."""

    def __init__(self, base_dir: Path, pki: Pki) -> None:
        super().__init__(base_dir)
        self.pki = pki

    def _configure(self) -> None:
        super()._configure()
        block = TLS_BLOCK.format(cert=self.pki.server_cert, key=self.pki.server_key, ca=self.pki.ca)
        routes_block = block.replace("\n", "\n  ")
        for node in self.nodes:
            assert node.config_file is not None
            text = node.config_file.read_text()
            assert text.count("cluster {\n") == 1
            text = text.replace("cluster {\n", "cluster {" + routes_block + "\n", 1)
            node.config_file.write_text(text + block)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_cluster(tmp_path: Path, pki: Pki) -> Iterator[TlsCluster]:
    """A started 3-node cluster on loopback with TLS everywhere."""
    cluster = TlsCluster(tmp_path / "cluster", pki)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _settings(cluster: NatsCluster, tmp_path: Path, **tls: Path) -> Settings:
    # a retry budget far past the test's timeout: a refusal that is retried fails the test
    return Settings(
        nats_url=cluster.url,
        replicas=3,
        data_dir=tmp_path / "client",
        retry_budget=600,
        **tls,
    )


async def test_a_client_certificate_writes_reads_and_watches(
    tls_cluster: TlsCluster, pki: Pki, tmp_path: Path
) -> None:
    """With the CA and a client certificate, an admin provisions the replicated streams
    and a client writes a run and its task, reads them back through a replica over TLS, and a watch
    sees a change made after it began."""
    config = tls_cluster.nodes[0].config_file
    assert config is not None and "verify: true" in config.read_text()
    settings = _settings(
        tls_cluster, tmp_path, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key
    )
    with anyio.fail_after(90):
        await provision_server(settings)  # the admin's step (no roles on this cluster)
        async with connect(settings=settings, projector=True, namespace=None) as client:
            run = await client.create_run("Secure", tags=["tls"])
            await run.start()
            task = await run.create_task("train", start=True)
            await task.save(accuracy=0.97)
            read = await client.task(task.pathspec, after=task.receipt)
            assert read.state == "running" and read.data.accuracy == 0.97
            async with client.watch(run.pathspec) as changes:
                first = await anext(changes)
                assert first.run is not None and first.run.state == "running"
                receipt = await task.complete()
                async for change in changes:
                    if change.sequence >= receipt.sequence:
                        break
                assert change.event is not None and change.event.type == "task.state_changed"
            listed = await client.runs("Secure", after=receipt)
            assert [r.pathspec for r in listed.items] == [run.pathspec]


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"tls_ca": "ca"}, "asks for a client certificate: give tls_cert and tls_key"),
        ({}, "give the CA that signed it as tls_ca"),
        (
            {"tls_ca": "ca", "tls_cert": "stranger_cert", "tls_key": "stranger_key"},
            "does not trust the client certificate's CA",
        ),
    ],
    ids=["no-certificate", "no-tls-settings", "certificate-of-another-ca"],
)
async def test_a_client_without_a_good_certificate_is_refused_at_once(
    tls_cluster: TlsCluster, pki: Pki, tmp_path: Path, given: dict[str, str], says: str
) -> None:
    """A client without a certificate (or without the CA, or with another CA's certificate)
    gets a ConfigurationError naming what to give, from the first connect, instead of
    retrying for its retry budget (600 s here, far past the test's timeout)."""
    tls = {name: getattr(pki, attribute) for name, attribute in given.items()}
    settings = _settings(tls_cluster, tmp_path, **tls)
    with pytest.raises(ConfigurationError, match="TLS with NATS at") as refused:
        async with connect(settings=settings, projector=False):
            pass
    assert says in refused.value.message
