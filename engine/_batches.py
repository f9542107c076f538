"""Side streams: streams of batches beside the events, each with its own retention.

Metric points (``<PREFIX>_METRICS``, ``runstate.engine._points``) and task
log lines (``<PREFIX>_LOGS``, ``runstate.engine._lines``) are high-volume
data that must never slow state reads, so each has a stream of its own. Both
are kept the same way: a message is one batch of one entity, appended with a
commit id (its ``Nats-Msg-Id``) so that a batch sent again after a lost ack
is stored once, read back in a bounded read and followed live. One
implementation per log seam serves both (``JetStreamBatchLog``,
``MemoryBatchLog``), given a ``SideStream``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BatchReceipt", "SideStream"]


@dataclass(frozen=True, slots=True)
class SideStream:
    """A side stream: its JetStream name, the subjects it holds, and what it carries."""

    #: the stream's name (``RS_METRICS``)
    name: str
    #: the subjects of every message in it (``rs.mt.>``)
    subjects: str
    #: what its batches hold, for messages (``points``, ``log lines``)
    what: str


@dataclass(frozen=True, slots=True)
class BatchReceipt:
    """Proof that a batch is stored: its sequence in its side stream.

    For metric points pass ``sequence`` as ``after=`` to a metric read to
    see the batch; for log lines it is a position to read or follow from.
    """

    sequence: int
    subject: str
    commit_id: str
    duplicate: bool = False
