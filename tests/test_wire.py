"""The feeder's own reading of a push consumer, against a real nats-server."""

from __future__ import annotations

from pathlib import Path

import anyio
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from runstate.engine._server import NatsServer
from runstate.engine._wire import Endpoint, WireConsumer, WireError, new_inbox

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
