"""The client's queries are the query protocol's models, checked before anything is sent."""

from __future__ import annotations

import orjson
import pytest

from runstate.client import BadFilter, Client
from runstate.engine import MemoryEventLog, Settings
from runstate.projections._protocol import RunsRequest

pytestmark = pytest.mark.anyio


class _Recording:
    """A query transport that records what it is asked and answers an empty page."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []

    async def request(self, endpoint: str, payload: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
        self.sent.append((endpoint, orjson.loads(payload)))
        return b'{"result":{"items":[],"next_cursor":null}}'


@pytest.fixture
def transport() -> _Recording:
    return _Recording()


@pytest.fixture
def client(transport: _Recording) -> Client:
    return Client(MemoryEventLog(Settings()), transport, namespace=None)


@pytest.mark.parametrize(
    "options",
    [{"page_size": 0}, {"page_size": 5000}, {"sort": "-colour"}, {"state": ["sleeping"]}],
)
async def test_a_bad_list_query_raises_bad_filter_before_anything_is_sent(
    client: Client, transport: _Recording, options: dict[str, object]
) -> None:
    """A page size, sort key or state the protocol refuses is BadFilter, and nothing is sent."""
    with pytest.raises(BadFilter):
        await client.runs("Train", **options)  # type: ignore[arg-type]
    assert transport.sent == []


async def test_a_list_query_is_sent_as_the_protocol_model_with_wait_beside_after(
    client: Client, transport: _Recording
) -> None:
    """The payload validates as the endpoint's model; ``after`` brings the client's wait."""
    client.read_wait = 2.5
    await client.runs("Train", tags=["production"], page_size=10, after=42)
    ((endpoint, body),) = transport.sent
    assert endpoint == "runs"
    sent = RunsRequest.model_validate(body)
    assert (sent.flow, sent.tags_all, sent.limit, sent.after, sent.wait) == (
        "Train",
        ["production"],
        10,
        42,
        2.5,
    )
