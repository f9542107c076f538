"""The feeder's own reading of a push consumer, against a real nats-server."""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

import anyio
import nats
import nkeys  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from runstate.engine._credentials import connect_fields
from runstate.engine._server import NatsServer
from runstate.engine._wire import Endpoint, WireConsumer, WireError, new_inbox
from runstate.engine.errors import ConfigurationError

pytestmark = pytest.mark.anyio  # for the async tests; the others ignore it

_STREAM = "WIRE"


async def _read_back(
    url: str, endpoint: Endpoint, count: int, size: int
) -> list[tuple[int, str, bytes]]:
    """Publish ``count`` messages of ``size`` bytes (with headers, as runstate's are stored) and
    read them back through a ``WireConsumer``; also how many flow-control requests it answered."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=_STREAM, subjects=["w.>"]))
        for n in range(1, count + 1):
            await js.publish(
                f"w.{n % 7}.r", n.to_bytes(4, "big") * (size // 4), headers={"Nats-Msg-Id": f"m{n}"}
            )
        inbox = new_inbox()
        received: list[tuple[int, str, bytes]] = []
        with WireConsumer(endpoint, inbox, quiet_limit=10) as wire:
            await anyio.to_thread.run_sync(wire.open)
            await js.add_consumer(
                _STREAM,
                ConsumerConfig(
                    deliver_subject=inbox,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=1,
                    ack_policy=AckPolicy.NONE,
                    flow_control=True,
                    idle_heartbeat=1.0,
                ),
            )

            def drain() -> None:
                for delivery in wire.deliveries():
                    received.append(delivery)
                    if len(received) == count:
                        return

            await anyio.to_thread.run_sync(drain)
        return received, wire.flow_controls
    finally:
        await nc.close()


async def test_every_delivery_comes_off_the_wire_in_order(nats_server: NatsServer) -> None:
    """Thousands of deliveries (past several flow-control requests, which are answered) come
    back with their stream sequences, subjects and data."""
    count, size = 3000, 4096
    received, flow_controls = await _read_back(
        nats_server.url, Endpoint("127.0.0.1", nats_server.port), count, size
    )
    assert flow_controls > 0  # unanswered, the consumer would have stalled at the first
    assert [sequence for sequence, _, _ in received] == list(range(1, count + 1))
    for sequence, subject, data in received:
        assert subject == f"w.{sequence % 7}.r"
        assert data == sequence.to_bytes(4, "big") * (size // 4)


@pytest.fixture
def guarded_server(tmp_path: Path) -> NatsServer:
    server = NatsServer(tmp_path / "nats", extra_args=["--user", "feeder", "--pass", "s3cret"])
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


async def test_the_wire_signs_in_as_the_url_says(guarded_server: NatsServer) -> None:
    port = guarded_server.port
    url = f"nats://feeder:s3cret@127.0.0.1:{port}"
    nc = await nats.connect(url)
    endpoint = Endpoint.of(nc.connected_url)
    await nc.close()
    assert endpoint == Endpoint("127.0.0.1", port, "feeder", "s3cret")
    received, _ = await _read_back(url, endpoint, 50, 64)
    assert [sequence for sequence, _, _ in received] == list(range(1, 51))


def test_a_refused_sign_in_or_a_closed_port_is_a_wire_error(guarded_server: NatsServer) -> None:
    wrong = WireConsumer(Endpoint("127.0.0.1", guarded_server.port, "feeder", "nope"), new_inbox())
    with pytest.raises(WireError, match="refused"), wrong:
        wrong.open()
    nobody = WireConsumer(Endpoint("127.0.0.1", 1), new_inbox())
    with pytest.raises(WireError, match="cannot connect"), nobody:
        nobody.open()


_CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------
"""


@given(nonce=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40))
def test_the_wire_signs_the_servers_nonce_as_nats_py_does(nonce: str) -> None:
    """An nkey file signs in with its public key, a .creds file with its JWT; both sign the
    nonce with the seed (ed25519: the very signature nats-py sends); a password file sends its
    user and password."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    key = nkeys.from_seed(bytearray(seed))
    signature = base64.b64encode(key.sign(nonce.encode())).decode()
    with tempfile.TemporaryDirectory() as scratch:
        nk, creds, password = (Path(scratch) / name for name in ("r.nk", "r.creds", "r.pass"))
        nk.write_bytes(seed + b"\n")
        creds.write_text(_CREDS.format(jwt="eyJ0eXAiOiJKV1QifQ.e30.c2ln", seed=seed.decode()))
        password.write_text("user: reader\npassword: s3cret\n")
        assert connect_fields(nk, nonce) == {"nkey": key.public_key.decode(), "sig": signature}
        assert connect_fields(creds, nonce) == {
            "jwt": "eyJ0eXAiOiJKV1QifQ.e30.c2ln",
            "sig": signature,
        }
        assert connect_fields(password, nonce) == {"user": "reader", "pass": "s3cret"}
        with pytest.raises(ConfigurationError, match="no signature"):
            connect_fields(nk, None)
