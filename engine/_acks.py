"""JetStream's answers, parsed in one place: publish acks and delivery reply subjects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.js.api import RawStreamMsg

from runstate.engine._retry import transient_api_error

__all__ = ["Ack", "conflict_sequence", "delivery_sequence", "header", "parse_ack"]

# "wrong last sequence" without the sequence: a cluster's stream leader had another
# conditional write to the subject in flight, so it compared nothing (it clears the mark
# only after acknowledging that write)
_IN_FLIGHT_CODE = 10164
# "wrong last sequence: <seq>", and the same without the sequence
_CONFLICT_CODES = frozenset({10071, _IN_FLIGHT_CODE})


def header(msg: Msg | RawStreamMsg, name: str) -> str | None:
    """A message header's value; nats-py gives lists instead of strings when the
    optional ``fast_mail_parser`` is installed, so take the first."""
    if not msg.headers:
        return None
    value: Any = msg.headers.get(name)
    if isinstance(value, list):
        return str(value[0]) if value else None
    return value if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Ack:
    """JetStream's answer to a publish: the sequence stored, or its error object."""

    sequence: int
    duplicate: bool
    error: dict[str, Any] | None

    @property
    def conflict(self) -> bool:
        return self.error is not None and self.error.get("err_code") in _CONFLICT_CODES

    @property
    def in_flight(self) -> bool:
        """A conflict that decided nothing: another write to the subject was in flight."""
        return self.error is not None and self.error.get("err_code") == _IN_FLIGHT_CODE

    @property
    def transient(self) -> bool:
        return self.error is not None and transient_api_error(self.error)


def parse_ack(data: bytes) -> Ack:
    """Parse the JSON JetStream answers a publish with (``{"seq": ...}`` or ``{"error": ...}``)."""
    reply = orjson.loads(data)
    error = reply.get("error")
    if error is not None:
        return Ack(0, False, error)
    return Ack(int(reply["seq"]), bool(reply.get("duplicate", False)), None)


def conflict_sequence(error: dict[str, Any]) -> int:
    """The current version in a "wrong last sequence: 42" error, or -1 if it names none."""
    tail = str(error.get("description", "")).rsplit(":", 1)[-1].strip()
    return int(tail) if tail.isdigit() else -1


def delivery_sequence(reply: str) -> int:
    """The stream sequence in a JetStream delivery's reply subject (its ack subject).

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``,
    or the 12-token form with a domain and an account hash. ``ValueError`` for
    a subject of neither form.
    """
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    if len(tokens) >= 12:
        return int(tokens[-5])
    raise ValueError(f"a delivery without a JetStream reply subject: {reply[:80]!r}")
