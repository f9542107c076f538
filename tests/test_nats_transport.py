"""The socket under runstate's NATS connections (``engine._nats_transport``), plain and over
TLS with client certificates, against a real nats-server: messages of every size (across TLS's
16 KiB records) and bursts of many small ones arrive whole and in order, requests are answered,
and a connection whose server restarts reconnects through it; on asyncio's loop and on
uvloop's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import nats.errors
import pytest
from _pki import make_pki

from runstate.engine import Settings
from runstate.engine._connection import open_nats
from runstate.engine._nats_transport import MemoryTlsTransport
from runstate.engine._server import NatsServer

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """asyncio's own loop, and uvloop's (what ``runstate web`` runs on)."""
    return "asyncio", {"use_uvloop": request.param == "uvloop"}


#: sizes around TLS's largest record (16 KiB) and nats-py's read buffer (32 KiB)
SIZES = [0, 1, 7, 300, 16383, 16384, 16385, 32768, 70000, 1 << 20]


@pytest.fixture(params=["plain", "tls"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[NatsServer, Settings]]:
    """A nats-server, plain or requiring TLS with a client certificate; settings to reach it."""
    extra: dict[str, Path] = {}
    config = None
    if request.param == "tls":
        pki = make_pki(tmp_path / "pki")
        config = tmp_path / "server.conf"
        config.write_text(
            f'jetstream {{ store_dir: "{tmp_path / "nats"}" }}\n'
            f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", '
            f'ca_file: "{pki.ca}", verify: true }}\n'
        )
        extra = {"tls_ca": pki.ca, "tls_cert": pki.client_cert, "tls_key": pki.client_key}
    process = NatsServer(tmp_path / "nats", config_file=config)
    process.start()
    try:
        yield process, Settings(nats_url=process.url, retry_budget=30, **extra)  # type: ignore[arg-type]
    finally:
        process.stop()


def _payload(index: int, size: int) -> bytes:
    stamp = f"{index}:".encode()
    return (stamp * (size // len(stamp) + 1))[:size]


async def test_every_size_and_a_burst_arrive_whole_and_in_order(
    server: tuple[NatsServer, Settings],
) -> None:
    """Messages of each size, then 5,000 small ones published at once, reach a subscriber
    byte for byte and in order; requests of each size are answered with their payload."""
    _, settings = server
    sender = await open_nats(settings)
    receiver = await open_nats(settings)
    try:
        assert isinstance(sender._transport, MemoryTlsTransport)
        assert sender._server_info.get("tls_required", False) is (settings.tls_cert is not None)
        expected = [_payload(i, size) for i, size in enumerate(SIZES)]
        expected += [_payload(i, 60) for i in range(len(SIZES), len(SIZES) + 5000)]
        subscription = await receiver.subscribe("burst", max_msgs=len(expected))

        async def echo(msg: object) -> None:
            await msg.respond(msg.data)  # type: ignore[attr-defined]

        await receiver.subscribe("echo", cb=echo)
        await receiver.flush()
        for data in expected:
            await sender.publish("burst", data)
        await sender.flush()
        got = []
        with anyio.fail_after(30):
            async for msg in subscription.messages:
                got.append(msg.data)
        assert len(got) == len(expected)
        assert got == expected
        with anyio.fail_after(30):
            for i, size in enumerate(SIZES):
                reply = await sender.request("echo", _payload(i, size), timeout=10)
                assert reply.data == _payload(i, size)
    finally:
        await sender.close()
        await receiver.close()
    assert sender.is_closed and receiver.is_closed


async def test_a_connection_reconnects_through_it_when_its_server_restarts(
    server: tuple[NatsServer, Settings],
) -> None:
    """The server stops and starts again on its port: the connection comes back (a new TLS
    handshake over the same transport object) and requests are answered again."""
    process, settings = server
    nc = await open_nats(settings)
    transport = nc._transport

    async def echo(msg: object) -> None:
        await msg.respond(msg.data)  # type: ignore[attr-defined]

    try:
        await nc.subscribe("echo", cb=echo)
        assert (await nc.request("echo", b"before", timeout=10)).data == b"before"
        await anyio.to_thread.run_sync(process.restart)
        with anyio.fail_after(30):
            while True:
                try:
                    reply = await nc.request("echo", b"after", timeout=1)
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    # reconnecting, or the subscription not yet sent again
                    await anyio.sleep(0.1)
                    continue
                break
        assert reply.data == b"after"
        assert nc._transport is transport and nc.stats["reconnects"] >= 1
    finally:
        await nc.close()
